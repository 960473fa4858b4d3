"""OpenVINO, for files the openvino quantization backend writes: an IR (model.xml + model.bin) packed in
one tar file (`*.openvino`), so the engine records and verifies it like any other single output file.

Mirrors onnx_runtime: a compiled model with a fixed thread count, run, and latency measured the same way
(batch 1, warm-up, median and p90). The archive also holds Ultralytics' metadata.yaml when the source
ONNX file had metadata, so Ultralytics' validator runs the unpacked folder itself.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

import numpy as np

SUFFIX = ".openvino"
MEMBERS = ("model.xml", "model.bin", "metadata.yaml")


def is_openvino(path: Path) -> bool:
    return Path(path).suffix == SUFFIX


def pack(folder: Path, target: Path) -> Path:
    """Pack folder/model.xml, model.bin (and metadata.yaml if there) into one file, with no timestamps."""
    with tarfile.open(target, "w") as tar:
        for name in MEMBERS:
            if (folder / name).is_file():
                info = tar.gettarinfo(str(folder / name), arcname=name)
                info.mtime = 0
                info.uid = 0
                info.gid = 0
                info.uname = ""
                info.gname = ""
                with (folder / name).open("rb") as f:
                    tar.addfile(info, f)
    return target


def unpack(path: Path, folder: Path) -> Path:
    """Unpack into `folder` (named *_openvino_model for Ultralytics) and return the model.xml path."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            if member.name not in MEMBERS or not member.isfile():  # only our three plain files, never a path
                raise ValueError(f"{path}: unexpected archive member '{member.name}'")
            with tar.extractfile(member) as src, (folder / member.name).open("wb") as dst:
                dst.write(src.read())
    return folder / "model.xml"


def read(path: Path):
    """OpenVINO's model of a packed IR, or of an .onnx file (OpenVINO reads ONNX itself: FP32 baselines)."""
    import openvino as ov

    if not is_openvino(path):
        return ov.Core().read_model(str(path))
    with tempfile.TemporaryDirectory(prefix="ov-") as work:
        return ov.Core().read_model(str(unpack(path, Path(work) / "m")))


def session(path: Path, threads: int = 1):
    """The file compiled for the CPU with `threads` inference threads, one stream, latency hint."""
    import openvino as ov

    # f32: on a CPU with AVX-512 BF16/AMX OpenVINO silently runs float layers in bfloat16 (YOLOv8n at 640 px,
    # 1 thread, here: 39 ms "FP32" that way, 103 ms in f32); FP32 must mean FP32, as in ONNX Runtime
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }
    return ov.Core().compile_model(read(path), "CPU", config)


def run(model, images: np.ndarray) -> np.ndarray:
    return model.create_infer_request().infer({0: images})[0]


def input_shape(path: Path) -> list:
    """Like onnx_runtime.input_shape: ints for fixed axes, '?' for dynamic ones."""
    shape = read(path).inputs[0].get_partial_shape()
    return [d.get_length() if d.is_static else "?" for d in shape]


def measure(
    path: Path, imgsz: int, threads: list[int], runs: int = 50, warmup: int = 10, batch: int = 0, prefix: str = ""
) -> dict[str, float]:
    """Same measurement and metric names as onnx_runtime.measure, with OpenVINO running the file."""
    import time

    rng = np.random.default_rng(0)
    single = rng.random((1, 3, imgsz, imgsz), dtype=np.float32)
    out: dict[str, float] = {}
    for count in threads:
        model = session(path, count)
        request = model.create_infer_request()
        times = []
        for i in range(warmup + runs):
            start = time.perf_counter()
            request.infer({0: single})
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
        ordered = sorted(times)
        out[f"{prefix}latency_ms_t{count}"] = ordered[len(ordered) // 2]
        out[f"{prefix}latency_p90_ms_t{count}"] = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        if batch > 0:
            images = rng.random((batch, 3, imgsz, imgsz), dtype=np.float32)
            request.infer({0: images})
            start = time.perf_counter()
            for _ in range(5):
                request.infer({0: images})
            out[f"{prefix}throughput_t{count}_b{batch}"] = 5 * batch / (time.perf_counter() - start)
    return out
