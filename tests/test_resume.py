"""A stage killed mid-training (SIGKILL) resumes from its last epoch checkpoint on the next run."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import cli, local_uri, stage_runs
from mlflow.tracking import MlflowClient

from recipe_runner import persistence as T
from recipe_runner.engine import local_epoch_state

RECIPE = """\
version: 1
name: resume
model: lenet
data: builtin:shapes-cls?train=768&val=32&imgsz=32
defaults: {imgsz: 32, batch: 16, checkpoint_every: 1}  # these tests kill at chosen epochs
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
    proc = subprocess.Popen(
        [sys.executable, "-m", "recipe_runner.cli", "run", str(recipe)],
        cwd=workspace,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
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
    resumed_epoch = int(train.data.tags[T.RESUMED_EPOCH])
    assert resumed_epoch >= killed_at
    assert train.data.metrics["epochs_trained"] == 8 - resumed_epoch  # the rest, not from epoch 0
    client = MlflowClient(uri)
    steps = sorted(m.step for m in client.get_metric_history(train.info.run_id, "train_loss"))
    assert steps == list(range(resumed_epoch + 1, 9))  # finished with the same total number of epochs
    killed = client.get_run(train.data.tags[T.RESUMED_FROM])
    assert killed.info.status == "KILLED"  # the cut-off attempt no longer shows as running
    # and neither does the recipe run it belonged to (kill -9 left it RUNNING for good)
    assert client.get_run(killed.data.tags["mlflow.parentRunId"]).info.status == "KILLED"
    assert runs["finetune"].info.status == "FINISHED"


FAILING = RECIPE.replace("train=768", "train=64")


def _crash_at_epoch(monkeypatch, epoch: int) -> None:
    """Make training raise after `epoch` epochs were checkpointed (a crash, in-process)."""
    from recipe_runner.models.torchvision import TorchvisionFamily

    original = TorchvisionFamily.evaluate
    calls = {"n": 0}

    def evaluate(self, model, data, knobs):
        calls["n"] += 1
        if calls["n"] > epoch:
            raise RuntimeError("simulated crash")
        return original(self, model, data, knobs)

    monkeypatch.setattr(TorchvisionFamily, "evaluate", evaluate)


def test_crashed_stage_resumes_and_a_corrupt_epoch_checkpoint_is_not_trusted(workspace: Path, monkeypatch):
    recipe = workspace / "recipe.yaml"
    recipe.write_text(FAILING)
    with monkeypatch.context() as patch:
        _crash_at_epoch(patch, 3)
        failed = cli("run", recipe)
    assert failed.exit_code == 1 and "simulated crash" in failed.output
    uri = local_uri(workspace)
    crashed = stage_runs(uri)[0]
    assert crashed.info.status == "FAILED" and crashed.data.tags[T.EPOCH] == "3"

    # corrupt the slot the tags point to, in the store and in this machine's copy: the next run must refuse it
    # and train from scratch
    slot = crashed.data.tags[T.EPOCH_SLOT]
    artifact = Path(crashed.info.artifact_uri.replace("file://", "")) / T.epoch_artifact(int(slot))
    local = local_epoch_state(crashed.data.tags[T.CACHE_KEY], int(slot))
    for path in (artifact, local):
        path.write_bytes(path.read_bytes()[:-20] + b"x" * 20)
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert "cannot resume" in result.output and "corrupt" in result.output
    train = {r.data.tags[T.NODE_ID]: r for r in stage_runs(uri)}["train"]
    assert train.data.metrics["epochs_trained"] == 8
    assert T.RESUMED_FROM not in train.data.tags
    assert not local.parent.parent.exists()  # the finished stage leaves no local epoch checkpoints behind


def test_a_crashed_stage_resumes_from_this_machines_copy_without_the_store_copy(workspace: Path, monkeypatch):
    recipe = workspace / "recipe.yaml"
    recipe.write_text(FAILING)
    with monkeypatch.context() as patch:
        _crash_at_epoch(patch, 3)
        assert cli("run", recipe).exit_code == 1
    crashed = stage_runs(local_uri(workspace))[0]
    slot = int(crashed.data.tags[T.EPOCH_SLOT])
    # the store's copy is gone (say, a remote server that is slow to reach): this machine's copy is verified
    (Path(crashed.info.artifact_uri.replace("file://", "")) / T.epoch_artifact(slot)).unlink()
    assert local_epoch_state(crashed.data.tags[T.CACHE_KEY], slot).is_file()
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert "epoch checkpoint found on this machine" in result.output and "[resume] train  from epoch 3" in result.output
    train = {r.data.tags[T.NODE_ID]: r for r in stage_runs(local_uri(workspace))}["train"]
    assert train.data.metrics["epochs_trained"] == 5


def test_resumed_training_matches_uninterrupted_training(workspace: Path, monkeypatch, tmp_path_factory):
    recipe = workspace / "recipe.yaml"
    recipe.write_text(FAILING)
    with monkeypatch.context() as patch:
        _crash_at_epoch(patch, 4)
        assert cli("run", recipe).exit_code == 1
    assert cli("run", recipe).exit_code == 0
    resumed = {r.data.tags[T.NODE_ID]: r for r in stage_runs(local_uri(workspace))}["train"]
    assert resumed.data.tags[T.RESUMED_EPOCH] == "4"

    clean_dir = tmp_path_factory.mktemp("clean")
    monkeypatch.chdir(clean_dir)
    (clean_dir / "recipe.yaml").write_text(FAILING)
    assert cli("run", clean_dir / "recipe.yaml").exit_code == 0
    clean = {r.data.tags[T.NODE_ID]: r for r in stage_runs(local_uri(clean_dir))}["train"]
    assert clean.data.metrics["epochs_trained"] == 8 and resumed.data.metrics["epochs_trained"] == 4
    # same data order, schedule and optimizer state: the same model, up to float noise
    assert abs(clean.data.metrics["val_loss"] - resumed.data.metrics["val_loss"]) < 1e-4
    assert clean.data.metrics["top1"] == resumed.data.metrics["top1"]


def test_crashed_prune_stage_resumes_after_its_last_finished_step(workspace: Path, monkeypatch):
    from recipe_runner.engine import RunningStage

    recipe = workspace / "recipe.yaml"
    recipe.write_text(
        FAILING.replace("epochs: 8", "epochs: 1")
        + """\
  prune:
    type: prune
    from: train
    method: depgraph
    ratio: 0.6
    steps: 3
    finetune_epochs: 1
"""
    )
    real_save = RunningStage.save_epoch_state

    def save_then_crash(self, state, epoch):
        real_save(self, state, epoch)
        if self.node.type == "prune" and epoch == 2:
            raise RuntimeError("simulated crash after step 2")

    with monkeypatch.context() as patch:
        patch.setattr(RunningStage, "save_epoch_state", save_then_crash)
        assert cli("run", recipe).exit_code == 1
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert "[resume] prune  from epoch 2" in result.output
    runs = {r.data.tags[T.NODE_ID]: r for r in stage_runs(local_uri(workspace))}
    prune = runs["prune"]
    assert prune.data.metrics["epochs_trained"] == 1  # only step 3's fine-tuning ran again
    assert prune.data.metrics["steps_done"] == 3
    history = MlflowClient(local_uri(workspace)).get_metric_history(prune.info.run_id, "step/macs")
    assert [m.step for m in history] == [3]
    # three compounding steps land on the target: channels x0.4, so MACs about 0.16x of the trained model
    assert prune.data.metrics["macs"] < 0.3 * runs["train"].data.metrics["macs"]


def test_epoch_tags_are_written_in_one_batch(tmp_path: Path):
    """epoch, sha and slot must land together: a kill between separate writes once left a new sha next to the
    old slot, so the next run could not verify the checkpoint and trained from epoch 0 (seen in CI)."""
    tracker = T.Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "tags")
    run_id = tracker.start_run("stage", {})
    calls: list[str] = []
    client = tracker.client
    for name in ("set_tag", "log_batch"):
        original = getattr(client, name)
        setattr(client, name, lambda *a, _f=original, _n=name, **k: (calls.append(_n), _f(*a, **k))[1])
    tracker.set_tags(run_id, {T.EPOCH: 3, T.EPOCH_SHA: "abc", T.EPOCH_SLOT: 1})
    assert calls == ["log_batch"]
    tags = MlflowClient(tracker.uri).get_run(run_id).data.tags
    assert (tags[T.EPOCH], tags[T.EPOCH_SHA], tags[T.EPOCH_SLOT]) == ("3", "abc", "1")


