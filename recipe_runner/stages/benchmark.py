"""benchmark: latency and throughput of the parent's model file (or of an FP32 ONNX export of its model), and
with `against: <stage>` its speedup over that stage's model, timed in pairs; with `cpu_isa`, all of it timed in a
child process as on a CPU with at most that instruction set (runtimes/timing.py).

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
    cpu_isa: Literal["native", "avx512_core_amx", "avx512_core_vnni", "avx512_core", "avx2"] = Field(
        "native",
        description="time as on a CPU with at most this instruction set: the timings run in a child process with "
        "oneDNN capped (ONEDNN_MAX_CPU_ISA), which OpenVINO honours and ONNX Runtime ignores",
    )

    # keys added later: a key only when set keeps every benchmark key made before they existed
    KEY_ONLY_WHEN_SET: ClassVar[frozenset[str]] = frozenset({"against", "pairs", "cpu_isa"})

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
    from ..runtimes import dynamic_batch, onnx_runtime, openvino_runtime, runtime_for
    from ..runtimes.timing import TimingSpec, time_files, time_files_capped

    family = ctx.family
    threads = sorted({1, onnx_runtime.all_cores()})
    sizes = sorted({family.file_imgsz(config.imgsz), family.file_imgsz(config.bench_imgsz or family.bench_imgsz)})
    files = {imgsz: path for imgsz in sizes if (path := _file_at(ctx, config, imgsz)) is not None}
    if any(not dynamic_batch(path) for path in files.values()):
        ctx.warn(f"the file's batch axis is fixed: no throughput at batch {config.batch}")
    bench_size = family.file_imgsz(config.bench_imgsz or family.bench_imgsz)
    baseline = _baseline_file(ctx, config, bench_size) if config.against and bench_size in files else None
    spec = TimingSpec(
        files={imgsz: str(path) for imgsz, path in files.items()},
        runtime=config.runtime,
        threads=threads,
        runs=config.runs,
        warmup=config.warmup,
        batch=config.batch,
        baseline=str(baseline) if baseline is not None else None,
        speedup_imgsz=bench_size,
        pairs=config.pairs,
    )
    if config.cpu_isa == "native":
        measured = time_files(spec)
    else:
        if files and runtime_for(next(iter(files.values())), config.runtime) is not openvino_runtime:
            ctx.warn(f"cpu_isa {config.cpu_isa}: ONNX Runtime ignores the cap, so this file is timed as on this CPU")
        measured = time_files_capped(spec, config.cpu_isa)
    metrics: dict[str, float] = {"threads_all": float(threads[-1]), **measured}
    metrics.update({k: v for k, v in ctx.parent_metrics.items() if k in (*family.accuracy_metrics, "macs", "params")})
    if ctx.parent_file is not None:
        return StageOutput(file=ctx.parent_file, metrics=metrics)
    return StageOutput(model=ctx.parent_model, metrics=metrics, evaluate_output=False)


def _baseline_file(ctx: StageContext, config: BenchmarkConfig, imgsz: int) -> Path | None:
    """The `against` stage's file, or an FP32 ONNX export of its model (run by ONNX Runtime: what "FP32" means
    everywhere here); None, with a warning, for a file that does not take imgsz."""
    from ..runtimes import accepts_size, runtime_for

    if ctx.input_gives("baseline") == "model":
        model = ctx.input_model("baseline")
        return ctx.family.write_onnx(model, ctx.workdir / f"baseline_{imgsz}.onnx", imgsz, config.opset)
    baseline = ctx.input_file("baseline")
    if accepts_size(baseline, imgsz):
        return baseline
    shape = runtime_for(baseline).input_shape(baseline)
    ctx.warn(f"against: the baseline's file takes input {shape}, not {imgsz} px: no speedup measured")
    return None


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
