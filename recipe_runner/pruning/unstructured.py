"""Unstructured L1 pruning with torch.nn.utils.prune, made permanent (zeros stay in the weights)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ._base import METHODS, PruneConfigBase, PruningMethod, StepPlan


class L1UnstructuredConfig(PruneConfigBase):
    """Zero the smallest-magnitude weights of every conv and linear layer (not counting `ignored`)."""

    method: Literal["l1-unstructured"] = "l1-unstructured"
    scope: Literal["global", "layer"] = Field(
        "global", description="rank weights across all layers, or prune each layer by the same ratio"
    )


def prunable_weights(model, ignored: list[str]):
    import torch.nn as nn

    return [
        (module, "weight")
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and name not in ignored
    ]


def sparsity(model, ignored: list[str] = ()) -> float:
    """Fraction of exactly-zero weights among the prunable layers."""
    pairs = prunable_weights(model, list(ignored))
    total = sum(m.weight.numel() for m, _ in pairs)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in pairs)
    return zeros / total if total else 0.0


def prune_step(model, family, data, config: L1UnstructuredConfig, plan: StepPlan):
    import torch.nn.utils.prune as tprune

    pairs = prunable_weights(model, config.ignored)
    if config.scope == "global":
        tprune.global_unstructured(pairs, pruning_method=tprune.L1Unstructured, amount=plan.cumulative)
    else:
        for module, name in pairs:
            tprune.l1_unstructured(module, name, amount=plan.cumulative)
    for module, name in pairs:
        tprune.remove(module, name)  # permanent: the mask is folded into the weight
    return model


METHODS.register("l1-unstructured")(
    PruningMethod(L1UnstructuredConfig, prune_step, structured=False, description="unstructured L1 magnitude pruning")
)
