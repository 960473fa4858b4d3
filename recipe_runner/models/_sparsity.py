"""Keep unstructured-pruned weights at zero while a model trains."""
from __future__ import annotations

import torch
from torch import nn


class ZeroKeeper:
    """Remembers which conv/linear weights are exactly zero and zeroes them again after each optimizer step.

    A dense model has no exact zeros, so this costs nothing there; after `l1-unstructured`
    pruning it keeps fine-tuning from regrowing the pruned weights.
    """

    def __init__(self, model: nn.Module):
        self.masks: dict[str, torch.Tensor] = {}
        for name, module in model.named_modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                zero = module.weight.detach() == 0
                if zero.any():
                    self.masks[name] = ~zero

    def restore(self, model: nn.Module) -> None:
        if not self.masks:
            return
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name, mask in self.masks.items():
                modules[name].weight.mul_(mask)
