"""Every stage run records the versions that made it; plan and run say when a reused stage was made by others."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from conftest import cli, local_uri, stage_runs, write_recipe
from mlflow.tracking import MlflowClient

from recipe_runner import persistence as T
from recipe_runner.persistence import versions as V


def by_node(runs) -> dict:
    return {r.data.tags[T.NODE_ID]: r for r in runs}


STAGES = """\
  train:
    type: train
    epochs: 1
  check:
    type: evaluate
"""


def test_stage_runs_carry_versions_and_plan_notes_a_reused_stage_made_by_others(workspace: Path):
    recipe = write_recipe(workspace, STAGES)
    assert cli("run", recipe).exit_code == 0
    uri = local_uri(workspace)
    runs = by_node(stage_runs(uri))
    tags = runs["train"].data.tags
    for package in ("torch", "torch-pruning", "onnxruntime", "recipe-runner"):
        assert tags[T.VERSION_PREFIX + package] == metadata.version(package), package
    import ultralytics

    assert tags[T.VERSION_PREFIX + "ultralytics"] == ultralytics.__version__
    assert tags.get(T.VERSION_PREFIX + V.COMMIT) == V.runner_commit() and V.runner_commit()  # a git checkout here

    client = MlflowClient(uri)
    lock = Path(client.download_artifacts(tags["mlflow.parentRunId"], "recipe/recipe.lock.json", str(workspace / "dl")))
    lock = json.loads(lock.read_text())
    assert lock["runner_git_commit"] == V.runner_commit() and lock["versions"]["torch"] == metadata.version("torch")

    result = cli("plan", recipe)
    assert result.exit_code == 0 and "note:" not in result.output  # same versions: nothing to say

    client.set_tag(runs["train"].info.run_id, T.VERSION_PREFIX + "torch", "2.0.0")
    result = cli("plan", recipe)
    assert result.exit_code == 0
    installed = metadata.version("torch")
    assert f"note: train would be reused from a run made with torch 2.0.0 (installed {installed})" in result.output
    assert "note: check" not in result.output

    result = cli("run", recipe)
    assert result.exit_code == 0
    assert f"made with torch 2.0.0 (installed {installed})" in result.output
    reused = by_node(stage_runs(uri))["train"]
    assert reused.data.tags[T.VERSION_PREFIX + "torch"] == "2.0.0"  # the reuse record keeps what made the model
