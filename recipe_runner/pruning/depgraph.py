"""Structured channel pruning with torch-pruning's dependency graph (DepGraph)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field

from ..config_base import ConfigProblem
from . import _graph
from ._base import METHODS, PruneConfigBase, PruningMethod, StepPlan
from ._global import prune_globally

Importance = Literal["group-l2", "l1", "l2", "lamp", "taylor", "hessian", "bn-scale", "random"]


class DepgraphConfig(PruneConfigBase):
    """Remove whole channels; every layer coupled to a removed channel shrinks with it."""

    # added after depgraph stages were recorded: at its default it stays out of the cache key
    KEY_ONLY_WHEN_SET: ClassVar[frozenset[str]] = PruneConfigBase.KEY_ONLY_WHEN_SET | {"max_layer_ratio"}

    method: Literal["depgraph"] = "depgraph"
    importance: Importance = Field("group-l2", description="how channels are scored")
    global_pruning: bool = Field(False, description="rank channels across layers instead of the same ratio per layer")
    round_to: int | None = Field(None, ge=1, le=256, description="keep channel counts multiples of this")
    taylor_batches: int = Field(4, ge=1, le=1000, description="batches of gradients for importance: taylor or hessian")
    max_layer_ratio: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="no layer loses more than this fraction of its channels in one step; default: no cap "
        "(torch-pruning's, which refuses only a step that would empty a layer)",
    )

    def identity(self) -> dict[str, Any]:
        dump = super().identity()
        # since pruning/_graph.rounded_prune_count, round_to > 1 keeps at least one multiple per layer: results
        # differ from stage runs recorded before, so their keys change (round_to unset or 1 keep theirs)
        if self.round_to is not None and self.round_to > 1:
            dump["round_to_rule"] = 2
        return dump


def make_importance(name: str):
    import torch_pruning as tp

    factories = {
        "group-l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1, group_reduction="first"),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2, group_reduction="first"),
        "lamp": lambda: tp.importance.LAMPImportance(p=2),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
        "hessian": lambda: tp.importance.GroupHessianImportance(),
        "bn-scale": lambda: tp.importance.BNScaleImportance(),
        "random": lambda: tp.importance.RandomImportance(),
    }
    return factories[name]()


def prune_step(model, family, data, config: DepgraphConfig, plan: StepPlan):
    model = _graph.prepare(model, family)
    importance = make_importance(config.importance)
    capped_global = config.global_pruning and config.max_layer_ratio is not None
    if capped_global:
        graph, ignored = _graph.dependency_graph(model, family, config)
    else:  # torch-pruning's own ranking; max_pruning_ratio caps each layer of a per-layer (local) ranking
        options = {} if config.max_layer_ratio is None else {"max_pruning_ratio": config.max_layer_ratio}
        pruner = _graph.build_pruner(
            model,
            family,
            config,
            importance,
            plan.step_ratio,
            round_to=config.round_to,
            global_pruning=config.global_pruning,
            **options,
        )
    if config.importance == "taylor":
        _graph.gather_gradients(model, family, data, config, config.taylor_batches)
    elif config.importance == "hessian":
        _graph.squared_gradients(model, family, data, config, config.taylor_batches)
    if capped_global:
        # torch-pruning 1.6's global threshold does not cap a layer within a step (see _global.py)
        prune_globally(graph, ignored, importance, plan.step_ratio, config.max_layer_ratio, config.round_to)
        model.zero_grad(set_to_none=True)
    else:
        _graph.step(pruner, model)
    return model


def check_model(config: DepgraphConfig, skeleton: Callable[[], object]) -> None:
    """bn-scale scores channels by their BatchNorm scale: without BatchNorm every score is missing."""
    if config.importance == "bn-scale" and not _graph.has_batchnorm(skeleton()):
        raise ConfigProblem(
            "importance",
            "importance: bn-scale needs BatchNorm layers and this model has none; use importance: group-l2",
        )


METHODS.register("depgraph")(
    PruningMethod(
        DepgraphConfig, prune_step, structured=True, check=check_model, description="DepGraph channel pruning"
    )
)
