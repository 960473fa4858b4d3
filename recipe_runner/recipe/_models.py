"""The recipe format, version 1, as pydantic models (the stage configs come from the stage registry)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from ..config_base import StrictModel
from ..models import CUSTOM_SOURCE, FAMILIES, WEIGHTS_NAME
from ..registry import did_you_mean
from ._search import SearchConfig

_TAKES_WEIGHTS = ("torchvision", "custom")


class ModelSpec(StrictModel):
    """Long form of `model:`. The short form is a string whose family is inferred."""

    family: str = Field(description="model family: " + ", ".join(FAMILIES.names()))
    source: str = Field(
        min_length=1,
        description="architecture name, Ultralytics yaml, a local .pt, or for the custom "
        "family path/to/file.py:Name or package.module:Name",
    )
    weights: str | None = Field(
        None,
        min_length=1,
        description="torchvision and custom: a local state-dict file "
        "(relative to the working directory, else the recipe), or a torchvision weights "
        "name such as IMAGENET1K_V1 taken from the local torch hub cache",
    )
    args: dict[str, Any] = Field(default_factory=dict, description="custom: keyword arguments of the source's factory")
    task: Literal["classify"] = Field("classify", description="custom: what the module does (classify)")

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        if value not in FAMILIES:
            raise ValueError(f"unknown model family '{value}'{did_you_mean(value, FAMILIES.names())}")
        return value

    @field_validator("source")
    @classmethod
    def _custom_source(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("family") == "custom" and not CUSTOM_SOURCE.fullmatch(value):
            raise ValueError(
                f"custom source '{value}' must be path/to/file.py:Name or package.module:Name "
                "(a class or factory returning a torch.nn.Module)"
            )
        return value

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: str | None, info: ValidationInfo) -> str | None:
        family = info.data.get("family")
        if value is not None and family not in _TAKES_WEIGHTS:
            raise ValueError(
                f"the {family} family takes no 'weights' (a trained YOLO model is its source: model: path/to/best.pt)"
            )
        if value is not None and family == "custom" and WEIGHTS_NAME.fullmatch(value):
            raise ValueError(
                f"custom weights '{value}' must be a local file (a torchvision weights name "
                "fits only the torchvision family)"
            )
        return value

    @field_validator("args", "task")
    @classmethod
    def _custom_only(cls, value: Any, info: ValidationInfo) -> Any:
        family = info.data.get("family")
        if (
            family is not None
            and family != "custom"
            and value != cls.model_fields[info.field_name].get_default(call_default_factory=True)
        ):
            raise ValueError(f"'{info.field_name}' is a key of the custom family only (family: {family})")
        return value


class TrackingConfig(StrictModel):
    uri: str | None = Field(
        None, description="MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here"
    )
    experiment: str | None = Field(None, min_length=1, description="MLflow experiment; default: the recipe name")


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")  # recipe names (the message says it in words)


class RecipeHeader(StrictModel):
    """Everything but the stage bodies, which are validated one by one against their stage type."""

    version: Literal[1] = Field(description="recipe format version")
    name: str = Field(
        min_length=1,
        max_length=200,
        json_schema_extra={"pattern": NAME.pattern},
        description="letters, digits, '.', '_' and '-'; the MLflow experiment by default",
    )
    description: str = ""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    model: str | ModelSpec = Field(description="e.g. resnet18, yolov8n.yaml, or {family, source}")
    data: str = Field(min_length=1, description="builtin:<name>[?options] or a dataset path")
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="keys inherited by every stage that accepts them"
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    search: SearchConfig | None = Field(None, description="search stage keys written {search: ...} toward objectives")
    # bodies and ids are checked stage by stage, each at its own line (see _load._Validator.stages)
    stages: dict[str, Any] = Field(min_length=1, description="stage id -> stage; order is file order")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.fullmatch(value):
            raise ValueError(
                f"recipe name '{value}' must start with a letter or digit and use only letters, digits, "
                "'.', '_' and '-'"
            )
        return value
