"""The interface every model family implements; stages and pruning methods use only this."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from ..timing import timed

# torch is imported where it is used: planning a recipe (and a fully cached re-run) loads the family without it
if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from ..data import DataSource
    from .distill import Distillation
    from .hooks import TrainHook

# `path/to/file.py:Name` or `package.module:Name` (the custom family's source)
CUSTOM_SOURCE = re.compile(r"^(?P<module>[^:]+\.py|[A-Za-z_]\w*(\.[A-Za-z_]\w*)*):(?P<name>[A-Za-z_]\w*)$")
# a torchvision weights name (IMAGENET1K_V1, DEFAULT), as opposed to a file path
WEIGHTS_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


class EvalKnobs(Protocol):
    """What a family reads to evaluate a model (every stage config that evaluates has these keys)."""

    batch: int
    imgsz: int
    workers: int
    device: Any  # cpu | GPU index | cuda:N | mps | list of GPU indices


class TrainKnobs(EvalKnobs, Protocol):
    """What a family's trainer reads from a stage config (config_base.TrainingKnobs and its subclasses)."""

    lr: float
    optimizer: str  # auto | sgd | adam | adamw
    momentum: float
    weight_decay: float
    patience: int  # stop after this many epochs without improvement; 0 = never
    args: dict[str, Any]  # extra trainer arguments the family understands (checked by check_args)


class TrainContext(Protocol):
    """What a family's trainer needs from the running stage (engine.RunningStage implements it)."""

    seed: int
    workdir: Path
    resume_state: dict | None  # the last epoch checkpoint of an unfinished earlier attempt

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def epoch_state_due(self, epoch: int) -> bool: ...
    def save_epoch_state(self, state: dict, epoch: int) -> None: ...
    def progress(self, description: str, total: int) -> Callable[[int], None]: ...


@dataclass(frozen=True)
class ModelRef:
    """The recipe's `model:` with its local files found (absolute paths), bound to the family at plan time."""

    family: str
    source: str  # as written (custom: `file.py:Name` with the file made absolute)
    weights: str | None = None  # an absolute state-dict file, or a torchvision weights name (IMAGENET1K_V1)
    args: dict[str, Any] = field(default_factory=dict)  # custom: the factory's keyword arguments


# The version of the model-description envelope this runner writes and the only one it rebuilds.
DESCRIPTION_FORMAT = 1


class DescriptionError(ValueError):
    """A model description that must not be rebuilt: another family's, or a format this runner does not know.

    Not a checkpoint.CheckpointError: models/__init__ imports this module, and validating a recipe must not reach
    the checkpoint code (import-linter contract)."""


@dataclass
class ModelDescription:
    """A family's describe() output as one versioned envelope, checked by rebuild() before anything is built.

    Like NVIDIA Model Optimizer's `modelopt_state`: the architecture the family builds from plain `fields`, the
    structural `transforms` applied since (YOLO's C2f split, low-rank decompositions), replayed onto the freshly
    built model in order, then the pruned shapes and weights (`attributes`, `state_dict`).

    On disk (stage and epoch checkpoints) it is the flat dict descriptions always were: "family", "format", the
    fields, each transform under its own key, "state_dict", "attributes". So checkpoints in users' stores load
    unchanged, including torchvision ones written before descriptions carried a "format" (they are format 1).
    """

    family: str
    state_dict: dict[str, Any]  # name -> tensor, on the CPU
    attributes: dict[str, dict[str, Any]]  # module name -> plain attributes (what pruning rewrote)
    fields: dict[str, Any] = field(default_factory=dict)  # yolo: yaml, nc, names; torchvision: source, num_classes
    transforms: dict[str, Any] = field(default_factory=dict)  # in the order rebuild replays them
    format: int = DESCRIPTION_FORMAT

    # the on-disk keys that hold a structural transform; a new transform adds its key here
    TRANSFORMS: ClassVar[tuple[str, ...]] = ("split_c2f", "decomposed")
    _ENVELOPE: ClassVar[tuple[str, ...]] = ("family", "format", "state_dict", "attributes")

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "format": self.format,
            **self.fields,
            **self.transforms,
            "state_dict": self.state_dict,
            "attributes": self.attributes,
        }

    @classmethod
    def from_dict(cls, description: Any, family: str) -> ModelDescription:
        """The envelope of a stored description that `family` may rebuild; DescriptionError (one line) if not."""
        if not isinstance(description, dict):
            kind = type(description).__name__
            raise DescriptionError(f"checkpoint: the model description is a {kind}, not a mapping")
        found = description.get("family")
        if found != family:
            raise DescriptionError(
                f"checkpoint: the model description is of family {str(found)[:40]!r}, not "
                f"{family!r}: it cannot be rebuilt as a {family} model"
            )
        # torchvision descriptions written before the envelope had no "format": they are format 1
        version = description.get("format", 1)
        if type(version) is not int or version != DESCRIPTION_FORMAT:
            raise DescriptionError(
                f"checkpoint: model description format {str(version)[:20]!r} is not one this "
                f"recipe-runner rebuilds (format {DESCRIPTION_FORMAT}); written by another version?"
            )
        state_dict, attributes = description.get("state_dict"), description.get("attributes")
        if not isinstance(state_dict, dict) or not isinstance(attributes, dict):
            raise DescriptionError("checkpoint: the model description lacks its 'state_dict' or 'attributes' mapping")
        rest = {k: v for k, v in description.items() if k not in cls._ENVELOPE}
        return cls(
            family=family,
            state_dict=state_dict,
            attributes=attributes,
            format=version,
            fields={k: v for k, v in rest.items() if k not in cls.TRANSFORMS},
            transforms={k: v for k, v in rest.items() if k in cls.TRANSFORMS},
        )


