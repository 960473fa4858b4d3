"""Train a (possibly pruned) YOLO module with Ultralytics' own trainer, under the runner's control.

Why a DetectionTrainer subclass: `Model.train()` rebuilds the network from its yaml,
which silently undoes pruning. Our trainer is handed the module itself, never saves
Ultralytics pickles (the runner checkpoints plain data through ctx.save_epoch_state
each epoch) and resumes from that plain-data state instead of last.pt.

Device contract: whatever device trains, what leaves training (the returned model, the
epoch states, the best weights) is on the CPU in fp32, so the next stage's cost, latency,
pruning and export (which build CPU inputs) get what they expect.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from ..hooks import HookChain, training_hooks
from .amp import offline_amp_check
from .environment import device_string, strip_integration_callbacks, ultralytics_ready

_OPTIMIZERS = {"auto": "auto", "sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
# The trainer's own arguments: users' `args:` may not override these.
# distill_model: a path there would be unpickled by Ultralytics (weights_only=False); the recipe's `distill:` hands
# the verified teacher module over instead
_OWNED = (
    "model",
    "data",
    "epochs",
    "project",
    "name",
    "exist_ok",
    "resume",
    "save",
    "save_period",
    "plots",
    "task",
    "mode",
    "pretrained",
    "distill_model",
)
# Ultralytics' feature-distillation gain per unit of the recipe's distill.weight: weight 0.5 gives its default dis 6.0
DIS_PER_WEIGHT = 12.0


# Ultralytics keys the recipe sets through its own stage keys.
_KNOBS = {
    "imgsz": "imgsz",
    "batch": "batch",
    "lr0": "lr",
    "optimizer": "optimizer",
    "momentum": "momentum",
    "weight_decay": "weight_decay",
    "workers": "workers",
    "device": "device",
    "seed": "seed (top level)",
    "patience": "patience",
    "dis": "distill.weight",
}


def check_args(args: dict[str, Any]) -> None:
    """`args:` must be Ultralytics train arguments the runner does not set itself."""
    ultralytics_ready()
    from ultralytics.cfg import DEFAULT_CFG_DICT

    from ...registry import did_you_mean

    for key in args:
        if key in _OWNED:
            raise ValueError(f"args.{key} is set by recipe-runner itself (from the recipe) and cannot be overridden")
        if key in _KNOBS:
            raise ValueError(f"args.{key}: use the recipe key '{_KNOBS[key]}' instead")
        if key not in DEFAULT_CFG_DICT:
            raise ValueError(f"args.{key} is not an Ultralytics train argument{did_you_mean(key, DEFAULT_CFG_DICT)}")


if TYPE_CHECKING:
    from ..base import Keep, TrainContext, TrainKnobs
    from ..distill import Distillation
    from ..hooks import TrainHook


def train_args(
    knobs: TrainKnobs,
    epochs: int,
    data_yaml: str,
    save_dir: Path,
    seed: int,
    source: str,
    distill: Distillation | None = None,
) -> dict[str, Any]:
    """Ultralytics train overrides from the stage's knobs; `args:` passes extra Ultralytics keys through."""
    device = device_string(knobs.device)
    args: dict[str, Any] = {
        "imgsz": knobs.imgsz,
        "batch": knobs.batch,
        "lr0": knobs.lr,
        "optimizer": _OPTIMIZERS[knobs.optimizer],
        "momentum": knobs.momentum,
        "weight_decay": knobs.weight_decay,
        "workers": knobs.workers,
        "patience": int(knobs.patience),
        "device": device,
        "seed": int(seed),
        "deterministic": True,
        "amp": device != "cpu",
        "verbose": False,
        "val": True,
    }
    args.update(knobs.args)
    args.update(
        {
            "model": source,
            "data": data_yaml,
            "epochs": int(epochs),
            "project": str(save_dir.parent),
            "name": save_dir.name,
            "exist_ok": True,
            "resume": False,
            "save": False,
            "save_period": -1,
            "plots": False,
            "task": "detect",
            "mode": "train",
            "pretrained": False,
        }
    )
    if device == "cpu":
        args["amp"] = False  # CPU has no use for it (on a GPU the trainer's offline_amp_check judges it)
    if distill is not None:
        args["dis"] = DIS_PER_WEIGHT * distill.weight
    return args


def _metric_name(key: str) -> str:
    """Ultralytics' 'metrics/mAP50-95(B)' -> 'mAP50-95', 'train/box_loss' stays (MLflow rejects parentheses)."""
    if key.startswith("metrics/"):
        key = key[len("metrics/") :]
    return key.replace("(B)", "").replace("(", "").replace(")", "")


