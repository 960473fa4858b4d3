"""What a backend is asked to do (plain data, so backends stay independent of stage configs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class QuantizeRequest:
    source: Path  # the FP32 ONNX file
    target: Path  # where the quantized file goes
    mode: str  # int8-static | int8-dynamic | fp16
    calibration: np.ndarray | None = None  # N x 3 x H x W float32 (int8-static)
    calibrate_method: str = "minmax"  # minmax | entropy | percentile
    per_channel: bool = True
    op_types: tuple[str, ...] | None = None  # None: every op type the backend quantizes
    keep_float: list[str] = field(default_factory=list)  # node names left in float (the YOLO head's decode)
    ranges_cache: Path | None = None  # calibration ranges: read if the file exists, else written there
