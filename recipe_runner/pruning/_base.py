"""The contract for a pruning method: a config and a function that prunes one step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Optional

from pydantic import Field, model_validator

from ..registry import Registry
from ..config_base import TrainingStageConfig


class PruneConfigBase(TrainingStageConfig):
    """Keys every pruning method has: the target, the iterative schedule and the accuracy guard."""

    type: Literal["prune"] = "prune"
    method: str
    ratio: float = Field(0.5, gt=0, lt=1, description="fraction removed in total: channels (structured) or weights (unstructured)")
    steps: int = Field(1, ge=1, le=100, description="reach `ratio` in this many prune steps")
    finetune_epochs: int = Field(0, ge=0, le=10_000, description="fine-tuning epochs after each step")
    lr: float = Field(0.001, gt=0, le=10, description="learning rate of the fine-tuning between steps")
    max_map_drop: Optional[float] = Field(
        None, ge=0, le=1,
        description="stop when the primary metric (mAP50-95 for detection, top-1 for classification) "
        "falls more than this (absolute) below its value before pruning; the last model within the bound is kept",
    )
    ignored: list[str] = Field(default_factory=list, description="module names never pruned, besides the family's output head")

    # the fine-tuning between prune steps never stops early (a class constant, so not a recipe key)
    patience: ClassVar[int] = 0

    @model_validator(mode="after")
    def _distill_needs_finetuning(self) -> "PruneConfigBase":
        # distillation acts in the fine-tuning between steps: without it the teacher would teach nothing
        if self.distill is not None and not self.finetune_epochs:
            raise ValueError("distill: acts in the fine-tuning between prune steps; set finetune_epochs >= 1")
        return self


@dataclass(frozen=True)
class StepPlan:
    """What one step must do. `step_ratio` compounds on the current width; `cumulative` is the total after it."""

    step: int
    steps: int
    step_ratio: float
    cumulative: float


def plan_steps(ratio: float, steps: int) -> list[StepPlan]:
    """Per-step ratio 1-(1-ratio)^(1/steps), so N fresh steps on the shrinking model land on `ratio`."""
    keep_per_step = (1.0 - ratio) ** (1.0 / steps)
    return [StepPlan(k, steps, 1.0 - keep_per_step, 1.0 - keep_per_step**k) for k in range(1, steps + 1)]


# (config, skeleton) -> None, raises ConfigProblem; `skeleton()` builds the recipe's architecture (cheaply, once)
ModelCheck = Callable[[Any, Callable[[], Any]], None]


@dataclass(frozen=True)
class PruningMethod:
    config: type[PruneConfigBase]
    prune_step: Callable[[Any, Any, Any, Any, StepPlan], Any]  # (model, family, data, config, plan) -> model
    structured: bool
    description: str = ""
    check: Optional[ModelCheck] = None  # run by the planner: refuse a model the method cannot prune


METHODS: Registry[PruningMethod] = Registry("pruning method")
