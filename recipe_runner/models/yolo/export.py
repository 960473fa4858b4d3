"""ONNX export of a YOLO module through Ultralytics' exporter, then two checks of the exported file.

1. Raw outputs: ONNX Runtime and the PyTorch module we trained (not the exporter's fused
   copy, so BatchNorm folding is checked too) on real validation images.
2. Accuracy: Ultralytics' validator runs the .onnx file itself (mAP of what ships).
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .environment import resolved_data_yaml, strip_integration_callbacks, ultralytics_ready
from .stride import round_to_stride


def export_onnx_file(
    model: nn.Module, path: Path, imgsz: int, opset: int, dynamic: bool, simplify: bool, batch: int
) -> Path:
    """Write `model` as ONNX to `path` with Ultralytics' exporter (its metadata lets the validator run the file)."""
    ultralytics_ready()
    from ultralytics.engine.exporter import Exporter

    work = Path(tempfile.mkdtemp(prefix="yolo-export-", dir=path.parent))
    try:
        target = copy.deepcopy(model).float().eval()
        target.pt_path = str(work / "model.pt")  # the exporter names its output after this; nothing is read from it
        target.args = {"data": ""}  # the exporter reads args["data"] for calibration only (not used for fp32 ONNX)
        target.task = "detect"  # set by Ultralytics' Model wrapper, which we do not use
        exporter = Exporter(
            overrides={
                "format": "onnx",
                "imgsz": imgsz,
                "opset": opset,
                "dynamic": dynamic,
                "simplify": simplify,
                "batch": batch,
                "device": "cpu",
                "half": False,
                "int8": False,
                "nms": False,
                "verbose": False,
            }
        )
        strip_integration_callbacks(exporter)
        written = Path(exporter(model=target))
        shutil.move(str(written), str(path))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def validation_images(data: Any, imgsz: int, count: int) -> np.ndarray:
    """The first `count` validation images, letterboxed to imgsz, as float32 NCHW RGB in [0, 1]."""
    files = split_files(data, "val")[:count]
    if not files:
        raise ValueError("no validation images found to check the ONNX export against PyTorch")
    return letterboxed(files, imgsz)


def sample_images(data: Any, imgsz: int, count: int, seed: int = 0, split: str = "train") -> np.ndarray:
    """A seeded sample of `count` images of a split (all of them if fewer), preprocessed like validation_images."""
    files = split_files(data, split)
    if not files:
        raise ValueError(f"no {split} images found to calibrate INT8 quantization on")
    order = np.random.default_rng(seed).permutation(len(files))[:count]
    return letterboxed([files[i] for i in sorted(order)], imgsz)


def split_files(data: Any, split: str) -> list[Path]:
    """The image files of a split of the dataset, as Ultralytics lists them (folders or txt lists)."""
    ultralytics_ready()
    from ultralytics.data.utils import IMG_FORMATS, check_det_dataset

    from ...data import listed_images

    info = check_det_dataset(resolved_data_yaml(data))
    entries = info[split] if isinstance(info[split], list) else [info[split]]
    files: list[Path] = []
    for entry in entries:
        p = Path(entry)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower().lstrip(".") in IMG_FORMATS)
        elif p.suffix == ".txt":  # Ultralytics' rule, as training reads the list: './x' beside it, else as written
            files += [Path(image) for _, image in listed_images(p)]
    return files


def letterboxed(files: list[Path], imgsz: int) -> np.ndarray:
    """Images letterboxed to imgsz x imgsz as the exported model takes them: float32 NCHW RGB in [0, 1]."""
    import cv2
    from ultralytics.data.augment import LetterBox

    letterbox = LetterBox(new_shape=(imgsz, imgsz), auto=False)
    images = [letterbox(image=cv2.imread(str(f)))[..., ::-1].transpose(2, 0, 1) / 255.0 for f in files]
    return np.ascontiguousarray(np.stack(images), dtype=np.float32)


def export_and_check(family: Any, model: nn.Module, data: Any, config: Any, path: Path) -> dict[str, float]:
    from ...runtimes import onnx_runtime

    imgsz = round_to_stride(config.imgsz)
    batch = config.batch if config.dynamic else 1
    export_onnx_file(model, path, imgsz, config.opset, config.dynamic, config.simplify, batch)

    sess = onnx_runtime.session(path, threads=1)
    reference = copy.deepcopy(model).float().eval()
    checks = validation_images(data, imgsz, 4)
    rows = [checks[i : i + 1] for i in range(len(checks))]
    if config.dynamic and len(checks) > 1:
        rows.append(checks)  # one batched run too, to exercise the dynamic batch axis
    agreement = onnx_runtime.compare(sess, lambda images: _torch_output(reference, images), rows)
    latency = onnx_runtime.latency(sess, checks[:1])
    accuracy = family._validate(str(path), data, config.model_copy(update={"imgsz": imgsz}), batch=batch)
    return {
        "onnx_max_abs_diff": agreement.max_abs_diff,
        "onnx_output_scale": agreement.output_scale,
        **{f"onnx_{name}": value for name, value in accuracy.items()},
        "onnx_size_mb": path.stat().st_size / 1e6,
        "onnx_latency_ms": latency.median_ms,
        "onnx_latency_p90_ms": latency.p90_ms,
    }


def _torch_output(model: nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(images))
    return (out[0] if isinstance(out, (list, tuple)) else out).numpy()
