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
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import torch
from torch import nn

from .hooks import HookChain, training_hooks
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


if TYPE_CHECKING:
    from .base import Keep, TrainContext, TrainKnobs
    from .hooks import TrainHook


def train_args(knobs: TrainKnobs, epochs: int, data_yaml: str, save_dir: Path, seed: int, source: str) -> dict[str, Any]:
    """Ultralytics train overrides from the stage's knobs; `args:` passes extra Ultralytics keys through."""
    device = device_string(knobs.device)
    args: dict[str, Any] = {
        "imgsz": knobs.imgsz, "batch": knobs.batch, "lr0": knobs.lr, "optimizer": _OPTIMIZERS[knobs.optimizer],
        "momentum": knobs.momentum, "weight_decay": knobs.weight_decay, "workers": knobs.workers,
        "patience": int(knobs.patience), "device": device, "seed": int(seed), "deterministic": True,
        "amp": device != "cpu", "verbose": False, "val": True,
    }
    args.update(knobs.args)
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
        rr_hooks: HookChain

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

        def optimizer_step(self):
            """Ultralytics' step with the hooks in it: its only callback near the step (on_train_batch_end) fires
            after the gradients are zeroed, and it accumulates nbs / batch batches per step, so penalties act here,
            once per optimizer step, on unscaled gradients (AMP-safe), before clipping."""
            self.scaler.unscale_(self.optimizer)
            self.rr_hooks.on_gradients(self.unwrapped())
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad()
            self.rr_hooks.after_step(self.unwrapped())
            if self.ema:
                self.ema.update(self.model)

        def unwrapped(self) -> nn.Module:
            return unwrap_model(self.model)

    return RunnerTrainer


class EpochCallbacks:
    """Ultralytics callbacks: run the training hooks' start/epoch calls, log each epoch to the stage run, keep the
    best EMA weights, save resumable state."""

    def __init__(self, ctx: TrainContext, describe: Callable[[nn.Module], dict], advance: Callable[[int], None],
                 hooks: HookChain, best_state: Optional[dict], best_epoch: int):
        self.ctx, self.describe, self.advance, self.hooks = ctx, describe, advance, hooks
        self.best_state, self.best_epoch = best_state, best_epoch
        self.last_metrics: dict[str, float] = {}

    def train_start(self, trainer: Any) -> None:
        # here the model is on the training device and a resumed optimizer/EMA is restored
        self.hooks.on_start(trainer.unwrapped(), int(trainer.start_epoch), int(trainer.epochs))

    def epoch_start(self, trainer: Any) -> None:
        self.hooks.on_epoch_start(trainer.unwrapped(), int(trainer.epoch))

    def fit_epoch_end(self, trainer: Any) -> None:
        epoch = trainer.epoch + 1
        metrics = {**epoch_metrics(trainer), **self.hooks.on_epoch_end(trainer.unwrapped(), int(trainer.epoch))}
        self.last_metrics = metrics
        self.ctx.log_metrics(metrics, step=epoch)
        ema = trainer.ema.ema
        if trainer.fitness is not None and trainer.best_fitness is not None and trainer.fitness >= trainer.best_fitness:
            self.best_state = {k: v.detach().clone() for k, v in ema.state_dict().items()}
            self.best_epoch = epoch
        if self.ctx.epoch_state_due(epoch):
            self.save(trainer, epoch)
        self.advance(1)

    def save(self, trainer: Any, epoch: int) -> None:
        ema = trainer.ema.ema
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
            "hooks": self.hooks.state_dict(),
        }, epoch)


def finished_model(ema: nn.Module, best_state: Optional[dict], keep: Keep) -> nn.Module:
    """The trained EMA as a trainable fp32 module: the best epoch's (Ultralytics' best.pt) for keep="best", the
    last epoch's (last.pt) for keep="last"."""
    model = copy.deepcopy(ema).float()
    if keep == "best" and best_state is not None:
        model.load_state_dict(best_state)
    for p in model.parameters():
        p.requires_grad_(True)
    model.criterion = None
    return model.eval()


def run_training(model: nn.Module, rebuild: Callable[[dict], nn.Module], describe: Callable[[nn.Module], dict],
                 data_yaml: str, knobs: TrainKnobs, epochs: int, ctx: TrainContext, source: str,
                 hooks: Sequence[TrainHook] = (), keep: Keep = "best") -> tuple[nn.Module, dict[str, float], int, int]:
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
            return finished_model(ema, best_state, keep), {}, 0, start
    for p in model.parameters():
        p.requires_grad_(True)
    model.criterion = None  # the loss caches head shapes; pruning may have changed them
    chain = training_hooks(hooks)
    if state is not None:
        chain.load_state_dict(state.get("hooks", {}))
    save_dir = Path(tempfile.mkdtemp(prefix="yolo-train-", dir=ctx.workdir))
    try:
        cls = make_trainer_class()
        trainer = cls(overrides=train_args(knobs, epochs, data_yaml, save_dir, ctx.seed, source))
        strip_integration_callbacks(trainer)
        trainer.rr_model, trainer.rr_resume, trainer.rr_hooks = model, state, chain
        trainer.model = model
        advance = ctx.progress("epochs", epochs)
        advance(start)
        callbacks = EpochCallbacks(ctx, describe, advance, chain, best_state, best_epoch)
        trainer.add_callback("on_train_start", callbacks.train_start)
        trainer.add_callback("on_train_epoch_start", callbacks.epoch_start)
        trainer.add_callback("on_fit_epoch_end", callbacks.fit_epoch_end)
        trainer.train()
        epoch_reached = int(trainer.epoch) + 1
        result = finished_model(trainer.ema.ema, callbacks.best_state, keep)
        return result, callbacks.last_metrics, epoch_reached - start, epoch_reached
    finally:
        shutil.rmtree(save_dir, ignore_errors=True)
        torch.use_deterministic_algorithms(False)
