"""Structured channel pruning with torch-pruning's dependency graph (DepGraph)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from ._base import METHODS, PruneConfigBase, PruningMethod, StepPlan

Importance = Literal["group-l2", "l1", "l2", "lamp", "taylor", "random"]


class DepgraphConfig(PruneConfigBase):
    """Remove whole channels; every layer coupled to a removed channel shrinks with it."""

    method: Literal["depgraph"] = "depgraph"
    importance: Importance = Field("group-l2", description="how channels are scored")
    global_pruning: bool = Field(False, description="rank channels across layers instead of the same ratio per layer")
    round_to: Optional[int] = Field(None, ge=1, le=256, description="keep channel counts multiples of this")
    taylor_batches: int = Field(4, ge=1, le=1000, description="batches of gradients for importance: taylor")


def make_importance(name: str):
    import torch_pruning as tp

    factories = {
        "group-l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1, group_reduction="first"),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2, group_reduction="first"),
        "lamp": lambda: tp.importance.LAMPImportance(p=2),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
        "random": lambda: tp.importance.RandomImportance(),
    }
    return factories[name]()


def prune_step(model, family, data, config: DepgraphConfig, plan: StepPlan):
    import torch
    import torch_pruning as tp

    model = family.prepare_for_pruning(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    example = family.example_inputs(model, config.imgsz)
    ignored = list(family.output_layers(model))
    named = dict(model.named_modules())
    for name in config.ignored:
        if name not in named:
            from ..registry import did_you_mean

            raise ValueError(f"ignored layer '{name}' is not a module of the model{did_you_mean(name, named)}")
        ignored.append(named[name])
    try:
        pruner = tp.pruner.BasePruner(
            model,
            example,
            importance=make_importance(config.importance),
            pruning_ratio=plan.step_ratio,
            ignored_layers=ignored,
            round_to=config.round_to,
            global_pruning=config.global_pruning,
        )
    except Exception as exc:  # torch-pruning's tracer meets an op it cannot follow
        raise RuntimeError(
            f"torch-pruning could not build the dependency graph of this model ({type(exc).__name__}: {exc}). "
            "Layers that reshape channels (channel shuffle, attention heads) can be kept whole by listing them in "
            "`ignored:`, or use method: l1-unstructured"
        ) from exc
    if config.importance == "taylor":
        model.zero_grad()
        # the loss needs train mode, which moves BatchNorm running stats: scoring must not change the model
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        family.accumulate_gradients(model, data, config, config.taylor_batches)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
    with torch.enable_grad():
        pruner.step()
    model.zero_grad(set_to_none=True)
    return model


METHODS.register("depgraph")(PruningMethod(DepgraphConfig, prune_step, structured=True, description="DepGraph channel pruning"))
