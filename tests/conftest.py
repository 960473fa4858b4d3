"""Shared fixtures: every test gets its own working directory, dataset cache and MLflow store."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recipe_runner.cli import app

TINY_CLS = """\
version: 1
name: {name}
seed: 0
model: lenet
data: builtin:shapes-cls?train=64&val=32&imgsz=32
defaults:
  imgsz: 32
  batch: 16
stages:
{stages}
"""


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cwd with a local sqlite MLflow store and a private dataset cache."""
    cache = tmp_path.parent / "rr-cache"  # shared by the tests of one session: datasets are deterministic
    monkeypatch.setenv("RECIPE_RUNNER_CACHE", str(cache))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_recipe(folder: Path, stages: str, name: str = "tiny", filename: str = "recipe.yaml") -> Path:
    path = folder / filename
    path.write_text(TINY_CLS.format(name=name, stages=stages))
    return path


def cli(*args: str):
    """Run the `recipe` CLI in-process; returns the click Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def count_runs(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        try:
            return con.execute("select count(*) from runs").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def stage_runs(uri: str, recipe_name: str | None = None) -> list:
    """All child runs of the newest recipe run, as MLflow Run objects, in start order."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(
        experiments, "tags.`recipe_runner.role` = 'recipe'", order_by=["attributes.start_time DESC"]
    )
    parent = parents[0]
    children = client.search_runs(
        experiments, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", order_by=["attributes.start_time ASC"]
    )
    return children


def local_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# the YOLO tests' dataset: 16 train and 8 val images at 64 px
TINY_DATA = "builtin:shapes?train=16&val=8&imgsz=64"


@pytest.fixture(scope="module")
def family():
    """The yolo family (the YOLO test modules' `family`)."""
    from recipe_runner.models.yolo import YoloFamily

    return YoloFamily()


@pytest.fixture
def tiny_data(workspace: Path):
    from recipe_runner.data import resolve_data

    return resolve_data(TINY_DATA, "detect")


class RecordingContext:
    """The parts of the engine's RunningStage a family's train() uses, recording what it is given."""

    def __init__(self, workdir: Path, resume_state=None):
        self.workdir, self.resume_state, self.seed = workdir, resume_state, 0
        self.states: list[dict] = []
        self.logged: list[tuple] = []

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))

    def epoch_state_due(self, epoch):
        return True

    def save_epoch_state(self, state, epoch):
        import torch

        path = self.workdir / f"state{epoch}.pt"
        torch.save(state, path)
        self.states.append(torch.load(path, weights_only=True))  # what the engine will hand back on resume

    def progress(self, description, total):
        return lambda n: None


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL cluster on loopback for the whole session (tests/servers.py); skipped, with the reason,
    where PostgreSQL is not installed or the dev extra's driver is missing."""
    from servers import NO_POSTGRES, postgres_bin, postgres_cluster

    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip(NO_POSTGRES)
    pytest.importorskip("psycopg2", reason="the dev extra is not installed (no psycopg2): pip install -e '.[dev]'")
    with postgres_cluster(bin_dir) as cluster:
        yield cluster
