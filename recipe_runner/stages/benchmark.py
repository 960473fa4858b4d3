"""benchmark: latency and throughput of the parent's model file (or of an FP32 ONNX export of its model), and
with `against: <stage>` its speedup over that stage's model, timed in pairs.

Measured the same way everywhere (runtimes/onnx_runtime.py): batch 1, a fixed and recorded thread count
(1 and all cores), warm-up, median and p90 over `runs` calls, at the stage's imgsz and at bench_imgsz;
throughput at `batch`. ONNX Runtime runs .onnx files, OpenVINO the .openvino IR files of the openvino
quantization backend. The stage passes its parent's output through unchanged, so it can sit anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from ..config_base import ConfigProblem, StageConfig
from ._base import STAGES, StageContext, StageOutput, StageType


class BenchmarkConfig(StageConfig):
    type: Literal["benchmark"] = "benchmark"
    imgsz: int = Field(64, ge=16, le=4096, description="the recipe's input size")
    bench_imgsz: int | None = Field(
        None, ge=16, le=4096, description="second input size timed; default: the family's (YOLO 640, classifiers 224)"
    )
    batch: int = Field(8, ge=1, le=1024, description="batch of the throughput measurement")
    runs: int = Field(50, ge=50, le=100_000, description="timed batch-1 calls per setting (median and p90 of these)")
    warmup: int = Field(10, ge=1, le=10_000, description="untimed calls first")
    opset: int = Field(17, ge=11, le=23, description="ONNX opset of the FP32 export (for a model parent)")
    runtime: Literal["auto", "openvino"] = Field(
        "auto",
        description="auto: ONNX Runtime for .onnx, OpenVINO for .openvino files; openvino: OpenVINO for both "
        "(to time an FP32 .onnx where OpenVINO will run it)",
    )
    against: str | None = Field(
        None,
        description="a baseline stage: also time this file against its model (an FP32 ONNX export, in ONNX Runtime) "
        "or its file, in alternating pairs of short bursts at bench_imgsz on 1 thread, and log speedup_t1_<size>px "
        "(steady on a shared machine where two latencies timed apart are not)",
    )
    pairs: int = Field(20, ge=2, le=1000, description="pairs of bursts timed for the speedup over `against`")

    # pairs only matters with a baseline; a key only when set keeps every benchmark key made before it existed
    KEY_ONLY_WHEN_SET: ClassVar[frozenset[str]] = frozenset({"against", "pairs"})

    def identity(self) -> dict[str, Any]:
        dump = super().identity()
        # the baseline enters the key as its stage's own cache key (graph.py), not by its id
        dump.pop("against", None)
        return dump

    def inputs(self) -> dict[str, str]:
        return {"baseline": self.against} if self.against else {}

    def input_location(self, role: str) -> tuple[str, ...]:
        return ("against",)

    def input_takes(self, role: str) -> frozenset[str]:
        return frozenset({"model", "file"})


def check_runtime(config: BenchmarkConfig, skeleton: Callable[[], Any]) -> None:
    """OpenVINO is installed when the benchmark asks for it (checked by the planner before anything runs)."""
    if config.runtime != "openvino":
        return
    from ..quantization import missing_backend

    problem = missing_backend("openvino")
    if problem:
        raise ConfigProblem("runtime", problem)


def run_benchmark(ctx: StageContext, config: BenchmarkConfig) -> StageOutput:
    from ..runtimes import dynamic_batch, onnx_runtime, runtime_for

    family = ctx.family
    threads = sorted({1, onnx_runtime.all_cores()})
    sizes = sorted({family.file_imgsz(config.imgsz), family.file_imgsz(config.bench_imgsz or family.bench_imgsz)})
    metrics: dict[str, float] = {"threads_all": float(threads[-1])}
    files = {imgsz: _file_at(ctx, config, imgsz) for imgsz in sizes}
    for imgsz, path in files.items():
        if path is None:
            continue
        batch = config.batch if dynamic_batch(path) else 0
        runtime = runtime_for(path, config.runtime)
        measured = runtime.measure(path, imgsz, threads, runs=config.runs, warmup=config.warmup, batch=batch)
        # MLflow metric names take no '@': latency_ms_t1_640px
        metrics.update({f"{k}_{imgsz}px": v for k, v in measured.items()})
        metrics["openvino_runtime"] = float(runtime.__name__.endswith("openvino_runtime"))
        metrics[f"file_size_mb_{imgsz}px"] = path.stat().st_size / 1e6
        if batch == 0:
            ctx.warn(f"the file's batch axis is fixed: no throughput at batch {config.batch}")
    bench_size = family.file_imgsz(config.bench_imgsz or family.bench_imgsz)
    if config.against and files[bench_size] is not None:
        metrics.update(_speedup(ctx, config, files[bench_size], bench_size))
    metrics.update({k: v for k, v in ctx.parent_metrics.items() if k in (*family.accuracy_metrics, "macs", "params")})
    if ctx.parent_file is not None:
        return StageOutput(file=ctx.parent_file, metrics=metrics)
    return StageOutput(model=ctx.parent_model, metrics=metrics, evaluate_output=False)


def _speedup(ctx: StageContext, config: BenchmarkConfig, mine: Path, imgsz: int) -> dict[str, float]:
    """This stage's file against the baseline stage's, in alternating pairs at imgsz on 1 thread (runtimes/paired).
    A baseline model is exported to FP32 ONNX and run by ONNX Runtime: what "FP32" means everywhere here."""
    from ..runtimes import accepts_size, runtime_for
    from ..runtimes.paired import caller, paired_speedup

    if ctx.input_gives("baseline") == "file":
        baseline = ctx.input_file("baseline")
        if not accepts_size(baseline, imgsz):
            shape = runtime_for(baseline).input_shape(baseline)
            ctx.warn(f"against: the baseline's file takes input {shape}, not {imgsz} px: no speedup measured")
            return {}
    else:
        model = ctx.input_model("baseline")
        baseline = ctx.family.write_onnx(model, ctx.workdir / f"baseline_{imgsz}.onnx", imgsz, config.opset)
    timed = paired_speedup(caller(baseline, imgsz), caller(mine, imgsz, config.runtime), config.pairs)
    suffix = f"t1_{imgsz}px"
    return {
        f"speedup_{suffix}": timed["speedup"],
        f"speedup_q1_{suffix}": timed["q1"],
        f"speedup_q3_{suffix}": timed["q3"],
        f"baseline_latency_ms_{suffix}": timed["baseline_ms"],
    }


def _file_at(ctx: StageContext, config: BenchmarkConfig, imgsz: int) -> Path | None:
    """The parent's file if it takes imgsz, else None (with a warning); for a model parent, an FP32 export."""
    from ..runtimes import accepts_size, runtime_for

    if ctx.parent_file is None:
        return ctx.family.write_onnx(ctx.parent_model, ctx.workdir / f"fp32_{imgsz}.onnx", imgsz, config.opset)
    if accepts_size(ctx.parent_file, imgsz):
        return ctx.parent_file
    shape = runtime_for(ctx.parent_file).input_shape(ctx.parent_file)
    ctx.warn(
        f"{ctx.parent_file.name} takes input {shape}, not {imgsz} px: "
        f"not timed at {imgsz} (benchmark the model stage before it to time any size)"
    )
    return None


STAGES.register("benchmark")(
    StageType(
        BenchmarkConfig,
        run_benchmark,
        gives="parent",
        check=check_runtime,
        takes=frozenset({"model", "file"}),
        description="time the parent's ONNX file (or an FP32 export of its model)",
    )
)