def test_sigterm_stops_like_ctrl_c_and_marks_the_runs_killed(workspace: Path):
    recipe = workspace / "recipe.yaml"
    recipe.write_text(RECIPE)
    db = workspace / "mlflow.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "recipe_runner.cli", "run", str(recipe)],
        cwd=workspace,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 180
    while _epoch_tag(db) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "run again: the unfinished stage resumes" in err
    client = MlflowClient(local_uri(workspace))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and {r.info.status for r in runs} == {"KILLED"}  # the parent and the cut-off stage: nothing RUNNING


def _crash_a_short_training(workspace: Path, monkeypatch) -> tuple[Path, str, object]:
    """A 2-epoch training that crashed after its first epoch checkpoint: (recipe, store URI, the failed run)."""
    recipe = workspace / "recipe.yaml"
    recipe.write_text(FAILING.replace("epochs: 8", "epochs: 2").replace("train=768", "train=64"))
    with monkeypatch.context() as patch:
        _crash_at_epoch(patch, 1)
        assert cli("run", recipe).exit_code == 1
    uri = local_uri(workspace)
    return recipe, uri, stage_runs(uri)[0]


def test_a_garbled_epoch_slot_tag_starts_over(workspace: Path, monkeypatch):
    """The slot tag is written by whoever can write to the store: one that is neither 0 nor 1 is an epoch
    checkpoint that cannot be verified, so the stage trains from scratch instead of failing."""
    recipe, uri, crashed = _crash_a_short_training(workspace, monkeypatch)
    MlflowClient(uri).set_tag(crashed.info.run_id, T.EPOCH_SLOT, "../1")
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert "cannot resume" in result.output and "epoch-slot tag '../1'" in result.output
    train = {r.data.tags[T.NODE_ID]: r for r in stage_runs(uri)}["train"]
    assert train.data.metrics["epochs_trained"] == 2


