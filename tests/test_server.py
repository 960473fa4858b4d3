"""Remote tracking through a real `mlflow server` process on 127.0.0.1."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from recipe_runner import tracking as T

from conftest import cli, stage_runs, write_recipe

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "artifacts"),
         "--serve-artifacts", "--workers", "1"],
        cwd=root, stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if requests.get(uri + "/health", timeout=1).ok:
                break
        except requests.RequestException:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start:\n" + (root / "server.log").read_text()[-3000:])
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


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
    assert again["train"].data.tags[T.PREFIX + "reused_from"] == runs["train"].info.run_id
    # the changed finetune ran on prune's checkpoint, downloaded from the server and verified
    finetune = again["finetune"]
    assert finetune.data.tags[T.ROLE] == "stage" and finetune.data.metrics["epochs_trained"] == 2
    assert finetune.data.metrics["macs"] == runs["prune"].data.metrics["macs"]
    assert finetune.data.metrics["params"] == runs["prune"].data.metrics["params"]


def test_dead_server_fails_before_training(workspace: Path):
    recipe = write_recipe(workspace, STAGES)
    result = cli("run", recipe, "--tracking-uri", f"http://127.0.0.1:{_free_port()}")
    assert result.exit_code == 1
    assert "cannot reach the MLflow tracking server" in result.output
    assert not (workspace / "mlflow.db").exists()
    assert "[run]" not in result.output  # no stage started
