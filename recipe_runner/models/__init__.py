"""Model families behind one interface, registered by name.

Entries are light (a name, which `model:` strings they claim, and where the
implementation lives) so that recipe validation never imports torch.

Layout: a package per family (`yolo/`, `torchvision/`; `custom.py` builds on torchvision's), and what the
families share: the interface and the description envelope (`base.py`), training hooks (`hooks.py`), the
pruned-shape snapshot (`_shapes.py`), distillation losses (`distill.py`) and the low-rank layers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ..registry import Registry
from .base import CUSTOM_SOURCE, WEIGHTS_NAME, DescriptionError, ModelDescription, ModelRef, handoff_problems
from .distill import Distillation

__all__ = [
    "CUSTOM_SOURCE",
    "FAMILIES",
    "WEIGHTS_NAME",
    "DescriptionError",
    "Distillation",
    "FamilyEntry",
    "ModelDescription",
    "ModelRef",
    "family_for",
    "handoff_problems",
]


@dataclass(frozen=True)
class FamilyEntry:
    claims: Callable[[str], bool]  # does the short form `model: <source>` belong to this family?
    implementation: str  # "module:Class", imported only when a recipe runs
    task: str  # "classify" | "detect": which datasets fit

    def load(self):
        module, _, cls = self.implementation.partition(":")
        return getattr(importlib.import_module(module, __name__), cls)()


FAMILIES: Registry[FamilyEntry] = Registry("model family")


def _is_ultralytics_source(source: str) -> bool:
    return source.lower().endswith((".yaml", ".yml", ".pt"))


def _is_custom_source(source: str) -> bool:
    """`file.py:Name` or `package.module:Name`: a user's own module (no torchvision or Ultralytics name has a ':')."""
    return ":" in source and not _is_ultralytics_source(source)


FAMILIES.register("yolo")(FamilyEntry(_is_ultralytics_source, ".yolo:YoloFamily", "detect"))
FAMILIES.register("torchvision")(
    FamilyEntry(
        lambda s: not _is_ultralytics_source(s) and not _is_custom_source(s),
        ".torchvision:TorchvisionFamily",
        "classify",
    )
)
FAMILIES.register("custom")(FamilyEntry(_is_custom_source, ".custom:CustomFamily", "classify"))


def family_for(source: str) -> str:
    """The family that claims a short-form `model:` string (first registered wins)."""
    for name, entry in FAMILIES.items():
        if entry.claims(source):
            return name
    raise KeyError(f"no model family recognises '{source}'")
