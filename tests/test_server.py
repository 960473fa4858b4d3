"""Remote tracking through a real `mlflow server` process on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest
import servers
from conftest import cli, stage_runs, write_recipe

from recipe_runner import persistence as T

STAGES = """\
  train:
    type: train
    epochs: 1
  prune:
    type: prune
    method: depgraph
    ratio: 0.3
  finetune:
    type: finetune
    epochs: 1
"""


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    with servers.mlflow_server(root, f"sqlite:///{root / 'server.db'}") as uri:
        yield uri


def test_second_machine_reuses_stages_from_server(mlflow_server: str, workspace: Path, tmp_path_factory):
    recipe = write_recipe(workspace, STAGES, name="remote")
    first = cli("run", recipe, "--set", f"tracking.uri={mlflow_server}")
    assert first.exit_code == 0, first.output
    assert not (workspace / "mlflow.db").exists()  # everything went to the server
    runs = {r.data.tags[T.NODE_ID]: r for r in stage_runs(mlflow_server)}
    assert [r.data.tags[T.ROLE] for r in runs.values()] == ["stage"] * 3

    # A colleague in another directory, with its own copy of the recipe and a changed last stage:
    elsewhere = tmp_path_factory.mktemp("colleague")
    changed = STAGES.replace("type: finetune\n    epochs: 1", "type: finetune\n    epochs: 2")
    copy = write_recipe(elsewhere, changed, name="remote")
    second = cli("run", copy, "--tracking-uri", mlflow_server)
    assert second.exit_code == 0, second.output
    again = {r.data.tags[T.NODE_ID]: r for r in stage_runs(mlflow_server)}
    assert again["train"].data.tags[T.ROLE] == "reused" and again["prune"].data.tags[T.ROLE] == "reused"
    assert again["train"].data.tags[T.REUSED_FROM] == runs["train"].info.run_id
    # the changed finetune ran on prune's checkpoint, downloaded from the server and verified
    finetune = again["finetune"]
    assert finetune.data.tags[T.ROLE] == "stage" and finetune.data.metrics["epochs_trained"] == 2
    assert finetune.data.metrics["macs"] == runs["prune"].data.metrics["macs"]
    assert finetune.data.metrics["params"] == runs["prune"].data.metrics["params"]


def test_dead_server_fails_before_training(workspace: Path):
    recipe = write_recipe(workspace, STAGES)
    result = cli("run", recipe, "--tracking-uri", f"http://127.0.0.1:{servers.free_port()}")
    assert result.exit_code == 1
    assert "cannot reach the MLflow tracking server" in result.output
    assert not (workspace / "mlflow.db").exists()
    assert "[run]" not in result.output  # no stage started
