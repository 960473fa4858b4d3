"""quantize: FP32 ONNX of the parent model -> INT8 (static or dynamic) or FP16 ONNX, measured, guarded.

The output is the quantized .onnx file. Its accuracy is measured with the family's own metric on the
validation split, next to the FP32 ONNX file's at the same imgsz (the honest reference: same input size,
same runtime), and the stage fails if the primary metric falls more than `max_metric_drop` below it.
Calibration images come from the TRAIN split; the calibration ranges are cached on disk by what they
depend on (the parent's cache key, imgsz, images, method), so re-running with another threshold or
after a failure skips calibration, and are logged with the run as calibration/ranges.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from ..config_base import ConfigProblem, StageConfig, TrainingKnobs
from ._base import STAGES, StageContext, StageOutput, StageType, distillation, file_metrics

# ops: weighted quantizes these only (Ultralytics' own rule for its ONNX INT8 export)
WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")


# what int8-qat trains with; other modes ignore them (they may come from `defaults:`) and keep them out of the key
QAT_KEYS = ("epochs", "lr", "optimizer", "momentum", "weight_decay", "args", "distill")


class QuantizeConfig(StageConfig, TrainingKnobs):
    type: Literal["quantize"] = "quantize"
    backend: Literal["onnxruntime", "openvino"] = Field(
        "onnxruntime", description="onnxruntime (built in) or openvino (NNCF; pip install 'recipe-runner[openvino]')"
    )
    mode: Literal["int8-static", "int8-dynamic", "fp16", "int8-qat"] = Field(
        "int8-static",
        description="int8-static: calibrated QDQ; int8-dynamic: MatMul/Gemm weights only; "
        "fp16: half-precision weights (a GPU target; on CPU for size only); int8-qat: "
        "fine-tune `epochs` with INT8 fake quantization, then calibrated QDQ like "
        "int8-static (the training keys lr, optimizer, batch, distill... apply)",
    )
    epochs: int | None = Field(None, ge=1, le=100_000, description="int8-qat: fine-tuning epochs (required)")
    lr: float = Field(0.001, gt=0, le=10, description="int8-qat: learning rate of the fine-tuning")
    calibration_images: int = Field(128, ge=1, le=100_000, description="images calibration runs on (int8-static)")
    calibration_split: Literal["train", "val"] = Field(
        "train", description="split the calibration images come from; train keeps validation images unseen"
    )
    calibrate_method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="how activation ranges are chosen from the calibration images (onnxruntime)"
    )
    per_channel: bool = Field(True, description="one weight scale per output channel (better accuracy, same speed)")
    max_metric_drop: float = Field(
        0.05, ge=0, le=1, description="fail if the primary metric falls more than this (absolute) below FP32's"
    )
    ops: Literal["all", "weighted"] = Field(
        "all",
        description="all: every op the backend can quantize, except what the family keeps float (the YOLO "
        "head's decode); weighted: convolutions and matmuls only (onnxruntime)",
    )
    imgsz: int = Field(64, ge=16, le=4096, description="input size of the exported, calibrated and evaluated model")
    batch: int = Field(16, ge=1, description="batch of the accuracy evaluation")
    opset: int = Field(17, ge=13, le=21, description="ONNX opset of the FP32 export (QDQ per channel needs 13+)")
    workers: int = Field(0, ge=0, le=64)
    # TEST ONLY, left out of the schema and the README's key table: quantize the model's head too (every op type,
    # nothing kept float) to force the accuracy collapse the guard must catch. A config key, not an environment
    # variable, so it enters the cache key when set and a forced run is never mistaken for a normal one.
    test_only_quantize_head: SkipJsonSchema[bool] = Field(False, description="TEST ONLY: quantize the head too")

    KEY_ONLY_WHEN_SET: ClassVar[frozenset[str]] = frozenset({"test_only_quantize_head"})
    # the fine-tuning of int8-qat never stops early (a class constant, so not a recipe key)
    patience: ClassVar[int] = 0

    def identity(self) -> dict[str, Any]:
        dump = super().identity()
        if self.mode != "int8-qat":  # the training keys do nothing here: every existing key stays as it was
            for key in QAT_KEYS:
                dump.pop(key, None)
        return dump

    def inputs(self) -> dict[str, str]:
        return TrainingKnobs.inputs(self) if self.mode == "int8-qat" else {}

    @model_validator(mode="after")
    def _qat_needs_epochs(self) -> QuantizeConfig:
        if self.mode == "int8-qat" and self.epochs is None:
            raise ValueError("mode int8-qat fine-tunes the model: set epochs (>= 1)")
        return self

    @field_validator("mode")
    @classmethod
    def _mode_of_backend(cls, mode: str, info: ValidationInfo) -> str:
        from ..quantization import BACKENDS

        backend = info.data.get("backend", "onnxruntime")
        modes = BACKENDS.get(backend).modes
        if mode not in modes:
            raise ValueError(f"backend {backend} does mode {', '.join(modes)} only (got '{mode}')")
        return mode

    @field_validator("ops")
    @classmethod
    def _ops_of_backend(cls, ops: str, info: ValidationInfo) -> str:
        if info.data.get("backend") == "openvino" and ops != "all":
            raise ValueError("backend openvino picks the ops itself (NNCF's hardware patterns): ops must be all")
        return ops

    @field_validator("calibrate_method")
    @classmethod
    def _method_of_backend(cls, method: str, info: ValidationInfo) -> str:
        if info.data.get("backend") == "openvino" and method != "minmax":
            raise ValueError(
                f"backend openvino chooses its own ranges: calibrate_method must be minmax (got '{method}')"
            )
        return method


def check_backend(config: QuantizeConfig, skeleton: Callable[[], Any]) -> None:
    """The backend's optional packages are installed (checked by the planner before anything runs)."""
    from ..quantization import missing_backend

    problem = missing_backend(config.backend)
    if problem:
        raise ConfigProblem("backend", problem)


