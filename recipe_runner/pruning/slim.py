"""Network slimming's pruning step (Liu et al. 2017): channels ranked by their BatchNorm scale |gamma| across all
layers at once (the paper's single global threshold), removed through torch-pruning's dependency graph so coupled
layers shrink together. Best after a sparse-train stage with penalty: bn-l1; on a normally trained model it works
too but is weaker (gammas are not pushed to zero, so the ranking separates less)."""
from __future__ import annotations

from typing import Callable, Literal, Sequence

from pydantic import Field

from . import _graph
from ..config_base import ConfigProblem
from ._base import METHODS, PruneConfigBase, PruningMethod, StepPlan


class SlimConfig(PruneConfigBase):
    """Remove the channels with the smallest BatchNorm gammas in the whole model, at most `max_layer_ratio` of
    any one layer."""

    method: Literal["slim"] = "slim"
    max_layer_ratio: float = Field(
        0.9, gt=0, lt=1,
        description="no layer loses more than this fraction of its channels in one step (so none is emptied)",
    )


def select_channels(scores: Sequence, ratio: float, max_layer_ratio: float) -> list[list[int]]:
    """Per layer, the channels to remove: the globally smallest scores until `ratio` of all channels are taken,
    skipping a layer once it has given up `max_layer_ratio` of its channels (and always keeping one).

    torch-pruning 1.6's global threshold has no such cap within a step: a layer whose channels all fall below the
    threshold is then refused whole by its over-pruning check and keeps every channel instead."""
    import torch

    widths = [len(s) for s in scores]
    caps = [min(int(max_layer_ratio * w), w - 1) for w in widths]
    total = sum(widths)
    wanted = total - int(total * (1 - ratio))
    flat = torch.cat([torch.as_tensor(s, dtype=torch.float64).flatten() for s in scores]) if scores else torch.zeros(0)
    layer_of = [i for i, w in enumerate(widths) for _ in range(w)]
    start = [sum(widths[:i]) for i in range(len(widths))]
    chosen: list[list[int]] = [[] for _ in widths]
    taken = 0
    # a stable sort: equal scores go in layer order, so the selection is deterministic
    for flat_index in torch.argsort(flat, stable=True).tolist():
        if taken >= wanted:
            break
        layer = layer_of[flat_index]
        if len(chosen[layer]) < caps[layer]:
            chosen[layer].append(flat_index - start[layer])
            taken += 1
    return [sorted(c) for c in chosen]


def _grouped_conv(group) -> bool:
    """A group holding a grouped (not depthwise) convolution: its channels must go in equal blocks per group,
    which a per-channel selection does not respect, so slim leaves it alone."""
    import torch.nn as nn

    return any(isinstance(dep.target.module, nn.modules.conv._ConvNd) and dep.target.module.groups not in
               (1, dep.target.module.in_channels) for dep, _ in group)


def prune_step(model, family, data, config: SlimConfig, plan: StepPlan):
    import torch
    import torch_pruning as tp

    model = _graph.prepare(model, family)
    graph, ignored = _graph.dependency_graph(model, family, config)
    # raw |gamma| (no per-layer normalisation): one threshold compares layers, as in the paper
    importance = tp.importance.BNScaleImportance(normalizer=None)
    groups, scores = [], []
    with torch.no_grad():
        for group in graph.get_all_groups(ignored_layers=ignored):
            if _grouped_conv(group):
                continue
            score = importance(group)
            if score is not None:  # None: no BatchNorm in this group
                groups.append(group)
                scores.append(score.cpu())
    if not groups:
        raise ValueError("method: slim found no prunable channel followed by BatchNorm (are they all in `ignored:`?)")
    for group, idxs in zip(groups, select_channels(scores, plan.step_ratio, config.max_layer_ratio)):
        if not idxs:
            continue
        root = group[0].dep
        pruning = graph.get_pruning_group(root.target.module, root.handler, idxs)
        if graph.check_pruning_group(pruning):
            pruning.prune()
    model.zero_grad(set_to_none=True)
    return model


def check_model(config: SlimConfig, skeleton: Callable[[], object]) -> None:
    """Slimming ranks BatchNorm scales: a model without BatchNorm has nothing to rank."""
    if not _graph.has_batchnorm(skeleton()):
        raise ConfigProblem("method", "method: slim needs BatchNorm layers (it ranks channels by their BatchNorm "
                            "scale) and this model has none; use method: depgraph")


METHODS.register("slim")(PruningMethod(SlimConfig, prune_step, structured=True, check=check_model,
                                       description="network slimming: global BatchNorm-scale channel pruning"))
