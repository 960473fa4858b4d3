"""The contract for a pruning method: a config and a function that prunes one step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from ..config_base import TrainingStageConfig
from ..registry import Registry


class PruneConfigBase(TrainingStageConfig):
    """Keys every pruning method has: the target, the iterative schedule and the accuracy guard."""

    # added after prune stages were recorded: unset, they stay out of the cache key
    KEY_ONLY_WHEN_SET: ClassVar[frozenset[str]] = frozenset({"target_macs", "target_params", "prune_head"})

    type: Literal["prune"] = "prune"
    method: str
    ratio: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="fraction removed in total: channels (structured) or weights "
        "(unstructured); not with target_macs or target_params",
    )
    target_macs: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="instead of ratio: keep at most this fraction of the parent's MACs (the "
        "runner finds the channel ratio that reaches it; channel-removing methods)",
    )
    target_params: float | None = Field(
        None, gt=0, lt=1, description="instead of ratio: keep at most this fraction of the parent's parameters"
    )
    steps: int = Field(1, ge=1, le=100, description="reach `ratio` in this many prune steps")
    finetune_epochs: int = Field(0, ge=0, le=10_000, description="fine-tuning epochs after each step")
    lr: float = Field(0.001, gt=0, le=10, description="learning rate of the fine-tuning between steps")
    max_map_drop: float | None = Field(
        None,
        ge=0,
        le=1,
        description="stop when the primary metric (mAP50-95 for detection, top-1 for classification) "
        "falls more than this (absolute) below its value before pruning; the last model within the bound is kept",
    )
    ignored: list[str] = Field(
        default_factory=list, description="module names never pruned, besides the family's output head"
    )
    prune_head: bool = Field(
        False,
        description="also prune the output head's inner layers (YOLO: the Detect branches' 3x3 convolutions, "
        "about a third of YOLOv8n's MACs); only the layers that give the outputs keep their width",
    )

    # the fine-tuning between prune steps never stops early (a class constant, so not a recipe key)
    patience: ClassVar[int] = 0

    @model_validator(mode="after")
    def _one_target(self) -> PruneConfigBase:
        values = {"ratio": self.ratio, "target_macs": self.target_macs, "target_params": self.target_params}
        given = [k for k, v in values.items() if k in self.model_fields_set and v is not None]
        if len(given) > 1:
            raise ValueError(f"give one of ratio, target_macs and target_params (got {' and '.join(given)})")
        if given and given[0] != "ratio" and self.method in METHODS and not _takes_targets(METHODS.get(self.method)):
            shrinking = ", ".join(name for name, entry in METHODS.items() if _takes_targets(entry))
            raise ValueError(
                f"{given[0]} needs a method that removes channels ({shrinking}): method {self.method} "
                "only zeroes weights, which leaves MACs and parameters as they are; use ratio"
            )
        return self

    @model_validator(mode="after")
    def _head_needs_structure(self) -> PruneConfigBase:
        # an unstructured method zeroes weights in every layer, the head's included: the key would change nothing
        if self.prune_head and self.method in METHODS and not METHODS.get(self.method).structured:
            raise ValueError(
                f"prune_head: method {self.method} already zeroes the head's weights with the rest; "
                "prune_head is for methods that remove channels or decompose layers"
            )
        return self

    @model_validator(mode="after")
    def _distill_needs_finetuning(self) -> PruneConfigBase:
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
    """A registered method. `structured`: its step shrinks the architecture and a larger `plan.step_ratio` never
    leaves more MACs or parameters; such a method also prunes to target_macs/target_params (pruning/targets.py
    searches step_ratio on copies with this same prune_step). A method whose own knob is not a channel ratio
    (a rank fraction, say) maps step_ratio onto it and gets targets for free."""

    config: type[PruneConfigBase]
    prune_step: Callable[[Any, Any, Any, Any, StepPlan], Any]  # (model, family, data, config, plan) -> model
    structured: bool
    description: str = ""
    check: ModelCheck | None = None  # run by the planner: refuse a model the method cannot prune
    # model -> rows: a per-layer table the prune stage logs after each step (e.g. low-rank's ranks); None: none
    layer_table: Callable[[Any], list[dict[str, Any]]] | None = None
    # whether target_macs/target_params apply (pruning/targets.py varies plan.step_ratio as a channel ratio)
    cost_targets: bool = True


def _takes_targets(method: PruningMethod) -> bool:
    return method.structured and method.cost_targets


METHODS: Registry[PruningMethod] = Registry("pruning method")
