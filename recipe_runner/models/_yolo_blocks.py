"""The import path `SplitC2f` had before models/ became a package per family: kept so old pickles load.

Ultralytics pickles the whole module tree into the trainer's own checkpoints (last.pt/best.pt: the `ema` model),
and a pickle names each class by its module path. A pruned YOLO trained before the move therefore names
`recipe_runner.models._yolo_blocks.SplitC2f`; without this module such a file would no longer load (and
Ultralytics' loader would try to pip-install a package of that name). tests/test_yolo_pickles.py loads one.
New code imports SplitC2f from `recipe_runner.models.yolo`.
"""

from __future__ import annotations

from .yolo.blocks import SplitC2f, replace_c2f, split_c2f

__all__ = ["SplitC2f", "replace_c2f", "split_c2f"]