# which epoch's weights a family's train() returns (see ModelFamily.train)
Keep = Literal["best", "last"]


@dataclass
class TrainResult:
    model: nn.Module
    metrics: dict[str, float] = field(default_factory=dict)
    epochs_trained: int = 0  # epochs run in this process (not counting resumed ones)
    last_epoch: int = 0  # the epoch the model is at, counting resumed ones; final metrics are logged at this step
    # evaluate(model, data, knobs) of exactly the returned weights with the same knobs, where the trainer already
    # ran it (its last epoch): the engine need not evaluate the same model again. None: not measured
    evaluation: dict[str, float] | None = None


class ModelFamily(ABC):
    name: str
    primary_metric: str  # the accuracy metric guarded by prune's max_map_drop
    accuracy_metrics: tuple[str, ...]  # what evaluate() returns that measures accuracy (primary included)

    model: ModelRef | None = None  # the recipe's model, weights and arguments (bind)

    def bind(self, model: ModelRef) -> None:
        """Take the recipe's whole `model:` (weights, args), once at plan time before any other call; plain data
        only, so the family still travels to other processes (Ray) by pickle."""
        self.model = model

    def model_notes(self, data: DataSource) -> list[str]:
        """What the user should know, at plan time, about giving this data the model (e.g. a replaced head);
        raise ValueError (config_base.ConfigProblem to name a `model:` key) when the two cannot fit."""
        return []

    def preprocessing(self) -> dict[str, Any]:
        """How images are prepared for the model (recorded with the run, in the recipe lock)."""
        return {}

    @abstractmethod
    def check_source(self, source: str) -> None:
        """Raise ValueError with a clear message if `source` cannot be built (before anything trains); a
        config_base.ConfigProblem names the `model:` key to point at (source, weights, args)."""

    def source_identity(self, source: str) -> str | None:
        """What the cache key records of a local model file, where what the family builds depends on more than
        the file's bytes; None: the file's sha256."""
        return None

    @abstractmethod
    def build(self, source: str, data: DataSource, seed: int) -> nn.Module:
        """The root model: the architecture named by `source`, sized for the data's classes."""

    @abstractmethod
    def train(
        self,
        model: nn.Module,
        data: DataSource,
        knobs: TrainKnobs,
        epochs: int,
        ctx: TrainContext,
        hooks: Sequence[TrainHook] = (),
        keep: Keep = "best",
        distill: Distillation | None = None,
    ) -> TrainResult:
        """Train for `epochs` (resuming from ctx.resume_state if set), saving state through ctx each epoch.

        `distill`: learn from a frozen teacher too (the family's own way); log the distillation and the task loss
        per epoch as train_distill_loss / train_task_loss (yolo: train/distill_loss, train/task_loss). The
        returned model and the saved model states never hold the teacher.

        Whatever `knobs.device` trains on, the returned model and the saved states are on the CPU in fp32
        (see handoff_problems): the engine checks the model at every stage boundary.

        `hooks` run at the points models/hooks.py documents, after the always-on KeepZeros; their
        state is saved in the epoch checkpoints and restored on resume. `keep` picks the returned
        weights: "best" lets a family that tracks a best-fitness epoch return it (yolo: the best EMA,
        Ultralytics' best.pt); "last" always returns the last epoch's (what a sparsity penalty built up).
        """

    @abstractmethod
    def evaluate(self, model: nn.Module, data: DataSource, knobs: EvalKnobs) -> dict[str, float]:
        """Accuracy metrics on the validation split; must include `primary_metric`."""

    @abstractmethod
    def example_inputs(self, model: nn.Module, imgsz: int) -> torch.Tensor: ...

    @abstractmethod
    def output_layers(self, model: nn.Module) -> list[nn.Module]:
        """Layers that must keep their output size (the classifier or detection head)."""

    def head_outputs(self, model: nn.Module) -> list[nn.Module]:
        """The layers that must keep their width when a prune stage also prunes the head (`prune_head: true`):
        those that give the model's outputs. By default the whole head, as `output_layers`."""
        return self.output_layers(model)

    @abstractmethod
    def describe(self, model: nn.Module) -> dict[str, Any]:
        """Plain data + tensors that rebuild the model (pruned shapes included) without unpickling code: a
        ModelDescription's to_dict()."""

    @abstractmethod
    def rebuild(self, description: dict[str, Any]) -> nn.Module:
        """The model a describe() output describes; ModelDescription.from_dict(description, self.name) first, so
        another family's description or an unknown format is a DescriptionError, never a misbuilt model."""

    @abstractmethod
    def export_onnx(self, model: nn.Module, data: DataSource, config: Any, path: Path) -> dict[str, float]:
        """Write ONNX to `path`, compare ONNX Runtime with PyTorch, and return check metrics."""

    @abstractmethod
    def write_onnx(self, model: nn.Module, path: Path, imgsz: int, opset: int = 17) -> Path:
        """Write FP32 ONNX with a dynamic batch axis (quantize and benchmark start from this file), no checks."""

    @abstractmethod
    def calibration_batches(
        self, data: DataSource, imgsz: int, count: int, seed: int = 0, split: str = "train"
    ) -> np.ndarray:
        """A seeded sample of `count` images of `split` (train: calibration never sees validation images),
        preprocessed as the ONNX file expects them: float32, N x 3 x S x S with S = file_imgsz(imgsz)."""

    def file_imgsz(self, imgsz: int) -> int:
        """The input size write_onnx(imgsz) gives the file (YOLO rounds up to its stride)."""
        return imgsz

    @abstractmethod
    def evaluate_file(self, path: Path, data: DataSource, knobs: EvalKnobs) -> dict[str, float]:
        """The family's accuracy metrics (same names as evaluate()) of an ONNX file, run by ONNX Runtime."""

    def float_nodes(self, model: Any) -> list[str]:
        """ONNX node names (of an onnx.ModelProto written by write_onnx) that INT8 quantization must keep in float
        because one shared scale would destroy them (the YOLO head's decode). Default: none."""
        return []

    bench_imgsz: int = 224  # the benchmark's default second input size (the family's usual deployment size)
    # module-name parts whose layers quantization-aware training leaves float (those float_nodes keeps float)
    qat_float_layers: tuple[str, ...] = ()
    max_devices: int = 1  # how many GPUs one stage may train on (a `device:` list; more than 1: DDP)

    def check_args(self, args: dict[str, Any]) -> None:
        """Raise ValueError for `args:` this family would not use (checked before anything runs)."""
        if args:
            raise ValueError(
                f"the {self.name} family takes no extra trainer arguments (got {', '.join(map(str, args))})"
            )

    def check_device(self, device: Any) -> None:
        """Raise ValueError if this machine or family cannot honour `device:` (checked before anything runs)."""
        devices = list(device) if isinstance(device, (list, tuple)) else [device]
        if len(devices) > self.max_devices:
            raise ValueError(f"the {self.name} family trains on one device; got a list of {len(devices)}")
        for d in devices:
            if str(d) == "cpu":
                continue
            import torch

            if str(d) == "mps":
                if not torch.backends.mps.is_available():
                    raise ValueError("device mps is not available on this machine; use device: cpu")
                continue
            index = str(d).removeprefix("cuda:")
            if not index.isdigit():
                raise ValueError(f"device '{d}' is not cpu, mps, a GPU index or cuda:N")
            if not torch.cuda.is_available():
                raise ValueError(f"device {d} needs a CUDA GPU and this machine has none; use device: cpu")
            if int(index) >= torch.cuda.device_count():
                raise ValueError(f"device {d}: this machine has {torch.cuda.device_count()} GPU(s)")

    def skeleton(self, source: str) -> nn.Module:
        """The architecture `source` names, weights meaningless, for plan-time checks of its structure (e.g. does it
        have BatchNorm): no data needed, and cheaper than build() where the family can (meta tensors)."""
        raise NotImplementedError(f"{self.name} cannot build a skeleton for plan-time checks")

    def prepare_for_pruning(self, model: nn.Module) -> nn.Module:
        """Swap modules dependency-graph pruning cannot handle for equivalent ones (default: none)."""
        return model

    def accumulate_gradients(
        self,
        model: nn.Module,
        data: DataSource,
        knobs: TrainKnobs,
        batches: int,
        after_backward: Callable[[], None] | None = None,
    ) -> None:
        """Add the training loss's gradients over `batches` batches into `.grad` (for gradient-based importance);
        `after_backward`, if given, runs after each batch's backward pass."""
        raise NotImplementedError(f"{self.name} does not support gradient-based importance")

    @timed("latency")
    def latency(self, model: nn.Module, imgsz: int) -> float:
        return median_latency_ms(model, self.example_inputs(model, imgsz))

    @timed("MACs")
    def cost(self, model: nn.Module, imgsz: int) -> dict[str, float]:
        """MACs and parameter count at `imgsz`, through torch-pruning's counter."""
        import torch
        import torch_pruning as tp

        was_training = model.training
        model.eval()
        example = self.example_inputs(model, imgsz)
        with torch.no_grad():
            macs, params = tp.utils.count_ops_and_params(model, example)
        model.train(was_training)
        return {"macs": float(macs), "params": float(params)}


