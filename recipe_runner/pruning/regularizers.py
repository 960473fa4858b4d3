"""Sparsity penalties for sparse training, as training hooks: network slimming's BN-L1 and torch-pruning's group-L2.

They live next to the pruning methods because they prepare a model for them (slim ranks channels by |gamma|,
DepGraph by group norms), and they plug into any family's trainer through the hook seam (models/hooks.py):
`on_gradients` runs once per optimizer step on complete, unscaled gradients, so the penalty is independent of
AMP loss scaling and of gradient accumulation. Layers of the family's `output_layers` (a classifier, YOLO's
Detect head) keep their size when pruned, so they are never penalised and never counted.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from ..models.hooks import TrainHook

if TYPE_CHECKING:
    from ..models.base import ModelFamily

Decay = Literal["none", "linear"]
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# |gamma| below these counts as (nearly) switched off: metric name -> threshold
THRESHOLDS = {"bn_gamma_below_1e-2": 1e-2, "bn_gamma_below_1e-3": 1e-3}


def prunable_batchnorms(model: nn.Module, family: ModelFamily) -> list[nn.Module]:
    """Affine BatchNorm layers outside the family's output layers: the channels slimming may remove."""
    kept = {id(m) for layer in family.output_layers(model) for m in layer.modules()}
    return [m for m in model.modules() if isinstance(m, _BATCHNORMS) and m.affine and id(m) not in kept]


def gamma_magnitudes(batchnorms: list[nn.Module]) -> torch.Tensor:
    """|gamma| of every channel of these BatchNorm layers, as one float CPU vector."""
    if not batchnorms:
        return torch.zeros(0)
    return torch.cat([bn.weight.detach().abs().float().cpu().flatten() for bn in batchnorms])


def gamma_stats(gammas: torch.Tensor) -> dict[str, float]:
    """Mean |gamma| and the fractions below 1e-2 and 1e-3: how far slimming's sparsity has come."""
    if gammas.numel() == 0:
        return {}
    stats = {"bn_gamma_mean_abs": float(gammas.mean())}
    for name, threshold in THRESHOLDS.items():
        stats[name] = float((gammas < threshold).float().mean())
    return stats


class SparsityPenalty(TrainHook, ABC):
    """A penalty added to the gradients at every optimizer step, with a per-epoch strength schedule.

    `linear` decay: strength * (1 - epoch / epochs), strong early while the network is plastic, nearly off at
    the end so the last epochs recover accuracy. The schedule is a function of the epoch, so a resumed stage
    continues it exactly; the state carries the count of penalised optimizer steps (logged as `penalty_steps`).
    """

    def __init__(self, family: ModelFamily, strength: float, decay: Decay, imgsz: int):
        self.family = family
        self.strength = float(strength)
        self.decay = decay
        self.imgsz = imgsz
        self.current = self.strength
        self.epochs = 1
        self.steps = 0
        self.batchnorms: list[nn.Module] = []

    def on_start(self, model: nn.Module, start_epoch: int, epochs: int) -> None:
        self.epochs = max(int(epochs), 1)
        self.batchnorms = prunable_batchnorms(model, self.family)

    def strength_at(self, epoch: int) -> float:
        if self.decay == "linear":
            return self.strength * (1.0 - epoch / self.epochs)
        return self.strength

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        self.current = self.strength_at(epoch)

    def on_gradients(self, model: nn.Module) -> None:
        if self.current > 0:
            self.penalise(model, self.current)
        self.steps += 1

    @abstractmethod
    def penalise(self, model: nn.Module, strength: float) -> None:
        """Add this step's penalty, at `strength`, to the (unscaled) gradients."""

    def on_epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        return {
            **gamma_stats(gamma_magnitudes(self.batchnorms)),
            "penalty_strength": self.current,
            "penalty_steps": float(self.steps),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "strength": self.strength, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])


class BatchNormL1(SparsityPenalty):
    """Network slimming (Liu et al., 2017): the subgradient of strength * |gamma|, i.e. strength * sign(gamma),
    added to every prunable BatchNorm weight's gradient. Channels whose gamma reaches ~0 carry no signal and
    are what `method: slim` removes."""

    name = "bn-l1"

    def on_start(self, model: nn.Module, start_epoch: int, epochs: int) -> None:
        super().on_start(model, start_epoch, epochs)
        if not self.batchnorms:
            raise ValueError(
                "penalty bn-l1 needs BatchNorm layers outside the output head, and this model has none; "
                "use penalty: group-l2"
            )

    @torch.no_grad()
    def penalise(self, model: nn.Module, strength: float) -> None:
        for bn in self.batchnorms:
            if bn.weight.grad is not None:
                bn.weight.grad.add_(torch.sign(bn.weight), alpha=strength)


class GroupL2(SparsityPenalty):
    """torch-pruning's GroupNormPruner regularizer (DepGraph, Fang et al., 2023): an L2 pull on every parameter of
    each coupled channel group (conv filters, their BatchNorm, the next layer's input slices), stronger for groups
    that are already weak (up to 16x). The groups come from torch-pruning's dependency graph, built in on_start on
    the model being trained; YOLO models must have their C2f blocks split first (family.prepare_for_pruning)."""

    name = "group-l2"

    def __init__(self, family: ModelFamily, strength: float, decay: Decay, imgsz: int):
        super().__init__(family, strength, decay, imgsz)
        self.pruner: Any = None  # torch-pruning's GroupNormPruner, rebuilt in on_start (also after a resume)

    def on_start(self, model: nn.Module, start_epoch: int, epochs: int) -> None:
        import torch_pruning as tp

        super().on_start(model, start_epoch, epochs)
        example = self.family.example_inputs(model, self.imgsz).to(next(model.parameters()).device)
        was_training = model.training
        # tracing runs a forward pass: in train mode it would move the BatchNorm running statistics
        model.eval()
        try:
            self.pruner = tp.pruner.GroupNormPruner(
                model,
                example,
                importance=tp.importance.GroupMagnitudeImportance(p=2),
                reg=self.strength,
                ignored_layers=self.family.output_layers(model),
            )
        finally:
            model.train(was_training)

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        super().on_epoch_start(model, epoch)
        self.pruner.update_regularizer()

    def penalise(self, model: nn.Module, strength: float) -> None:
        self.pruner.reg = strength
        self.pruner.regularize(model)


PENALTIES: dict[str, type[SparsityPenalty]] = {"bn-l1": BatchNormL1, "group-l2": GroupL2}


def make_penalty(penalty: str, family: ModelFamily, strength: float, decay: Decay, imgsz: int) -> SparsityPenalty:
    """The hook for a sparse-train stage's `penalty:` (imgsz: of the example input group-l2 traces the model with)."""
    return PENALTIES[penalty](family, strength, decay, imgsz)