def run_quantize(ctx: StageContext, config: QuantizeConfig) -> StageOutput:
    from ..quantization import BACKENDS, layer_precision

    family, primary = ctx.family, ctx.family.primary_metric
    fp32 = family.write_onnx(ctx.parent_model, ctx.workdir / "fp32.onnx", config.imgsz, config.opset)
    source, trained = fp32, None
    if config.mode == "int8-qat":
        trained = _quantization_aware_training(ctx, config)
        source = family.write_onnx(trained.model, ctx.workdir / "qat_fp32.onnx", config.imgsz, config.opset)
    request, metrics = _request(ctx, config, source)
    BACKENDS.get(config.backend).quantize(request)
    target = request.target
    if request.ranges_cache is not None and request.ranges_cache.is_file():
        _keep_ranges(ctx, request.ranges_cache)
    metrics.update(layer_precision(target))
    if config.mode == "int8-dynamic" and metrics["int8_layers"] == 0:
        ctx.warn(
            "int8-dynamic quantized nothing: it quantizes MatMul/Gemm weights only (ONNX Runtime has no fast CPU "
            "kernel for dynamically quantized convolutions) and this model has none; use int8-static"
        )

    # the reference is the FP32 file at the same imgsz in the same runtime, not the parent run's number
    reference = family.evaluate_file(fp32, ctx.data, config)
    quantized = family.evaluate_file(target, ctx.data, config)
    drop = reference[primary] - quantized[primary]
    metrics.update({f"q_{k}": v for k, v in quantized.items()})
    metrics.update({f"fp32_{k}": v for k, v in reference.items()})
    metrics["metric_drop"] = drop
    metrics["fp32_size_mb"] = fp32.stat().st_size / 1e6
    metrics.update(_latencies(family, fp32, target, config))
    metrics.update(file_metrics(ctx, metrics, "q_"))
    if drop > config.max_metric_drop:
        ctx.log_metrics({**metrics, "size_mb": target.stat().st_size / 1e6})  # the numbers stay in MLflow
        raise RuntimeError(
            f"{config.mode} {primary} {quantized[primary]:.4f} is {drop:.4f} below the FP32 model's "
            f"{reference[primary]:.4f} (max_metric_drop {config.max_metric_drop})"
        )
    if trained is None:
        return StageOutput(file=target, metrics=metrics)
    return StageOutput(
        file=target, metrics=metrics, epochs_trained=trained.epochs_trained, final_step=trained.last_epoch
    )


def _quantization_aware_training(ctx: StageContext, config: QuantizeConfig):
    """Fine-tune a copy of the parent with INT8 fake quantization (resumable: the fake-quant ranges travel in the
    epoch checkpoints); returns the family's TrainResult with the model snapped to the int8 weight grid."""
    import copy

    from ..quantization import qat

    keep = ctx.family.qat_float_layers
    hook = qat.FakeQuant(keep)
    result = ctx.family.train(
        copy.deepcopy(ctx.parent_model),
        ctx.data,
        config,
        int(config.epochs or 0),
        ctx,
        hooks=[hook],
        keep="last",
        distill=distillation(ctx, config),
    )
    result.model = qat.finish(result.model, keep)
    return result


