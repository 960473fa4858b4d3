"""The `torchvision` family as a package: the family (`family`), the small CNNs it adds to torchvision's
models (`small_cnn`) and how it reads weights (`weights`: a state-dict file or torchvision's own weights)."""

from __future__ import annotations

from .family import TorchvisionFamily
from .small_cnn import SMALL_MODELS

__all__ = ["SMALL_MODELS", "TorchvisionFamily"]
