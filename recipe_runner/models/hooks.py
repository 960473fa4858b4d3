"""The training-hook lifecycle: how in-training behaviours plug into every family's trainer.

Keeping pruned weights at zero, sparsity penalties (network slimming, group-L2) and,
later, quantization-aware training all need to act at the same few points of a training
loop. Each family's trainer calls a TrainHook at these points, in this order:

    on_start(model, start_epoch, epochs)   once, on the training device, after a resume is restored
    on_epoch_start(model, epoch)           before the epoch's first batch (epoch counts from 0)
    -- per optimizer step (Ultralytics accumulates gradients over nbs / batch batches first) --
    on_gradients(model)                    gradients are complete and UNSCALED (AMP), before clipping
                                           and optimizer.step(): penalties belong here
    after_step(model)                      after optimizer.step() and zero_grad(), before the EMA update
    -- --
    on_epoch_end(model, epoch) -> metrics  logged at step epoch + 1 with the epoch's other metrics

`state_dict()` / `load_state_dict()` carry a hook's own state (plain data) through the
epoch checkpoints, so a resumed stage continues exactly where the killed one stopped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


class TrainHook:
    """Base class: every call does nothing. Subclasses override what they need and set a unique `name`."""

    name: str = "hook"

    def on_start(self, model: nn.Module, start_epoch: int, epochs: int) -> None:
        pass

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        pass

    def on_gradients(self, model: nn.Module) -> None:
        pass

    def after_step(self, model: nn.Module) -> None:
        pass

    def on_epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class HookChain(TrainHook):
    """Several hooks called in order, as one; what trainers hold. Their states are kept by hook name."""

    name = "chain"

    def __init__(self, hooks: Iterable[TrainHook]):
        self.hooks = list(hooks)
        names = [h.name for h in self.hooks]
        if len(set(names)) != len(names):
            raise ValueError(f"training hooks need unique names, got {names}")

    def on_start(self, model: nn.Module, start_epoch: int, epochs: int) -> None:
        for hook in self.hooks:
            hook.on_start(model, start_epoch, epochs)

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        for hook in self.hooks:
            hook.on_epoch_start(model, epoch)

    def on_gradients(self, model: nn.Module) -> None:
        for hook in self.hooks:
            hook.on_gradients(model)

    def after_step(self, model: nn.Module) -> None:
        for hook in self.hooks:
            hook.after_step(model)

    def on_epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for hook in self.hooks:
            metrics.update(hook.on_epoch_end(model, epoch))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {hook.name: hook.state_dict() for hook in self.hooks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for hook in self.hooks:
            if hook.name in state:
                hook.load_state_dict(state[hook.name])


class KeepZeros(TrainHook):
    """Zero again, after every optimizer step, the conv/linear weights that were exactly zero at the start.

    A dense model has no exact zeros, so this costs nothing there; after `l1-unstructured`
    pruning it keeps training from regrowing the pruned weights. Applied before the EMA update,
    so an EMA copy of a pruned model stays pruned too.
    """

    name = "keep-zeros"

    def __init__(self) -> None:
        self.masks: dict[str, torch.Tensor] = {}

    def on_start(self, model: nn.Module, start_epoch: int, epochs: int) -> None:
        self.masks = {}
        for name, module in model.named_modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                zero = module.weight.detach() == 0
                if zero.any():
                    self.masks[name] = ~zero

    def after_step(self, model: nn.Module) -> None:
        if not self.masks:
            return
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name, mask in self.masks.items():
                modules[name].weight.mul_(mask)


def training_hooks(extra: Iterable[TrainHook] = ()) -> HookChain:
    """What a family's trainer runs: the stage's hooks after the always-on KeepZeros."""
    return HookChain([KeepZeros(), *extra])