def test_an_epoch_state_whose_hash_verifies_but_whose_model_does_not_rebuild_starts_over(workspace: Path, monkeypatch):
    """The sha256 proves the file is the one recorded, not that it is usable: a state written with a broken model
    (a faulty writer, another version) is refused before the stage starts, and the stage trains from scratch."""
    from recipe_runner.persistence import load_checkpoint, save_checkpoint

    recipe, uri, crashed = _crash_a_short_training(workspace, monkeypatch)
    slot = int(crashed.data.tags[T.EPOCH_SLOT])
    local = local_epoch_state(crashed.data.tags[T.CACHE_KEY], slot)
    state = load_checkpoint(local, crashed.data.tags[T.EPOCH_SHA])
    weights = state["model"]["state_dict"]
    name = next(iter(weights))
    weights[name] = weights[name].flatten()[:1]  # the right key and epoch, a weight of the wrong shape
    artifact = Path(crashed.info.artifact_uri.replace("file://", "")) / T.epoch_artifact(slot)
    sha = save_checkpoint(state, artifact)
    save_checkpoint(state, local)
    MlflowClient(uri).set_tag(crashed.info.run_id, T.EPOCH_SHA, sha)  # and its hash verifies
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the console wraps long lines
    assert "cannot resume" in said and "does not rebuild and run (RuntimeError" in said, result.output
    train = {r.data.tags[T.NODE_ID]: r for r in stage_runs(uri)}["train"]
    assert train.data.metrics["epochs_trained"] == 2 and T.RESUMED_FROM not in train.data.tags


def test_between_uploads_states_are_kept_on_this_machine(workspace: Path, monkeypatch):
    """checkpoint_every: 3 uploads epochs 1, 4, 7; a crash after epoch 3 resumes here from a later epoch than the
    store's 1: epoch 2 is always kept (the first between uploads), epoch 3 when a local write costs under 3% of an
    epoch (timing: either is right)."""
    from recipe_runner.engine import local_latest_state

    recipe = workspace / "recipe.yaml"
    recipe.write_text(FAILING.replace("checkpoint_every: 1", "checkpoint_every: 3"))
    with monkeypatch.context() as patch:
        _crash_at_epoch(patch, 3)
        assert cli("run", recipe).exit_code == 1
    crashed = stage_runs(local_uri(workspace))[0]
    assert crashed.data.tags[T.EPOCH] == "1"  # the store has epoch 1 only
    assert local_latest_state(crashed.data.tags[T.CACHE_KEY]).is_file()
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    kept = re.search(r"epoch (\d)'s state found on this machine \(the store has 1\)", result.output)
    assert kept and kept[1] in ("2", "3"), result.output
    assert f"[resume] train  from epoch {kept[1]}" in result.output
    train = {r.data.tags[T.NODE_ID]: r for r in stage_runs(local_uri(workspace))}["train"]
    assert train.data.metrics["epochs_trained"] == 8 - int(kept[1])
