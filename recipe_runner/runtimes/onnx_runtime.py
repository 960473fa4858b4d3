"""ONNX Runtime, one way for every family: sessions, agreement with PyTorch, latency.

Export, quantize and benchmark stages all need the same three things, measured the same
way, so the numbers in MLflow are comparable across stages and families:
- a CPU session with a recorded, fixed thread count (latency depends on it);
- the largest |ONNX - PyTorch| difference and the output scale it is judged against;
- latency as median and p90 over many batch-1 runs after a warm-up (a mean hides outliers).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def session(path: Path, threads: int = 1):
    """A CPU InferenceSession with `threads` intra-op threads (0 = ONNX Runtime's default: all cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess, images: np.ndarray) -> np.ndarray:
    """The first output of the session for one input batch."""
    return sess.run(None, {sess.get_inputs()[0].name: images})[0]


@dataclass
class Agreement:
    max_abs_diff: float = 0.0
    output_scale: float = 0.0  # max |PyTorch output|: the scale a relative tolerance is taken of
    compared: int = 0  # images compared

    def add(self, ours: np.ndarray, theirs: np.ndarray) -> None:
        if ours.shape != theirs.shape:
            raise RuntimeError(f"ONNX output shape {theirs.shape} != PyTorch output shape {ours.shape}")
        self.max_abs_diff = max(self.max_abs_diff, float(np.abs(ours - theirs).max()))
        self.output_scale = max(self.output_scale, float(np.abs(ours).max()))
        self.compared += len(ours)


def compare(sess, reference: Callable[[np.ndarray], np.ndarray], batches: Iterable[np.ndarray]) -> Agreement:
    """Run every batch through the session and through `reference` (the PyTorch model) and compare."""
    agreement = Agreement()
    for images in batches:
        agreement.add(reference(images), run(sess, images))
    if agreement.compared == 0:
        raise ValueError("the ONNX check compared no images: the validation split is empty")
    return agreement


@dataclass
class Latency:
    median_ms: float
    p90_ms: float
    runs: int
    threads: int


def latency(sess, example: np.ndarray, runs: int = 50, warmup: int = 5, threads: int = 1) -> Latency:
    """Median and p90 wall time of `runs` calls on `example` after `warmup` calls (`threads`: what the session
    was built with, recorded next to the figure)."""
    for _ in range(warmup):
        run(sess, example)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(sess, example)
        times.append((time.perf_counter() - start) * 1000)
    ordered = sorted(times)
    return Latency(ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], runs, threads)


def all_cores() -> int:
    """The thread count recorded as "all cores" (what ONNX Runtime's default of 0 would use here)."""
    import os

    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


@dataclass
class Throughput:
    images_per_s: float
    batch: int
    threads: int


def throughput(sess, example: np.ndarray, runs: int = 10, warmup: int = 2, threads: int = 1) -> Throughput:
    """Images per second at the batch of `example` (median batch time, so one slow call does not skew it)."""
    timed = latency(sess, example, runs=runs, warmup=warmup, threads=threads)
    return Throughput(len(example) * 1000.0 / timed.median_ms, len(example), threads)


def input_shape(path: Path) -> list:
    """The first input's shape: ints for fixed axes, names (str) for dynamic ones."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def measure(
    path: Path, imgsz: int, threads: list[int], runs: int = 50, warmup: int = 10, batch: int = 0, prefix: str = ""
) -> dict[str, float]:
    """Batch-1 latency (median, p90) per thread count, and throughput at `batch` (0: none), as metric names
    `{prefix}latency_ms_t{threads}`, `{prefix}latency_p90_ms_t{threads}`, `{prefix}throughput_t{threads}_b{batch}`."""
    rng = np.random.default_rng(0)
    single = rng.random((1, 3, imgsz, imgsz), dtype=np.float32)
    out: dict[str, float] = {}
    for count in threads:
        sess = session(path, threads=count)
        timed = latency(sess, single, runs=runs, warmup=warmup, threads=count)
        out[f"{prefix}latency_ms_t{count}"] = timed.median_ms
        out[f"{prefix}latency_p90_ms_t{count}"] = timed.p90_ms
        if batch > 0:
            images = rng.random((batch, 3, imgsz, imgsz), dtype=np.float32)
            out[f"{prefix}throughput_t{count}_b{batch}"] = throughput(sess, images, threads=count).images_per_s
    return out