def epoch_metrics(trainer: Any) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if trainer.tloss is not None:
        metrics.update(trainer.label_loss_items(trainer.tloss, prefix="train"))
    if "train/dis_loss" in metrics:  # distilling: the two parts of the loss, as the classifier family names them
        metrics["train/distill_loss"] = metrics["train/dis_loss"]
        metrics["train/task_loss"] = sum(
            v
            for k, v in metrics.items()
            if k.startswith("train/") and k not in ("train/dis_loss", "train/distill_loss")
        )
    for key, value in (trainer.metrics or {}).items():
        metrics[_metric_name(key)] = float(value)
    for key, value in (getattr(trainer, "lr", None) or {}).items():
        metrics[key] = float(value)
    if trainer.fitness is not None:
        metrics["fitness"] = float(trainer.fitness)
    return metrics


def student_of(model: nn.Module) -> nn.Module:
    """The student inside Ultralytics' DistillationModel (the module itself when not distilling)."""
    from ultralytics.nn.distill_model import DistillationModel

    return model.student_model if isinstance(model, DistillationModel) else model


def make_trainer_class(hooks: HookChain, resume: dict | None, teacher: nn.Module | None = None) -> type:
    """A DetectionTrainer subclass for one training run, made here so importing this module does not import
    Ultralytics.

    Its hooks and resume state are class attributes, not instance ones: Ultralytics' DDP launcher pickles the
    trainer's class (by value, with cloudpickle), its args, model and callbacks into the file its worker processes
    load, never the instance. The model is the trainer's `model`, set before `train()`: a module, so
    Ultralytics' setup_model keeps it instead of building one from the yaml (which would undo pruning).

    With a `teacher`, Ultralytics' own distillation path wraps the student in its DistillationModel (projectors
    from the student's neck widths to the teacher's, so a pruned student fits): the trainer's `distill_model`
    argument is the teacher module for the time _setup_train builds the wrapper, never a path it would unpickle.
    Its EMA holds the student and the projectors (Ultralytics strips the teacher); the runner's epoch states keep
    the student alone under "model"/"ema" and the projectors apart, so a resume restores them.
    """
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.torch_utils import unwrap_model

    class RunnerTrainer(DetectionTrainer):
        """DetectionTrainer that trains the module it is given and resumes from the runner's plain-data state."""

        rr_hooks: HookChain = hooks
        rr_resume: dict | None = resume
        rr_teacher: nn.Module | None = teacher

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # Ultralytics adds its integrations (platform, analytics) in every process that builds a trainer,
            # DDP workers included; the runner owns the records
            strip_integration_callbacks(self)

        def get_model(self, cfg=None, weights=None, verbose=True):
            raise RuntimeError("the runner's trainer is handed its model; it never builds one from a yaml")

        def save_model(self):  # the runner checkpoints each epoch itself, as plain data
            return False

        def final_eval(self):  # the engine evaluates the returned model itself
            return None

        def _setup_train(self):
            self.args.distill_model = self.rr_teacher
            try:
                with offline_amp_check():
                    super()._setup_train()
            finally:
                self.args.distill_model = None  # a module: never into args.yaml, a validator's args or a pickle

        def resume_training(self, ckpt):
            state = self.rr_resume
            if not state:
                return
            self.optimizer.load_state_dict(state["optimizer"])
            student_of(self.ema.ema).load_state_dict(state["ema"])
            if self.rr_teacher is not None:  # the projectors trained so far, of the model and of its EMA
                unwrap_model(self.model).projector.load_state_dict(state["distill"]["projector"])
                self.ema.ema.projector.load_state_dict(state["distill"]["ema_projector"])
            self.ema.updates = int(state["ema_updates"])
            self.best_fitness = state.get("best_fitness")
            self.stopper.best_fitness = state.get("stopper_best_fitness")
            self.stopper.best_epoch = int(state.get("stopper_best_epoch", 0))
            self.start_epoch = int(state["epoch"])

        def optimizer_step(self):
            """Ultralytics' step with the hooks in it: its only callback near the step (on_train_batch_end) fires
            after the gradients are zeroed, and it accumulates nbs / batch batches per step, so penalties act here,
            once per optimizer step, on unscaled gradients (AMP-safe), before clipping. Under DDP the gradients
            are already averaged over the ranks, so every rank applies the same penalty."""
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
            """The student: hooks, states and the result see it, never the DDP or distillation wrapper."""
            return student_of(unwrap_model(self.model))

    return RunnerTrainer


