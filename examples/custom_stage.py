"""How to add a stage type: BatchNorm recalibration, registered in one place and used from a recipe.

After pruning, BatchNorm running statistics no longer match the narrower layers' outputs;
re-estimating them on a few training batches (no gradient steps) often recovers accuracy for free.

    python examples/custom_stage.py recipes/resnet18_depgraph.yaml
runs that recipe with a `recalibrate` stage added after `prune`, through the normal engine.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field

from recipe_runner.config_base import StageConfig
from recipe_runner.stages import STAGES, StageOutput, StageType


class RecalibrateConfig(StageConfig):
    type: Literal["recalibrate"] = "recalibrate"
    batches: int = Field(8, ge=1, description="training batches used to re-estimate BatchNorm statistics")
    batch: int = Field(32, ge=1)
    imgsz: int = Field(64, ge=16)
    workers: int = 0


def recalibrate(ctx, config: RecalibrateConfig) -> StageOutput:
    import torch

    model = ctx.parent_model
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batches
    model.train()
    with torch.no_grad():
        for i, (images, _) in enumerate(ctx.family._loader(ctx.data, "train", config, shuffle=True, seed=ctx.seed)):
            if i >= config.batches:
                break
            model(images)
    return StageOutput(model=model.eval())


STAGES.register("recalibrate")(
    StageType(RecalibrateConfig, recalibrate, description="re-estimate BatchNorm statistics")
)


def main(recipe_path: str) -> None:
    from recipe_runner.cli import app

    recipe = yaml.safe_load(Path(recipe_path).read_text())
    stages = {}
    for sid, body in recipe["stages"].items():
        stages[sid] = body
        if body["type"] == "prune":  # the next stage's default `from` (the previous stage) becomes recalibrate
            stages["recalibrate"] = {"type": "recalibrate", "from": sid}
    recipe["stages"] = stages
    out = Path(tempfile.mkdtemp()) / Path(recipe_path).name
    out.write_text(yaml.safe_dump(recipe, sort_keys=False))
    app(["run", str(out)])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "recipes/resnet18_depgraph.yaml")
