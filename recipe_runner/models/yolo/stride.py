"""The input sizes a YOLO takes: a multiple of its stride (shared by the family and its exporter)."""

from __future__ import annotations

import math


def round_to_stride(imgsz: int, stride: int = 32) -> int:
    """`imgsz` rounded up to a multiple of `stride` (at least one stride): what Ultralytics' exporter would pick."""
    return max(stride, int(math.ceil(imgsz / stride) * stride))
