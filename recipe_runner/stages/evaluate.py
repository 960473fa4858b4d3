"""evaluate: measure the parent's output without changing it, and hand it on.

A model is measured by the engine's standard evaluation (accuracy, params, MACs, size, latency); a file
(an export or quantize stage's .onnx) by the family's metric of the file itself, run by ONNX Runtime.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config_base import StageConfig
from ._base import STAGES, StageContext, StageOutput, StageType, file_metrics


class EvaluateConfig(StageConfig):
    type: Literal["evaluate"] = "evaluate"
    batch: int = Field(16, ge=1)
    imgsz: int = Field(64, ge=16, le=4096)
    workers: int = Field(0, ge=0, le=64)


def run_evaluate(ctx: StageContext, config: EvaluateConfig) -> StageOutput:
    if ctx.parent_file is None:
        return StageOutput(model=ctx.parent_model)  # the engine's standard evaluation is the result
    measured = {f"file_{k}": v for k, v in ctx.family.evaluate_file(ctx.parent_file, ctx.data, config).items()}
    return StageOutput(file=ctx.parent_file, metrics=file_metrics(ctx, measured, "file_"))


STAGES.register("evaluate")(
    StageType(
        EvaluateConfig,
        run_evaluate,
        gives="parent",
        takes=frozenset({"model", "file"}),
        description="evaluate the parent model or model file",
    )
)
