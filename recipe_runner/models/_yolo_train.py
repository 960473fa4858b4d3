"""Train a (possibly pruned) YOLO module with Ultralytics' own trainer, under the runner's control.

Why a DetectionTrainer subclass: `Model.train()` rebuilds the network from its yaml,
which silently undoes pruning. Our trainer is handed the module itself, never saves
Ultralytics pickles (the runner checkpoints plain data through ctx.save_epoch_state
each epoch) and resumes from that plain-data state instead of last.pt.
"""
from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ._sparsity import ZeroKeeper
from ._yolo_env import device_string, strip_integration_callbacks, ultralytics_ready

_OPTIMIZERS = {"auto": "auto", "sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
# The trainer's own arguments: users' `args:` may not override these.
_OWNED = ("model", "data", "epochs", "project", "name", "exist_ok", "resume", "save", "save_period", "plots", "task",
          "mode", "pretrained")


# Ultralytics keys the recipe sets through its own stage keys.
_KNOBS = {"imgsz": "imgsz", "batch": "batch", "lr0": "lr", "optimizer": "optimizer", "momentum": "momentum",
          "weight_decay": "weight_decay", "workers": "workers", "device": "device", "seed": "seed (top level)",
          "patience": "patience"}


def check_args(args: dict[str, Any]) -> None:
    """`args:` must be Ultralytics train arguments the runner does not set itself."""
    ultralytics_ready()
    from ultralytics.cfg import DEFAULT_CFG_DICT

    from ..registry import did_you_mean

    for key in args:
        if key in _OWNED:
            raise ValueError(f"args.{key} is set by recipe-runner itself (from the recipe) and cannot be overridden")
        if key in _KNOBS:
            raise ValueError(f"args.{key}: use the recipe key '{_KNOBS[key]}' instead")
        if key not in DEFAULT_CFG_DICT:
            raise ValueError(f"args.{key} is not an Ultralytics train argument{did_you_mean(key, DEFAULT_CFG_DICT)}")


def train_args(knobs: Any, epochs: int, data_yaml: str, save_dir: Path, seed: int, source: str) -> dict[str, Any]:
    """Ultralytics train overrides from the stage's knobs; `args:` passes extra Ultralytics keys through."""
    device = device_string(getattr(knobs, "device", "cpu"))
    args: dict[str, Any] = {
        "imgsz": knobs.imgsz, "batch": knobs.batch, "lr0": knobs.lr, "optimizer": _OPTIMIZERS[knobs.optimizer],
        "momentum": knobs.momentum, "weight_decay": knobs.weight_decay, "workers": knobs.workers,
        "patience": int(getattr(knobs, "patience", 0) or 0), "device": device, "seed": int(seed), "deterministic": True,
        "amp": device != "cpu", "verbose": False, "val": True,
    }
    args.update(dict(getattr(knobs, "args", {}) or {}))
    args.update({
        "model": source, "data": data_yaml, "epochs": int(epochs), "project": str(save_dir.parent), "name": save_dir.name,
        "exist_ok": True, "resume": False, "save": False, "save_period": -1, "plots": False, "task": "detect", "mode": "train",
        "pretrained": False,
    })
    if device == "cpu":
        args["amp"] = False  # AMP's check downloads weights, and CPU has no use for it
    return args


def _metric_name(key: str) -> str:
    """Ultralytics' 'metrics/mAP50-95(B)' -> 'mAP50-95', 'train/box_loss' stays (MLflow rejects parentheses)."""
    if key.startswith("metrics/"):
        key = key[len("metrics/"):]
    return key.replace("(B)", "").replace("(", "").replace(")", "")


def epoch_metrics(trainer: Any) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if trainer.tloss is not None:
        metrics.update(trainer.label_loss_items(trainer.tloss, prefix="train"))
    for key, value in (trainer.metrics or {}).items():
        metrics[_metric_name(key)] = float(value)
    for key, value in (getattr(trainer, "lr", None) or {}).items():
        metrics[key] = float(value)
    if trainer.fitness is not None:
        metrics["fitness"] = float(trainer.fitness)
    return metrics


def make_trainer_class():
    """Defined lazily so importing this module does not import Ultralytics."""
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.torch_utils import unwrap_model

    class RunnerTrainer(DetectionTrainer):
        """DetectionTrainer that trains the module it is given and resumes from the runner's plain-data state."""

        rr_model: nn.Module
        rr_resume: Optional[dict] = None

        def get_model(self, cfg=None, weights=None, verbose=True):
            return self.rr_model

        def setup_model(self):
            self.model = self.rr_model
            return None

        def save_model(self):  # the runner checkpoints each epoch itself, as plain data
            return False

        def final_eval(self):  # the engine evaluates the returned model itself
            return None

        def resume_training(self, ckpt):
            state = self.rr_resume
            if not state:
                return
            self.optimizer.load_state_dict(state["optimizer"])
            self.ema.ema.load_state_dict(state["ema"])
            self.ema.updates = int(state["ema_updates"])
            self.best_fitness = state.get("best_fitness")
            self.stopper.best_fitness = state.get("stopper_best_fitness")
            self.stopper.best_epoch = int(state.get("stopper_best_epoch", 0))
            self.start_epoch = int(state["epoch"])

        def unwrapped(self) -> nn.Module:
            return unwrap_model(self.model)

    return RunnerTrainer


class EpochHooks:
    """Callbacks: log each epoch to the stage run, keep the best EMA weights, save resumable state, keep zeros."""

    def __init__(self, ctx: Any, describe: Callable[[nn.Module], dict], advance: Callable[[int], None],
                 keeper: ZeroKeeper, best_state: Optional[dict], best_epoch: int):
        self.ctx, self.describe, self.advance, self.keeper = ctx, describe, advance, keeper
        self.best_state, self.best_epoch = best_state, best_epoch
        self.last_metrics: dict[str, float] = {}

    def batch_end(self, trainer: Any) -> None:
        if self.keeper.masks:
            self.keeper.restore(trainer.unwrapped())
            self.keeper.restore(trainer.ema.ema)

    def fit_epoch_end(self, trainer: Any) -> None:
        epoch = trainer.epoch + 1
        metrics = epoch_metrics(trainer)
        self.last_metrics = metrics
        self.ctx.log_metrics(metrics, step=epoch)
        ema = trainer.ema.ema
        if trainer.fitness is not None and trainer.best_fitness is not None and trainer.fitness >= trainer.best_fitness:
            self.best_state = {k: v.detach().clone() for k, v in ema.state_dict().items()}
            self.best_epoch = epoch
        self.ctx.save_epoch_state({
            "model": self.describe(trainer.unwrapped()),
            "ema": {k: v.detach().clone() for k, v in ema.state_dict().items()},
            "ema_updates": int(trainer.ema.updates),
            "optimizer": trainer.optimizer.state_dict(),
            "epoch": epoch,
            "best_fitness": None if trainer.best_fitness is None else float(trainer.best_fitness),
            "stopper_best_fitness": None if trainer.stopper.best_fitness is None else float(trainer.stopper.best_fitness),
            "stopper_best_epoch": int(trainer.stopper.best_epoch),
            "best_state": self.best_state,
            "best_epoch": self.best_epoch,
        }, epoch)
        self.advance(1)


def finished_model(ema: nn.Module, best_state: Optional[dict]) -> nn.Module:
    """Ultralytics' result is the best epoch's EMA weights (best.pt); return that as a trainable fp32 module."""
    model = copy.deepcopy(ema).float()
    if best_state is not None:
        model.load_state_dict(best_state)
    for p in model.parameters():
        p.requires_grad_(True)
    model.criterion = None
    return model.eval()


def run_training(model: nn.Module, rebuild: Callable[[dict], nn.Module], describe: Callable[[nn.Module], dict],
                 data_yaml: str, knobs: Any, epochs: int, ctx: Any, source: str) -> tuple[nn.Module, dict[str, float], int, int]:
    """Train `model` for `epochs`; returns (model, last epoch metrics, epochs run here, epoch reached)."""
    ultralytics_ready()
    state = ctx.resume_state
    best_state, best_epoch, start = None, 0, 0
    if state is not None:
        model = rebuild(state["model"])
        best_state, best_epoch, start = state.get("best_state"), int(state.get("best_epoch", 0)), int(state["epoch"])
        if start >= epochs:  # the last epoch was saved but the stage did not finish: nothing left to train
            ema = rebuild(state["model"])
            ema.load_state_dict(state["ema"])
            return finished_model(ema, best_state), {}, 0, start
    for p in model.parameters():
        p.requires_grad_(True)
    model.criterion = None  # the loss caches head shapes; pruning may have changed them
    keeper = ZeroKeeper(model)
    save_dir = Path(tempfile.mkdtemp(prefix="yolo-train-", dir=ctx.workdir))
    try:
        cls = make_trainer_class()
        trainer = cls(overrides=train_args(knobs, epochs, data_yaml, save_dir, int(getattr(ctx, "seed", 0)), source))
        strip_integration_callbacks(trainer)
        trainer.rr_model, trainer.rr_resume = model, state
        trainer.model = model
        advance = ctx.progress("epochs", epochs)
        advance(start)
        hooks = EpochHooks(ctx, describe, advance, keeper, best_state, best_epoch)
        trainer.add_callback("on_train_batch_end", hooks.batch_end)
        trainer.add_callback("on_fit_epoch_end", hooks.fit_epoch_end)
        trainer.train()
        epoch_reached = int(trainer.epoch) + 1
        result = finished_model(trainer.ema.ema, hooks.best_state)
        return result, hooks.last_metrics, epoch_reached - start, epoch_reached
    finally:
        shutil.rmtree(save_dir, ignore_errors=True)
        torch.use_deterministic_algorithms(False)
