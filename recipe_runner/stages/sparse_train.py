"""sparse-train: train with a sparsity penalty (network slimming's BN-L1 or DepGraph's group-L2), so that a following
prune stage removes channels that already carry almost nothing. Resumable per epoch, like train."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, model_validator

from ..config_base import ConfigProblem
from ._base import STAGES, StageContext, StageOutput, StageType, distillation
from .train import TrainConfig

# torch-pruning's benchmark settings (benchmarks/main.py): --reg 1e-5 for slim, 5e-4 for group_norm; 1e-5 is also
# network slimming's lambda for ResNet/DenseNet on CIFAR
DEFAULT_STRENGTH = {"bn-l1": 1e-5, "group-l2": 5e-4}


class SparseTrainConfig(TrainConfig):
    """Train (all `train` keys) with a penalty that drives channels toward zero before pruning."""

    type: Literal["sparse-train"] = "sparse-train"  # type: ignore[assignment]
    penalty: Literal["bn-l1", "group-l2"] = Field(
        "bn-l1",
        description="bn-l1: network slimming, strength * sign(gamma) added to every prunable BatchNorm weight's "
        "gradient (pair with prune method: slim); group-l2: torch-pruning's GroupNormPruner regularizer on whole "
        "coupled channel groups (pair with method: depgraph, importance: group-l2)",
    )
    strength: float | None = Field(
        None,
        ge=0,
        le=1,
        description="penalty coefficient; default by penalty, from torch-pruning's benchmarks: 1e-5 for bn-l1 "
        "(also network slimming's value for ResNets), 5e-4 for group-l2. It is added to the gradient the trainer "
        "sees: Ultralytics sums the YOLO loss over the nominal batch (nbs, 64 images), so YOLO needs about 100x "
        "more (YOLO slimming repos use 1e-4 to 1e-2). 0 trains without a penalty but logs the same gamma metrics",
    )
    strength_decay: Literal["none", "linear"] = Field(
        "none",
        description="linear: strength * (1 - epoch / epochs), so the last epochs recover accuracy",
    )

    @model_validator(mode="after")
    def _strength_by_penalty(self) -> SparseTrainConfig:
        # resolved here, so the cache key and the lock file hold the number used (an explicit 1e-5 == the default)
        if self.strength is None:
            self.strength = DEFAULT_STRENGTH[self.penalty]
        return self


def run_sparse_train(ctx: StageContext, config: SparseTrainConfig) -> StageOutput:
    from ..pruning.regularizers import gamma_magnitudes, gamma_stats, make_penalty, prunable_batchnorms

    family = ctx.family
    model = ctx.parent_model if ctx.parent_model is not None else family.build(ctx.model_source, ctx.data, ctx.seed)
    if config.penalty == "group-l2":
        # torch-pruning cannot trace YOLO's C2f split; swap in the equivalent block before the trainer builds its
        # optimizer (the output is unchanged and the checkpoint records the swap, as after a prune stage)
        model = family.prepare_for_pruning(model)
    before = gamma_magnitudes(prunable_batchnorms(model, family))
    if config.penalty == "bn-l1" and before.numel() == 0:  # said before training starts, not after
        raise ValueError(
            "penalty bn-l1 needs BatchNorm layers outside the output head, and this model has none; "
            "use penalty: group-l2"
        )
    hook = make_penalty(config.penalty, family, float(config.strength), config.strength_decay, config.imgsz)
    # the last epoch's weights: the best-fitness epoch is usually an early, less sparse one
    result = family.train(
        model, ctx.data, config, config.epochs, ctx, hooks=[hook], keep="last", distill=distillation(ctx, config)
    )
    after = gamma_magnitudes(prunable_batchnorms(result.model, family))
    if before.numel():
        ctx.log_plot(_histogram(before, after), "bn_gamma_hist.png")
    return StageOutput(
        model=result.model,
        metrics=gamma_stats(after),
        epochs_trained=result.epochs_trained,
        final_step=result.last_epoch,
        evaluation=result.evaluation,
    )


def _histogram(before, after):
    """|gamma| of the prunable BatchNorm channels before and after, on a log axis (zeros clipped to 1e-6)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    floor = 1e-6
    values = [np.clip(g.numpy(), floor, None) for g in (before, after)]
    # the bins span the values present: fine near 1 when nothing is sparse yet, down to the floor when it is
    low = max(min(float(v.min()) for v in values) / 1.5, floor)
    top = max(max(float(v.max()) for v in values) * 1.5, low * 10)
    bins = np.logspace(np.log10(low), np.log10(top), 60)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(values[0], bins=bins, alpha=0.6, label=f"before ({len(values[0])} channels)")
    ax.hist(values[1], bins=bins, alpha=0.6, label="after sparse training")
    for threshold in (1e-2, 1e-3):
        if low < threshold:
            ax.axvline(threshold, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("|BatchNorm gamma| of prunable channels (values below 1e-6 drawn at 1e-6)")
    ax.set_ylabel("channels")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def check_model(config: SparseTrainConfig, skeleton: Callable[[], Any]) -> None:
    """bn-l1 penalises BatchNorm scales: refuse a model without BatchNorm before a parent stage trains for nothing."""
    from ..pruning import has_batchnorm

    if config.penalty == "bn-l1" and not has_batchnorm(skeleton()):
        raise ConfigProblem(
            "penalty", "penalty bn-l1 needs BatchNorm layers and this model has none; use penalty: group-l2"
        )


STAGES.register("sparse-train")(
    StageType(
        SparseTrainConfig,
        run_sparse_train,
        needs_parent=False,
        check=check_model,
        description="train with a sparsity penalty before pruning",
    )
)
