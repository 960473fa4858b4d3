"""train and finetune: (re)train the parent model with the family's trainer; resumable per epoch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config_base import TrainingStageConfig
from ._base import STAGES, StageContext, StageOutput, StageType, distillation


class TrainConfig(TrainingStageConfig):
    """Train the model from its initial weights (or continue training the parent stage's model)."""

    type: Literal["train"] = "train"
    epochs: int = Field(10, ge=1, le=100_000, description="training epochs")
    patience: int = Field(0, ge=0, description="stop after this many epochs without improvement; 0 = never")


class FinetuneConfig(TrainConfig):
    """Recover accuracy after pruning: train the parent stage's model, usually with a lower learning rate."""

    type: Literal["finetune"] = "finetune"  # type: ignore[assignment]
    epochs: int = Field(5, ge=1, le=100_000)
    lr: float = Field(0.001, gt=0, le=10)


def run_training(ctx: StageContext, config: TrainConfig) -> StageOutput:
    model = ctx.parent_model if ctx.parent_model is not None else ctx.family.build(ctx.model_source, ctx.data, ctx.seed)
    result = ctx.family.train(model, ctx.data, config, config.epochs, ctx, distill=distillation(ctx, config))
    # per-epoch metrics are already logged; the engine adds the final evaluation at the last epoch's step
    return StageOutput(
        model=result.model,
        epochs_trained=result.epochs_trained,
        final_step=result.last_epoch,
        evaluation=result.evaluation,
    )


STAGES.register("train")(StageType(TrainConfig, run_training, needs_parent=False, description="train a model"))
STAGES.register("finetune")(StageType(FinetuneConfig, run_training, description="fine-tune the parent model"))
