"""A stage killed mid-training (SIGKILL) resumes from its last epoch checkpoint on the next run."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from recipe_runner import tracking as T

from conftest import cli, local_uri, stage_runs

RECIPE = """\
version: 1
name: resume
model: lenet
data: builtin:shapes-cls?train=768&val=32&imgsz=32
defaults: {imgsz: 32, batch: 16}
stages:
  train:
    type: train
    epochs: 8
  finetune:
    type: finetune
    epochs: 1
"""


def _epoch_tag(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as con:
            row = con.execute("select max(cast(value as integer)) from tags where key = ?", (T.EPOCH,)).fetchone()
            return int(row[0] or 0)
    except sqlite3.Error:
        return 0


def test_killed_training_resumes_from_epoch_checkpoint(workspace: Path):
    recipe = workspace / "recipe.yaml"
    recipe.write_text(RECIPE)
    db = workspace / "mlflow.db"
    proc = subprocess.Popen([sys.executable, "-m", "recipe_runner.cli", "run", str(recipe)], cwd=workspace,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 180
        while _epoch_tag(db) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    killed_at = _epoch_tag(db)
    assert 3 <= killed_at < 8, f"expected to kill mid-training, got epoch {killed_at}"

    plan = cli("plan", recipe)
    assert "resume" in plan.output

    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    uri = local_uri(workspace)
    runs = {r.data.tags[T.NODE_ID]: r for r in stage_runs(uri)}
    train = runs["train"]
    resumed_epoch = int(train.data.tags[T.PREFIX + "resumed_epoch"])
    assert resumed_epoch >= killed_at
    assert train.data.metrics["epochs_trained"] == 8 - resumed_epoch  # the rest, not from epoch 0
    client = MlflowClient(uri)
    steps = sorted(m.step for m in client.get_metric_history(train.info.run_id, "train_loss"))
    assert steps == list(range(resumed_epoch + 1, 9))  # finished with the same total number of epochs
    killed = client.get_run(train.data.tags[T.PREFIX + "resumed_from"])
    assert killed.info.status == "KILLED"  # the cut-off attempt no longer shows as running
    assert runs["finetune"].info.status == "FINISHED"
