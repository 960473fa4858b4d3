"""Network slimming's pruning step (Liu et al. 2017): channels ranked by their BatchNorm scale |gamma| across all
layers at once (the paper's single global threshold), removed through torch-pruning's dependency graph so coupled
layers shrink together. Best after a sparse-train stage with penalty: bn-l1; on a normally trained model it works
too but is weaker (gammas are not pushed to zero, so the ranking separates less)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import Field

from ..config_base import ConfigProblem
from . import _graph
from ._base import METHODS, PruneConfigBase, PruningMethod, StepPlan
from ._global import prune_globally


class SlimConfig(PruneConfigBase):
    """Remove the channels with the smallest BatchNorm gammas in the whole model, at most `max_layer_ratio` of
    any one layer."""

    method: Literal["slim"] = "slim"
    max_layer_ratio: float = Field(
        0.9,
        gt=0,
        lt=1,
        description="no layer loses more than this fraction of its channels in one step (so none is emptied)",
    )


def prune_step(model, family, data, config: SlimConfig, plan: StepPlan):
    import torch_pruning as tp

    model = _graph.prepare(model, family)
    graph, ignored = _graph.dependency_graph(model, family, config)
    # raw |gamma| (no per-layer normalisation): one threshold compares layers, as in the paper
    importance = tp.importance.BNScaleImportance(normalizer=None)
    if not prune_globally(graph, ignored, importance, plan.step_ratio, config.max_layer_ratio):
        raise ValueError("method: slim found no prunable channel followed by BatchNorm (are they all in `ignored:`?)")
    model.zero_grad(set_to_none=True)
    return model


def check_model(config: SlimConfig, skeleton: Callable[[], object]) -> None:
    """Slimming ranks BatchNorm scales: a model without BatchNorm has nothing to rank."""
    if not _graph.has_batchnorm(skeleton()):
        raise ConfigProblem(
            "method",
            "method: slim needs BatchNorm layers (it ranks channels by their BatchNorm "
            "scale) and this model has none; use method: depgraph",
        )


METHODS.register("slim")(
    PruningMethod(
        SlimConfig,
        prune_step,
        structured=True,
        check=check_model,
        description="network slimming: global BatchNorm-scale channel pruning",
    )
)