class EpochSink(Protocol):
    """Where the epoch callbacks send what training produced: the stage run in this process (ContextSink), or in
    a DDP worker the files its launching process relays there (workers.SpoolSink)."""

    def epoch_end(self, epoch: int, metrics: dict[str, float], state: Callable[[], dict | None]) -> None:
        """Epoch `epoch` (counting from 1) finished; `state()` builds its resumable state if wanted."""

    def finish(self, model: nn.Module, metrics: dict[str, float], epoch: int) -> None:
        """Training ended at `epoch` with `model` (on the CPU) and its last epoch's metrics."""


@dataclass
class Trained:
    model: nn.Module
    metrics: dict[str, float]
    epoch: int


class ContextSink:
    """Log each epoch to the stage run, save its state when the stage's cadence says so, keep the result."""

    def __init__(self, ctx: TrainContext, advance: Callable[[int], None]):
        self.ctx, self.advance = ctx, advance
        self.result: Trained | None = None

    def epoch_end(self, epoch: int, metrics: dict[str, float], state: Callable[[], dict | None]) -> None:
        self.ctx.log_metrics(metrics, step=epoch)
        if self.ctx.epoch_state_due(epoch):
            built = state()
            if built is not None:  # None: a DDP worker was not asked for it in time (see workers.py)
                self.ctx.save_epoch_state(built, epoch)
        self.advance(1)

    def state_due(self, epoch: int) -> bool:
        return self.ctx.epoch_state_due(epoch)

    def finish(self, model: nn.Module, metrics: dict[str, float], epoch: int) -> None:
        self.result = Trained(model, metrics, epoch)