def torch_device(device: Any) -> torch.device:
    """The recipe's `device:` (cpu | 0 | cuda:0 | mps | [0]) as a torch.device."""
    import torch

    if isinstance(device, (list, tuple)):
        device = device[0] if device else "cpu"
    text = str(device)
    if text in ("cpu", "mps") or text.startswith("cuda"):
        return torch.device(text)
    return torch.device(f"cuda:{text}")


def median_latency_ms(model: nn.Module, example: torch.Tensor, runs: int = 10) -> float:
    """CPU latency of one forward pass at batch 1 (median of `runs`, after one warm-up)."""
    import time

    import torch

    model.eval()
    times = []
    with torch.no_grad():
        model(example)
        for _ in range(runs):
            start = time.perf_counter()
            model(example)
            times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]


def handoff_problems(model: nn.Module) -> list[str]:
    """How `model` breaks the contract between stages: every parameter and buffer on the CPU and contiguous, every
    floating one in fp32. Stages hand models over on the CPU because cost, latency, pruning and export build CPU
    inputs, and each trainer or evaluator moves a copy where its `device:` says. Empty: the model is fine."""
    import torch

    problems: dict[str, list[str]] = {}
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, tensor in tensors:
        if tensor.device.type != "cpu":
            problems.setdefault(f"on {tensor.device}", []).append(name)
        elif tensor.is_floating_point() and tensor.dtype != torch.float32:
            problems.setdefault(f"in {tensor.dtype}", []).append(name)
        elif not tensor.is_contiguous():  # channels_last from a GPU trainer: CPU latency would depend on it
            problems.setdefault("not contiguous (channels_last?)", []).append(name)
    return [f"{len(names)} tensor(s) {where} (e.g. {names[0]})" for where, names in problems.items()]
