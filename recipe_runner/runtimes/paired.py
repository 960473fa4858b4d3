"""A speedup timed in pairs: a model file against a baseline file, in alternating short bursts.

Why pairs: on a shared machine a neighbour's load moves one file's latency by up to 50% within minutes, so the
ratio of two latencies measured minutes apart (or of each one's fastest of several passes) carries that noise. Two
bursts a fraction of a second apart see the same machine; the median of many such pair ratios is steady where
either latency alone is not (on this project's 2-core VM: quartiles within about 10% of the median).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import openvino_runtime, runtime_for

#: calls per burst: enough for a median, short enough (a fraction of a second) that both bursts see one machine
BURST_CALLS = 5


def caller(path: Path, imgsz: int, runtime: str = "auto", threads: int = 1) -> Callable[[], object]:
    """One batch-1 call of the file at imgsz (OpenVINO: one infer request, reused, as a server would use it)."""
    image = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    module = runtime_for(path, runtime)
    session = module.session(path, threads)
    if module is openvino_runtime:
        request = session.create_infer_request()
        return lambda: request.infer({0: image})
    return lambda: module.run(session, image)


def _median_ms(call: Callable[[], object], calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def paired_speedup(
    baseline: Callable[[], object], model: Callable[[], object], pairs: int = 20, warmup: int = 3
) -> dict[str, float]:
    """baseline latency / model latency, per pair of bursts (AB, then BA, so neither always goes first): the
    median ratio, the pairs' quartiles, and each side's median latency over all its bursts."""
    for _ in range(warmup):
        baseline()
        model()
    ratios, base_times, model_times = [], [], []
    for pair in range(pairs):
        if pair % 2 == 0:
            base_ms = _median_ms(baseline, BURST_CALLS)
            model_ms = _median_ms(model, BURST_CALLS)
        else:
            model_ms = _median_ms(model, BURST_CALLS)
            base_ms = _median_ms(baseline, BURST_CALLS)
        ratios.append(base_ms / model_ms)
        base_times.append(base_ms)
        model_times.append(model_ms)
    quartiles = statistics.quantiles(ratios, n=4, method="inclusive") if pairs > 1 else [ratios[0]] * 3
    return {
        "speedup": statistics.median(ratios),
        "q1": quartiles[0],
        "q3": quartiles[2],
        "baseline_ms": statistics.median(base_times),
        "model_ms": statistics.median(model_times),
    }
