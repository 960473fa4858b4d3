"""Pydantic building blocks shared by the stage configs (no torch here: validation stays fast)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Device = Literal["cpu"] | int | str | list[int]


class StrictModel(BaseModel):
    """Unknown keys are errors, and `from` may be written as in YAML."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ConfigProblem(ValueError):
    """A stage config this recipe's model cannot honour, found before anything runs (a stage type's `check`);
    `key` names the config key to point at."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class Resources(StrictModel):
    """What one stage's Ray task reserves (--executor ray); the sequential executor ignores it."""

    cpus: float | None = Field(None, gt=0, description="CPUs to reserve (default 1)")
    gpus: float | None = Field(None, ge=0, description="GPUs to reserve (default: 1 when device is a GPU, else 0)")


class Distill(StrictModel):
    """Knowledge distillation from another stage's model while this stage trains."""

    teacher: str = Field(
        description="the stage whose model teaches: any stage giving a PyTorch model that is not "
        "this stage or one of its descendants (its cache key joins this stage's key)"
    )
    weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="share of the distillation loss: loss = (1 - weight) * task + "
        "weight * distillation (yolo: see the README)",
    )
    temperature: float = Field(
        4.0, gt=0, le=100, description="softmax temperature of the logits (classifiers; Hinton KD, scaled by T^2)"
    )


# keys naming other stages (graph inputs): out of the cache key at their default, so older keys stay as they were
INPUT_KEYS: frozenset[str] = frozenset({"distill"})


class StageConfig(StrictModel):
    """Keys every stage has. `from` names the parent stage (default: the previous stage in the file)."""

    type: str
    from_: str | None = Field(
        None, alias="from", description="parent stage id; default: the previous stage in the file"
    )
    device: Device = Field(
        "cpu",
        description="cpu, a GPU index (0), cuda:N, mps, or a list of GPU indices ([0, 1]): "
        "the yolo family trains on all of them with DDP (validation uses the "
        "first); the torchvision family takes one device",
    )
    resources: Resources | None = Field(
        None,
        description="with --executor ray: what this stage's task reserves "
        "(cpus, gpus); default: 1 GPU for a GPU device, else 1 CPU",
    )

    # Keys that do not change a stage's result, so they stay out of its cache key.
    NOT_IDENTITY: ClassVar[frozenset[str]] = frozenset({"from_", "device", "workers", "checkpoint_every", "resources"})
    # Keys added to an existing stage type later: at their default they stay out of the cache key, so adding a
    # key never changes the keys (and the reuse) of stages recorded before it existed. List new keys here.
    KEY_ONLY_WHEN_SET: ClassVar[frozenset[str]] = frozenset()

    def identity(self) -> dict[str, Any]:
        """The config as it enters the cache key."""
        dump = self.model_dump(mode="json", by_alias=True, exclude=set(self.NOT_IDENTITY))
        fields = type(self).model_fields
        for name in self.KEY_ONLY_WHEN_SET | INPUT_KEYS:
            info = fields.get(name)
            if info is not None and getattr(self, name) == info.get_default(call_default_factory=True):
                dump.pop(info.alias or name, None)
        # the stage an input names enters the key as that stage's own cache key (graph.py), not by its id: renaming
        # the teacher stage keeps the student's key
        if isinstance(dump.get("distill"), dict):
            dump["distill"].pop("teacher", None)
        return dump

    def inputs(self) -> dict[str, str]:
        """Extra graph inputs besides the parent: role -> the stage id it reads (a distillation teacher)."""
        return {}

    def input_location(self, role: str) -> tuple[str, ...]:
        """Where the recipe names input `role`, below the stage (for located errors): distill.teacher."""
        return ("distill", role)

    def input_takes(self, role: str) -> frozenset[str]:
        """What input `role` must give: a PyTorch model (a teacher), or also a file (a benchmark's baseline)."""
        return frozenset({"model"})

    @model_validator(mode="after")
    def _gpu_list_is_usable(self) -> StageConfig:
        if isinstance(self.device, list):
            if not self.device:
                raise ValueError("device: an empty list; write cpu, a GPU index, or a list of GPU indices")
            if len(set(self.device)) != len(self.device):
                raise ValueError(f"device: {self.device} names a GPU twice")
            # a Ray task sees only the GPUs it reserved
            if (
                self.resources is not None
                and self.resources.gpus is not None
                and self.resources.gpus < len(self.device)
            ):
                raise ValueError(
                    f"resources.gpus {self.resources.gpus:g} is fewer than the {len(self.device)} GPUs "
                    f"device: {self.device} trains on"
                )
        return self


class TrainingKnobs(StrictModel):
    """How a model is (re)trained; used by train, finetune and the fine-tuning inside prune."""

    batch: int = Field(16, ge=1, description="images per batch")
    imgsz: int = Field(64, ge=16, le=4096, description="input image size in pixels")
    lr: float = Field(0.01, gt=0, le=10, description="initial learning rate")
    optimizer: Literal["auto", "sgd", "adam", "adamw"] = Field("auto", description="auto: the family's default")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, lt=1)
    workers: int = Field(0, ge=0, le=64, description="data-loader worker processes")
    checkpoint_every: Literal["auto"] | Annotated[int, Field(ge=1, le=10000)] = Field(
        "auto",
        description="epochs between resumable epoch checkpoints written to the tracking store; auto: every "
        "epoch while writing them costs under 3% of the training time, else as often as that "
        "allows (not part of the cache key)",
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="extra trainer arguments passed through to the family (e.g. Ultralytics train args)",
    )
    distill: Distill | None = Field(
        None, description="learn from a teacher stage's model too: {teacher: <stage>, weight: 0.5, temperature: 4}"
    )

    def inputs(self) -> dict[str, str]:
        return {"teacher": self.distill.teacher} if self.distill is not None else {}


class TrainingStageConfig(StageConfig, TrainingKnobs):
    """A stage that trains (train, finetune, sparse-train, prune): its batch is split over its devices."""

    inputs = TrainingKnobs.inputs  # StageConfig's (none) comes first in the bases

    @model_validator(mode="after")
    def _batch_covers_devices(self) -> TrainingStageConfig:
        # DDP gives each GPU batch // len(device) images; zero would fail only once the workers start
        if isinstance(self.device, list) and self.batch < len(self.device):
            raise ValueError(
                f"batch {self.batch} is split over {len(self.device)} GPUs (device: {self.device}): "
                f"use batch >= {len(self.device)}, ideally a multiple of it"
            )
        return self
