"""The contract between the engine and a stage type.

A stage type is a pydantic config plus a function `run(ctx, config) -> StageOutput`.
The engine owns tracking, caching and checkpoints; a stage only transforms a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from ..registry import Registry


class StageContext(Protocol):
    """What the engine hands a running stage (implemented by engine.RunningStage)."""

    stage_id: str
    family: Any  # models.base.ModelFamily
    data: Any  # data.DataSource
    seed: int
    model_source: str  # the recipe's model: source, for root stages
    workdir: Path
    parent_model: Any  # torch.nn.Module or None for a root stage
    resume_state: Optional[dict]  # the last epoch checkpoint of an unfinished earlier attempt

    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None) -> None: ...
    def save_epoch_state(self, state: dict, epoch: int) -> None: ...
    def log_artifact(self, path: Path, folder: Optional[str] = None) -> None: ...
    def progress(self, description: str, total: int) -> Callable[[int], None]: ...
    def log_plot(self, figure: Any, name: str) -> None: ...
    def nested(self, prefix: str) -> "StageContext": ...
    def warn(self, message: str) -> None: ...  # shown on the console and kept as a tag on the stage's run


@dataclass
class StageOutput:
    model: Any
    metrics: dict[str, float] = field(default_factory=dict)
    epochs_trained: int = 0
    final_step: int = 0  # MLflow step of the final evaluation (the last epoch, for training stages)
    evaluate_output: bool = True  # the engine adds the family's standard evaluation


@dataclass(frozen=True)
class StageType:
    config: Any  # a StageConfig subclass, or an Annotated union of them
    run: Callable[[StageContext, Any], StageOutput]
    needs_parent: bool = True
    description: str = ""


STAGES: Registry[StageType] = Registry("stage type")
