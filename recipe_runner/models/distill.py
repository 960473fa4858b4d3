"""Knowledge distillation as a family's trainer sees it: a frozen teacher module and how much it counts.

The stage loads the teacher (StageContext.input_model("teacher")) and hands it to `family.train(...,
distill=Distillation(...))`; each family applies it its own way (torchvision: Hinton KD on the logits;
yolo: Ultralytics' DistillationModel, feature distillation with projectors). The teacher never becomes
part of the student: the engine checkpoints only the module train() returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class Distillation:
    teacher: nn.Module  # frozen (eval, no gradients), on the CPU in fp32; a trainer moves it where it trains
    weight: float  # share of the distillation loss in [0, 1]
    temperature: float  # softmax temperature (logit distillation)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): KL(softmax(teacher / T) || softmax(student / T)), batch mean, times T^2 so its
    gradients keep their size whatever T is."""
    from torch.nn import functional as F

    t = float(temperature)
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


def mixed_loss(task: torch.Tensor, distill: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 - weight) * task + weight * distillation."""
    return (1.0 - weight) * task + weight * distill