def _request(ctx: StageContext, config: QuantizeConfig, fp32: Path):
    """What the backend is asked to do (what stays float, calibration images, ranges cache) and the first metrics."""
    from ..quantization import QuantizeRequest

    name = config.mode.replace("-static", "").replace("-dynamic", "_dynamic").replace("-qat", "_qat")
    target = ctx.workdir / f"model_{name}{output_suffix(config)}"
    # int8-qat: its fine-tuned model is quantized as int8-static is (calibrated QDQ, U8S8, per channel)
    mode = "int8-static" if config.mode == "int8-qat" else config.mode
    request = QuantizeRequest(fp32, target, mode, per_channel=config.per_channel)
    metrics: dict[str, float] = {}
    if config.test_only_quantize_head:
        ctx.warn("test_only_quantize_head: the model's head is quantized too (test only)")
    elif config.mode != "fp16":  # FP16 keeps the range (up to 65504) that one INT8 scale loses: nothing stays float
        import onnx

        request.keep_float = ctx.family.float_nodes(onnx.load(str(fp32), load_external_data=False))
        # with only convolutions quantized, every SiLU between them dequantizes and requantizes its activations:
        # YOLOv8n at 640 px ran 53 ms that way and 37 ms with every op but the head's decode (FP32: 64 ms)
        request.op_types = WEIGHTED_OPS if config.ops == "weighted" else None
    if mode == "int8-static":
        request.calibration = _calibration(ctx, config)
        request.calibrate_method = config.calibrate_method
        metrics["calibration_images"] = float(len(request.calibration))
        # the ranges cache is keyed by the parent's output; a QAT model is this stage's own
        if config.backend == "onnxruntime" and config.mode != "int8-qat":
            request.ranges_cache, metrics["calibration_reused"] = _ranges_cache(ctx, config, request)
    elif config.mode == "fp16":
        ctx.warn(
            "fp16 is a GPU target: ONNX Runtime runs FP16 no faster on a CPU (it casts around unsupported "
            "kernels); the file is half the size, its CPU latency is logged as measured"
        )
    return request, metrics


def _calibration(ctx: StageContext, config: QuantizeConfig):
    if config.calibration_split == "val":
        ctx.warn(
            "calibrating on the validation split: the quantized model's metric is then measured on images "
            "calibration has seen"
        )
    return ctx.family.calibration_batches(
        ctx.data, config.imgsz, config.calibration_images, seed=ctx.seed, split=config.calibration_split
    )


def _ranges_cache(ctx: StageContext, config: QuantizeConfig, request) -> tuple[Path, float]:
    """Where ONNX Runtime reads (if there) or writes the calibration ranges, and 1.0 if they were cached: keyed by
    what they depend on, so a re-run with another threshold or after a failure skips calibration."""
    identity = {
        "parent": ctx.parent_cache_key,
        "imgsz": config.imgsz,
        "opset": config.opset,
        "images": config.calibration_images,
        "split": config.calibration_split,
        "seed": ctx.seed,
        "method": config.calibrate_method,
        "ops": request.op_types,
        "float": sorted(request.keep_float),
        "head": config.test_only_quantize_head,
        "format": 1,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    local = ctx.workdir / "calibration" / "ranges.json"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.unlink(missing_ok=True)
    cached = _ranges_folder() / f"{key}.json"
    local.with_suffix(".key").write_text(key)
    if ctx.parent_cache_key and cached.is_file():
        shutil.copyfile(cached, local)
        return local, 1.0
    return local, 0.0


def _keep_ranges(ctx: StageContext, ranges: Path) -> None:
    """Log the ranges with the run and keep them in the local cache (written atomically: a torn file would be
    read back as ranges)."""
    ctx.log_artifact(ranges, "calibration")
    if not ctx.parent_cache_key:
        return
    folder = _ranges_folder()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{ranges.with_suffix('.key').read_text()}.json"
    if not target.exists():
        temporary = folder / f".{target.name}.{os.getpid()}"
        shutil.copyfile(ranges, temporary)
        os.replace(temporary, target)


def _ranges_folder() -> Path:
    from ..data import cache_root

    return cache_root() / "calibration"


def _latencies(family, fp32: Path, target: Path, config: QuantizeConfig) -> dict[str, float]:
    """Batch-1 latency of the quantized file (1 thread and all cores) and of its FP32 source (1 thread) at imgsz."""
    from ..runtimes import onnx_runtime, runtime_for

    imgsz = family.file_imgsz(config.imgsz)
    threads = sorted({1, onnx_runtime.all_cores()})
    runtime = runtime_for(target)
    out = runtime.measure(target, imgsz, threads)
    # the FP32 reference in the runtime that runs the quantized file (OpenVINO reads the ONNX file itself)
    out.update(runtime.measure(fp32, imgsz, [1], prefix="fp32_"))
    out["speedup_t1"] = out["fp32_latency_ms_t1"] / out["latency_ms_t1"]
    if target.suffix == ".onnx":
        # the export stage's name for this very measurement (ONNX Runtime, 1 thread, batch 1, median), so an
        # INT8 file lines up with the FP32 export in `recipe compare` and MLflow's charts
        out["onnx_latency_ms"] = out["latency_ms_t1"]
    return out


def output_suffix(config: QuantizeConfig) -> str:
    return ".openvino" if config.backend == "openvino" else ".onnx"  # OpenVINO's IR, packed in one file


STAGES.register("quantize")(
    StageType(
        QuantizeConfig,
        run_quantize,
        gives="file",
        check=check_backend,
        output_suffix=output_suffix,
        description="quantize the parent model (INT8 / FP16 ONNX), measured",
    )
)
