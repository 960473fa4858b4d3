"""The contract between the engine and a stage type.

A stage type is a pydantic config plus a function `run(ctx, config) -> StageOutput`.
The engine owns tracking, caching and checkpoints; a stage only transforms its input.

What flows along an edge is either a PyTorch module ("model": checkpointed by the engine
as plain data) or a file ("file": an ONNX or INT8 model the stage wrote; the engine
uploads it with its sha256 and writes no PyTorch checkpoint for it). A stage type says
which it gives and which it takes, and the recipe loader refuses an edge that does not
fit (e.g. a prune stage `from:` a quantize stage) with the location of `from:`. A stage that
only measures (evaluate, benchmark) gives "parent": it hands on what it was given, so it may
sit anywhere in a chain (quantize -> benchmark -> evaluate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..registry import Registry

if TYPE_CHECKING:
    from ..models import Distillation


class StageContext(Protocol):
    """What the engine hands a running stage (implemented by engine.RunningStage)."""

    stage_id: str
    family: Any  # models.base.ModelFamily
    data: Any  # data.DataSource
    seed: int
    model_source: str  # the recipe's model: source, for root stages
    workdir: Path
    parent_model: Any  # torch.nn.Module (for a root stage: the model as given by `model:`), or None for a file
    parent_file: Path | None  # the parent's output file (verified by sha256), when it gives a file
    parent_metrics: dict[str, float]  # what the parent's run logged (for "before vs after" metrics)
    parent_cache_key: str  # the parent stage's cache key ("" for a root stage): names what its output is
    resume_state: dict | None  # the last epoch checkpoint of an unfinished earlier attempt

    def input_model(self, role: str) -> Any: ...  # a frozen copy of an input stage's model (role "teacher")
    def input_gives(self, role: str) -> str: ...  # "model" or "file": what the input stage `role` gives
    def input_file(self, role: str) -> Path: ...  # an input stage's verified output file (role "baseline")
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def save_epoch_state(self, state: dict, epoch: int) -> None: ...
    def log_artifact(self, path: Path, folder: str | None = None) -> None: ...
    def progress(self, description: str, total: int) -> Callable[[int], None]: ...
    def log_plot(self, figure: Any, name: str) -> None: ...
    def nested(self, prefix: str) -> StageContext: ...
    def warn(self, message: str) -> None: ...  # shown on the console and kept as a tag on the stage's run


@dataclass
class StageOutput:
    model: Any = None  # the output module, for stage types that give "model"
    metrics: dict[str, float] = field(default_factory=dict)
    epochs_trained: int = 0
    final_step: int = 0  # MLflow step of the final evaluation (the last epoch, for training stages)
    evaluate_output: bool = True  # the engine adds the family's standard evaluation (modules only)
    # family.evaluate(model, data, this stage's config) of exactly the output model, where the stage already has
    # it: the engine then adds only cost, latency and sparsity (no second pass over the validation set)
    evaluation: dict[str, float] | None = None
    file: Path | None = None  # the output file, for stage types that give "file"


Kind = Literal["model", "file", "parent"]  # "parent": whatever the stage's parent gives (passed through)


@dataclass(frozen=True)
class StageType:
    config: Any  # a StageConfig subclass, or an Annotated union of them
    run: Callable[[StageContext, Any], StageOutput]
    # True: the stage cannot be a recipe's first stage. By default a first stage's parent is the model as given
    # by `model:` (built, or loaded with its weights, by the family), so any stage that takes a model may start
    needs_parent: bool = False
    description: str = ""
    gives: Kind = "model"  # what the stage hands its children
    takes: frozenset[str] = frozenset({"model"})  # what it accepts from its parent
    # run by the planner before anything runs: (config, skeleton) -> None, raising config_base.ConfigProblem for a
    # config this model cannot honour; `skeleton()` builds the recipe's architecture (cheaply, at most once)
    check: Callable[[Any, Callable[[], Any]], None] | None = None
    # gives="file": config -> the suffix of the file it writes (.onnx, .openvino). A file fetched from the store is
    # run under a name the runner gives it from this suffix, never under the name a (writable) tag records
    output_suffix: Callable[[Any], str] | None = None


def distillation(ctx: StageContext, config: Any) -> Distillation | None:
    """What family.train needs for the config's `distill:` (the teacher loaded and frozen), or None without it."""
    from ..models import Distillation

    spec = config.distill
    if spec is None:
        return None
    return Distillation(ctx.input_model("teacher"), spec.weight, spec.temperature)


def output_kind(stage_types: list[str]) -> str:
    """What the last of a chain of stage types (root first) hands its children: "model" or "file"."""
    kind = "model"
    for name in stage_types:
        gives = STAGES.get(name).gives
        kind = kind if gives == "parent" else gives
    return kind


def file_metrics(ctx: StageContext, measured: dict[str, float], prefix: str) -> dict[str, float]:
    """A file stage's metrics under the family's usual names, so its run lines up with the others in MLflow:
    the file's accuracy (measured as prefix + name), the parent's as parent_ + name, and the parent's MACs and
    params (a file of the same architecture has the same)."""
    names = ctx.family.accuracy_metrics
    out = {k[len(prefix) :]: v for k, v in measured.items() if k.startswith(prefix) and k[len(prefix) :] in names}
    out.update({f"parent_{k}": v for k, v in ctx.parent_metrics.items() if k in names})
    out.update({k: v for k, v in ctx.parent_metrics.items() if k in ("macs", "params", "gflops")})
    return out


STAGES: Registry[StageType] = Registry("stage type")
