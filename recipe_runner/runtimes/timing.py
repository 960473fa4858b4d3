"""A benchmark's timings as plain data: which files at which sizes, timed here or in a child process whose oneDNN
is capped below this CPU's instruction set.

Why a child: oneDNN (inside OpenVINO's CPU plugin, and PyTorch) reads ONEDNN_MAX_CPU_ISA once, when it starts, so
a cap applies to a whole process. Timing under a cap shows what a file costs on a CPU without this one's newer
instructions: on an AMX Xeon, OpenVINO's INT8 convolutions run on AMX tiles, which pad a pruned layer's narrow
channels, and the same file is faster on AVX-512 VNNI kernels (bench/isa_floor.py measured 2.7x vs 3.3x over FP32).
ONNX Runtime has its own kernels and ignores the variable.

    python -m recipe_runner.runtimes.timing < spec.json     # the child: prints the metrics as one JSON line
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

#: the caps a benchmark may ask for (oneDNN's names), newest instruction set first
CPU_ISAS = ("avx512_core_amx", "avx512_core_vnni", "avx512_core", "avx2")


@dataclass
class TimingSpec:
    files: dict[int, str]  # input size -> the file timed at that size
    runtime: str  # "auto" or "openvino" (runtimes.runtime_for)
    threads: list[int]
    runs: int
    warmup: int
    batch: int  # throughput batch; a file with a fixed batch axis gets none
    baseline: str | None = None  # a file to time this one against, in pairs, at speedup_imgsz on 1 thread
    speedup_imgsz: int = 0
    pairs: int = 20


def time_files(spec: TimingSpec) -> dict[str, float]:
    """Latency (and throughput) of every file at its size, and the paired speedup over the baseline, as metrics."""
    from . import dynamic_batch, openvino_runtime, runtime_for
    from .paired import caller, paired_speedup

    metrics: dict[str, float] = {}
    for imgsz, name in spec.files.items():
        path = Path(name)
        batch = spec.batch if dynamic_batch(path) else 0
        runtime = runtime_for(path, spec.runtime)
        measured = runtime.measure(path, imgsz, spec.threads, runs=spec.runs, warmup=spec.warmup, batch=batch)
        # MLflow metric names take no '@': latency_ms_t1_640px
        metrics.update({f"{k}_{imgsz}px": v for k, v in measured.items()})
        metrics["openvino_runtime"] = float(runtime is openvino_runtime)
        metrics[f"file_size_mb_{imgsz}px"] = path.stat().st_size / 1e6
    if spec.baseline is not None:
        imgsz = spec.speedup_imgsz
        mine = caller(Path(spec.files[imgsz]), imgsz, spec.runtime)
        timed = paired_speedup(caller(Path(spec.baseline), imgsz), mine, spec.pairs)
        suffix = f"t1_{imgsz}px"
        metrics[f"speedup_{suffix}"] = timed["speedup"]
        metrics[f"speedup_q1_{suffix}"] = timed["q1"]
        metrics[f"speedup_q3_{suffix}"] = timed["q3"]
        metrics[f"baseline_latency_ms_{suffix}"] = timed["baseline_ms"]
    return metrics


def time_files_capped(spec: TimingSpec, cpu_isa: str) -> dict[str, float]:
    """time_files in a child process whose oneDNN uses at most `cpu_isa` (one of CPU_ISAS)."""
    if cpu_isa not in CPU_ISAS:
        raise ValueError(f"cpu_isa {cpu_isa!r} is not one of {', '.join(CPU_ISAS)}")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": cpu_isa.upper()}
    done = subprocess.run(
        [sys.executable, "-m", "recipe_runner.runtimes.timing"],
        input=json.dumps(asdict(spec)),
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"timing under cpu_isa {cpu_isa} failed: {tail[0][:300]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    # the child says what it ran under, so a cap that did not reach it is an error, not a silent native timing
    if answer.get("cpu_isa") != cpu_isa.upper():
        raise RuntimeError(f"the timing process ran under {answer.get('cpu_isa')!r}, not {cpu_isa.upper()}")
    return answer["metrics"]


def _child() -> None:
    raw = json.loads(sys.stdin.read())
    raw["files"] = {int(size): name for size, name in raw["files"].items()}
    metrics = time_files(TimingSpec(**raw))
    print(json.dumps({"cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"), "metrics": metrics}))


if __name__ == "__main__":
    _child()
