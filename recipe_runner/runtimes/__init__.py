"""The runtimes that run exported model files, below the model families (which write the files): which one runs
a file, ONNX Runtime for .onnx (`onnx_runtime`), OpenVINO for the packed IR, .openvino (`openvino_runtime`).

Both modules offer the same calls (session, run, input_shape, measure), so evaluation and the
benchmark treat every file alike.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

__all__ = ["accepts_size", "dynamic_batch", "runtime_for"]


def runtime_for(path: Path, runtime: str = "auto") -> ModuleType:
    """auto: OpenVINO for .openvino files, ONNX Runtime for .onnx; openvino: OpenVINO for both."""
    from . import onnx_runtime, openvino_runtime

    return openvino_runtime if runtime == "openvino" or openvino_runtime.is_openvino(path) else onnx_runtime


def accepts_size(path: Path, imgsz: int, batch: int = 1) -> bool:
    """Whether the file's input takes a batch x 3 x imgsz x imgsz image (its fixed axes must match)."""
    shape = runtime_for(path).input_shape(path)
    wanted = [batch, 3, imgsz, imgsz]
    return len(shape) == 4 and all(not isinstance(d, int) or d in (0, -1, w) for d, w in zip(shape, wanted))


def dynamic_batch(path: Path) -> bool:
    return not isinstance(runtime_for(path).input_shape(path)[0], int)
