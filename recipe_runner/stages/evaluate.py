"""evaluate: measure the parent model (accuracy metric, params, MACs, size, latency) without changing it."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ._base import STAGES, StageContext, StageOutput, StageType
from ..config_base import StageConfig


class EvaluateConfig(StageConfig):
    type: Literal["evaluate"] = "evaluate"
    batch: int = Field(16, ge=1)
    imgsz: int = Field(64, ge=16, le=4096)
    workers: int = Field(0, ge=0, le=64)


def run_evaluate(ctx: StageContext, config: EvaluateConfig) -> StageOutput:
    return StageOutput(model=ctx.parent_model)  # the engine's standard evaluation is the result


STAGES.register("evaluate")(StageType(EvaluateConfig, run_evaluate, description="evaluate the parent model"))