def cpu_copy(value: Any) -> Any:
    """Tensors handed out of training live on the CPU, contiguous: checkpoints load anywhere, the GPU keeps its
    memory. `value`: a tensor, or dicts and lists of them (a state_dict, an optimizer's state)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True).contiguous()
    if isinstance(value, dict):
        return {k: cpu_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cpu_copy(v) for v in value)
    return value


class EpochCallbacks:
    """Ultralytics callbacks: run the training hooks' start/epoch calls, keep the best EMA weights, send each epoch
    and the result to the sink. Picklable when its sink is (it travels to DDP workers with the trainer)."""

    def __init__(
        self,
        sink: EpochSink,
        describe: Callable[[nn.Module], dict],
        keep: Keep,
        best_state: dict | None,
        best_epoch: int,
    ):
        self.sink = sink
        self.describe = describe
        self.keep = keep
        self.best_state, self.best_epoch = best_state, best_epoch
        self.last_metrics: dict[str, float] = {}

    def train_start(self, trainer: Any) -> None:
        # here the model is on the training device and a resumed optimizer/EMA is restored
        trainer.rr_hooks.on_start(trainer.unwrapped(), int(trainer.start_epoch), int(trainer.epochs))

    def epoch_start(self, trainer: Any) -> None:
        trainer.rr_hooks.on_epoch_start(trainer.unwrapped(), int(trainer.epoch))

    def fit_epoch_end(self, trainer: Any) -> None:
        epoch = trainer.epoch + 1
        hooks = trainer.rr_hooks
        metrics = {**epoch_metrics(trainer), **hooks.on_epoch_end(trainer.unwrapped(), int(trainer.epoch))}
        self.last_metrics = metrics
        if trainer.fitness is not None and trainer.best_fitness is not None and trainer.fitness >= trainer.best_fitness:
            self.best_state = cpu_copy(student_of(trainer.ema.ema).state_dict())
            self.best_epoch = epoch
        self.sink.epoch_end(epoch, metrics, lambda: self.state(trainer, epoch))

    def train_end(self, trainer: Any) -> None:
        model = finished_model(student_of(trainer.ema.ema), self.best_state, self.keep)
        self.sink.finish(model, self.last_metrics, int(trainer.epoch) + 1)

    def state(self, trainer: Any, epoch: int) -> dict:
        from ultralytics.utils.torch_utils import unwrap_model

        ema = trainer.ema.ema
        wrapper = unwrap_model(trainer.model)
        distill = (
            {
                "projector": cpu_copy(wrapper.projector.state_dict()),
                "ema_projector": cpu_copy(ema.projector.state_dict()),
            }
            if wrapper is not trainer.unwrapped()
            else {}
        )
        return {
            "model": self.describe(trainer.unwrapped()),
            "ema": cpu_copy(student_of(ema).state_dict()),
            "distill": distill,
            "ema_updates": int(trainer.ema.updates),
            "optimizer": cpu_copy(trainer.optimizer.state_dict()),
            "epoch": epoch,
            "best_fitness": None if trainer.best_fitness is None else float(trainer.best_fitness),
            "stopper_best_fitness": None
            if trainer.stopper.best_fitness is None
            else float(trainer.stopper.best_fitness),
            "stopper_best_epoch": int(trainer.stopper.best_epoch),
            "best_state": self.best_state,
            "best_epoch": self.best_epoch,
            "hooks": trainer.rr_hooks.state_dict(),
        }


def finished_model(ema: nn.Module, best_state: dict | None, keep: Keep) -> nn.Module:
    """The trained EMA as a trainable fp32 module on the CPU (how stages hand models over): the best epoch's
    (Ultralytics' best.pt) for keep="best", the last epoch's (last.pt) for keep="last"."""
    # Ultralytics trains channels_last on CUDA: back to the layout a rebuilt or CPU-trained model has, so CPU
    # latency does not depend on where the model was trained
    model = copy.deepcopy(ema).float().to("cpu", memory_format=torch.contiguous_format)
    if keep == "best" and best_state is not None:
        model.load_state_dict(best_state)
    _drop_feature_hooks(model)
    for p in model.parameters():
        p.requires_grad_(True)
    model.criterion = None
    return model.eval()


def _drop_feature_hooks(model: nn.Module) -> None:
    """Remove the forward hooks DistillationModel registered to capture features: a finished student (or a
    teacher used again by the next prune step) must not keep storing its layers' outputs."""
    from ultralytics.nn.distill_model import DistillationModel

    for module in model.modules():
        DistillationModel._clear_feature_hooks(module)


def run_training(
    model: nn.Module,
    rebuild: Callable[[dict], nn.Module],
    describe: Callable[[nn.Module], dict],
    data_yaml: str,
    knobs: TrainKnobs,
    epochs: int,
    ctx: TrainContext,
    source: str,
    hooks: Sequence[TrainHook] = (),
    keep: Keep = "best",
    distill: Distillation | None = None,
) -> tuple[nn.Module, dict[str, float], int, int]:
    """Train `model` for `epochs`, here or in DDP worker processes (`device: [0, 1]`); returns (model on the CPU,
    last epoch metrics, epochs run here, epoch reached)."""
    from .workers import SpoolRelay, SpoolSink, launches_workers, train_in_workers

    ultralytics_ready()
    state = ctx.resume_state
    best_state = None
    best_epoch = 0
    start = 0
    if state is not None:
        model = rebuild(state["model"])
        best_state = state.get("best_state")
        best_epoch = int(state.get("best_epoch", 0))
        start = int(state["epoch"])
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
    # beside save_dir, not in it: Ultralytics' DDP launcher empties save_dir
    spool = save_dir.parent / f"{save_dir.name}-spool"
    try:
        cls = make_trainer_class(chain, state, distill.teacher if distill is not None else None)
        trainer = cls(overrides=train_args(knobs, epochs, data_yaml, save_dir, ctx.seed, source, distill))
        trainer.model = model
        advance = ctx.progress("epochs", epochs)
        advance(start)
        here = ContextSink(ctx, advance)
        workers = launches_workers(trainer)
        sink: EpochSink = SpoolSink(spool, describe) if workers else here
        callbacks = EpochCallbacks(sink, describe, keep, best_state, best_epoch)
        trainer.add_callback("on_train_start", callbacks.train_start)
        trainer.add_callback("on_train_epoch_start", callbacks.epoch_start)
        trainer.add_callback("on_fit_epoch_end", callbacks.fit_epoch_end)
        trainer.add_callback("on_train_end", callbacks.train_end)
        if workers:
            train_in_workers(trainer, SpoolRelay(spool, here, rebuild, start))
        else:
            trainer.train()
        if here.result is None:
            raise RuntimeError("Ultralytics' trainer ended without finishing its last epoch")
        result = here.result
        return result.model, result.metrics, result.epoch - start, result.epoch
    finally:
        shutil.rmtree(save_dir, ignore_errors=True)
        shutil.rmtree(spool, ignore_errors=True)
        torch.use_deterministic_algorithms(False)
        if distill is not None:  # the stage's teacher, shared by a prune stage's steps: back as it was given
            _drop_feature_hooks(distill.teacher.cpu())


def release_gpu_memory() -> None:
    """After run_training has returned (its frame held the trainer): the trainer holds reference cycles (its
    scheduler's lambda), so collect them now, or a prune stage's fine-tuning steps pile up models, optimizers and
    EMAs on the GPU."""
    if torch.cuda.is_available():
        import gc

        gc.collect()
        torch.cuda.empty_cache()
