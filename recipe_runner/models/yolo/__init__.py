"""The `yolo` family as a package: what the rest of the runner (and a user's code) may use of it.

Modules, in the order the family's own sections use them:
- build: `architecture` (the allow-list a checkpoint's architecture must pass), `environment` (Ultralytics offline
  and quiet, dataset yamls resolved), `stride`;
- train: `training` (the DetectionTrainer subclass), `amp` (the offline AMP check), `workers` (multi-GPU DDP);
- structure: `blocks` (SplitC2f, the C2f that dependency-graph pruning can follow);
- export: `export` (Ultralytics' ONNX exporter, then the checks of the file);
and `family` (YoloFamily) over them.

Importing this package imports neither torch nor Ultralytics (planning a cached recipe stays light): SplitC2f,
whose module imports torch, is resolved on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .architecture import ArchitectureError, check_architecture, check_description
from .family import YoloFamily

if TYPE_CHECKING:
    from .blocks import SplitC2f

__all__ = ["ArchitectureError", "SplitC2f", "YoloFamily", "check_architecture", "check_description"]


def __getattr__(name: str) -> Any:
    # PEP 562: torch is imported only by whoever asks for the block
    if name == "SplitC2f":
        from .blocks import SplitC2f

        return SplitC2f
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
