"""A stage's final evaluation is not run twice: where the trainer (or prune's last step) already evaluated exactly
the output weights with the stage's config, the engine logs those numbers, and they equal a fresh evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli, local_uri, stage_runs, write_recipe

from recipe_runner import persistence as T
from recipe_runner import timing
from recipe_runner.data import resolve_data
from recipe_runner.models.torchvision import TorchvisionFamily
from recipe_runner.persistence import load_checkpoint
from recipe_runner.stages.train import TrainConfig

STAGES = """\
  train: {type: train, epochs: 2}
  prune: {type: prune, method: depgraph, ratio: 0.3, steps: 1, finetune_epochs: 1}
"""


def test_final_evaluations_reuse_the_last_measurement_and_match_a_fresh_one(workspace: Path, monkeypatch):
    monkeypatch.setattr(timing, "_totals", type(timing._totals)(float))
    monkeypatch.setattr(timing, "_counts", type(timing._counts)(int))
    out = workspace / "timings.json"
    monkeypatch.setenv(timing.ENV, str(out))
    recipe = write_recipe(workspace, STAGES.rstrip("\n"))
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    # train: one per epoch (2); prune: before pruning, after pruning, the fine-tuning epoch (3); no final passes
    assert json.loads(out.read_text())["evaluations"]["calls"] == 5

    family = TorchvisionFamily()
    data = resolve_data("builtin:shapes-cls?train=64&val=32&imgsz=32", "classify")
    client_uri = local_uri(workspace)
    for run in stage_runs(client_uri):
        path = Path(T.Tracker(client_uri, "tiny").download(run.info.run_id, T.CHECKPOINT_ARTIFACT, workspace / "dl"))
        model = family.rebuild(load_checkpoint(path, run.data.tags[T.CHECKPOINT_SHA])["model"])
        fresh = family.evaluate(model, data, TrainConfig(imgsz=32, batch=16))
        assert run.data.metrics["top1"] == pytest.approx(fresh["top1"], abs=1e-9)
        assert run.data.metrics["val_loss"] == pytest.approx(fresh["val_loss"], rel=1e-5)
        assert "macs" in run.data.metrics and "latency_ms" in run.data.metrics  # the rest is still measured
