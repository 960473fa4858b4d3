"""Global channel ranking with a per-layer cap, on torch-pruning's dependency graph.

torch-pruning 1.6's own global threshold has no cap within a step: a layer whose channels all fall below the
threshold is refused whole by its over-pruning check and keeps every channel, and `max_pruning_ratio` only
compares a layer with its width when the pruner was made (the prune stage makes a fresh one per step). So
the ranking is done here and torch-pruning only removes the chosen channels (and everything coupled to them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._graph import rounded_prune_count


def select_channels(
    scores: Sequence, ratio: float, max_layer_ratio: float, round_to: int | None = None
) -> list[list[int]]:
    """Per layer, the channels to remove: the globally smallest scores until `ratio` of all channels are taken,
    skipping a layer once it has given up `max_layer_ratio` of its channels (and always keeping one). With
    `round_to`, each layer then keeps a multiple of it (rounded as _graph.rounded_prune_count rounds)."""
    import torch

    widths = [len(s) for s in scores]
    caps = [min(int(max_layer_ratio * w), w - 1) for w in widths]
    total = sum(widths)
    wanted = total - int(total * (1 - ratio))
    if not scores:
        return []
    flat = torch.cat([torch.as_tensor(s, dtype=torch.float64).flatten() for s in scores])
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
    if round_to is not None and round_to > 1:
        chosen = [
            _rounded(score, len(picked), cap, round_to) for score, picked, cap in zip(scores, chosen, caps, strict=True)
        ]
    return [sorted(c) for c in chosen]


def _rounded(score: Any, count: int, cap: int, round_to: int) -> list[int]:
    """The layer's lowest-scoring channels, `count` of them rounded so a multiple of `round_to` stays: the
    rule torch-pruning's own ranking follows here (kept count rounded down, at least one multiple), or rounded
    up where that would take more than the layer's cap. The ranking took the layer's lowest scores in order,
    so taking more or fewer of them extends or shortens its own choice."""
    import torch

    width = len(score)
    removed = rounded_prune_count(count, width, round_to)
    if removed > cap:
        kept_up = min(width, -(-(width - count) // round_to) * round_to)
        removed = width - kept_up
    order = torch.argsort(torch.as_tensor(score, dtype=torch.float64).flatten(), stable=True).tolist()
    return order[:removed]


def _grouped_conv(group) -> bool:
    """A group holding a grouped (not depthwise) convolution: its channels must go in equal blocks per group,
    which a per-channel selection does not respect, so they are left alone."""
    import torch.nn as nn

    return any(
        isinstance(dep.target.module, nn.modules.conv._ConvNd)
        and dep.target.module.groups not in (1, dep.target.module.in_channels)
        for dep, _ in group
    )


def prune_globally(
    graph: Any, ignored: list, importance: Any, ratio: float, max_layer_ratio: float, round_to: int | None = None
) -> int:
    """Score every group of `graph` with `importance`, remove the globally lowest `ratio` of their channels (at
    most `max_layer_ratio` of any one group; each keeping a multiple of `round_to`), and return how many groups
    were scored (None scores are skipped: e.g. bn-scale on a group without BatchNorm)."""
    import torch

    groups, scores = [], []
    with torch.no_grad():
        for group in graph.get_all_groups(ignored_layers=ignored):
            if _grouped_conv(group):
                continue
            score = importance(group)
            if score is not None:
                groups.append(group)
                scores.append(score.detach().cpu())
    for group, idxs in zip(groups, select_channels(scores, ratio, max_layer_ratio, round_to)):
        if not idxs:
            continue
        root = group[0].dep
        pruning = graph.get_pruning_group(root.target.module, root.handler, idxs)
        if graph.check_pruning_group(pruning):
            pruning.prune()
    return len(groups)
