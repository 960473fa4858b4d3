"""Two real `recipe run` processes on one `mlflow server`: each cache key is trained once, never twice, nothing live
is marked KILLED, and a stale lease (its owner died) is taken over by resuming it. Every test runs twice: against
a server on sqlite and against one on PostgreSQL (the README's team setup), since leases rest on what the database
behind the server shows a reader right after another client's write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import servers
from mlflow.tracking import MlflowClient

from recipe_runner import persistence as T
from recipe_runner.persistence import leases as L


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def mlflow_server(request, tmp_path_factory):
    """A real `mlflow server`, once per backend; the PostgreSQL one gets a fresh database in the session's cluster."""
    root = tmp_path_factory.mktemp(f"server-{request.param}")
    if request.param == "sqlite":
        with servers.mlflow_server(root, f"sqlite:///{root / 'server.db'}") as uri:
            yield uri
        return
    cluster, database = request.getfixturevalue("postgres"), f"mlflow_{root.name.replace('-', '_')}"
    with servers.mlflow_server(root, cluster.database(database)) as uri:
        # the server made its tables in that database: the runs below live in PostgreSQL
        assert {"experiments", "runs", "tags", "datasets", "inputs"} <= cluster.tables(database)
        yield uri


RECIPE = """\
version: 1
name: {name}
seed: {seed}  # a cache key per test: both tests share one server
model: lenet
data: builtin:shapes-cls?train=256&val=32&imgsz=32
defaults: {{imgsz: 32, batch: 16}}
stages:
  train:
    type: train
    epochs: 3
  finetune:
    type: finetune
    epochs: 1
"""

# Runs the real CLI with one test hook: the stage that trains waits after its first epoch checkpoint until the
# gate file exists, so the test can hold it mid-training (to let the other process meet the lease, or to kill it).
GATED_CLI = """\
import os, time
from recipe_runner.engine import RunningStage
_save = RunningStage.save_epoch_state
def save(self, state, epoch):
    _save(self, state, epoch)
    gate = os.environ["RR_TEST_GATE"]
    deadline = time.time() + 300
    while self.node.type == "train" and epoch == 1 and not os.path.exists(gate) and time.time() < deadline:
        time.sleep(0.1)
RunningStage.save_epoch_state = save
from recipe_runner.cli import main
main()
"""


def _start(workspace: Path, recipe: Path, uri: str, log: str, gate: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "RECIPE_RUNNER_HEARTBEAT_S": "1",
        "RR_TEST_GATE": str(gate),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-c", GATED_CLI, "run", str(recipe), "--tracking-uri", uri],
        cwd=workspace,
        env=env,
        stdout=open(workspace / log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for(condition, what: str, procs: list[subprocess.Popen], limit: float = 240) -> None:
    deadline = time.time() + limit
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        assert all(p.poll() is None for p in procs), f"a process ended while waiting for {what}"
        time.sleep(0.1)


def _finish(procs: list[subprocess.Popen], workspace: Path, logs: list[str]) -> list[str]:
    outputs = []
    for proc, log in zip(procs, logs):
        try:
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        outputs.append((workspace / log).read_text())
        assert proc.returncode == 0, outputs[-1][-3000:]
    return outputs


def _children_by_parent(client: MlflowClient, experiment: str) -> dict[str, dict[str, object]]:
    """parent run id -> {node id -> child run}, for every recipe run of the experiment."""
    exp = client.get_experiment_by_name(experiment).experiment_id
    out: dict[str, dict[str, object]] = {}
    for parent in client.search_runs([exp], f"tags.`{T.ROLE}` = 'recipe'"):
        children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        out[parent.info.run_id] = {c.data.tags[T.NODE_ID]: c for c in children}
    return out


def _assert_trained_once(by_parent: dict[str, dict[str, object]]) -> dict[str, object]:
    """Per node: exactly one of the two processes trained it; the other reused that very run. Returns the trainers."""
    assert len(by_parent) == 2
    trained = {}
    for node in ("train", "finetune"):
        pair = [children[node] for children in by_parent.values()]
        workers = [r for r in pair if r.data.metrics.get("epochs_trained", 0) > 0]
        assert len(workers) == 1, [(r.data.tags[T.ROLE], r.data.metrics) for r in pair]
        other = next(r for r in pair if r is not workers[0])
        assert other.data.tags[T.ROLE] == "reused" and other.data.metrics["epochs_trained"] == 0
        assert other.data.tags[T.ACTION] == "reuse"
        assert other.data.tags[T.REUSED_FROM] == workers[0].info.run_id
        trained[node] = workers[0]
    return trained


def test_two_processes_train_each_stage_once_and_the_second_waits(mlflow_server: str, workspace: Path):
    recipe = workspace / "recipe.yaml"
    recipe.write_text(RECIPE.format(name="together", seed=1))
    gate, logs = workspace / "gate", ["a.log", "b.log"]
    procs = [_start(workspace, recipe, mlflow_server, log, gate) for log in logs]  # at once, same recipe
    try:
        # the trainer is held after epoch 1 until the other process has met its lease and waits for it
        _wait_for(
            lambda: any("waiting for run" in (workspace / log).read_text() for log in logs),
            "one process to wait for the other's lease",
            procs,
        )
        gate.touch()
        outputs = _finish(procs, workspace, logs)
    finally:
        gate.touch()
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    waiting = [o for o in outputs if "waiting for run" in o]
    assert len(waiting) >= 1 and f"owned by {os.uname().nodename}:" in waiting[0]

    client = MlflowClient(mlflow_server)
    trained = _assert_trained_once(_children_by_parent(client, "together"))
    assert trained["train"].data.metrics["epochs_trained"] == 3
    runs = client.search_runs([client.get_experiment_by_name("together").experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"}  # nobody marked the other's live run KILLED
    assert all(T.LEASE_HEARTBEAT in trained[n].data.tags for n in trained)


def test_a_stale_lease_is_taken_over_by_exactly_one_of_two_processes(mlflow_server: str, workspace: Path):
    recipe = workspace / "recipe.yaml"
    recipe.write_text(RECIPE.format(name="takeover", seed=2))
    gate = workspace / "gate"  # never opened: the first process is killed while held after epoch 1
    client = MlflowClient(mlflow_server)

    def held_run():
        exp = client.get_experiment_by_name("takeover")
        runs = client.search_runs([exp.experiment_id], f"tags.`{T.EPOCH}` = '1'") if exp else []
        return runs[0] if runs else None

    first = _start(workspace, recipe, mlflow_server, "dead.log", gate)
    try:
        _wait_for(lambda: held_run() is not None, "the first process to checkpoint epoch 1", [first])
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    stale = held_run()
    assert stale.info.status == "RUNNING"
    # make it look long dead: heartbeat far in the past, owner pid gone (the killed process)
    client.set_tag(stale.info.run_id, T.LEASE_HEARTBEAT, f"{time.time() - 3600:.3f}")
    assert not L.pid_alive(int(stale.data.tags[T.LEASE_PID]))
    assert not L.is_live(
        T.StageRun(stale.info.run_id, "RUNNING", client.get_run(stale.info.run_id).data.tags, {}, {}), time.time()
    )

    gate.touch()
    logs = ["a.log", "b.log"]
    procs = [_start(workspace, recipe, mlflow_server, log, gate) for log in logs]
    try:
        outputs = _finish(procs, workspace, logs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    # the killed process's recipe run has no finetune child: leave it out
    by_parent = {p: c for p, c in _children_by_parent(client, "takeover").items() if "finetune" in c}
    trained = _assert_trained_once(by_parent)
    train = trained["train"]
    assert train.data.tags[T.RESUMED_FROM] == stale.info.run_id
    assert train.data.tags[T.RESUMED_EPOCH] == "1"
    assert train.data.metrics["epochs_trained"] == 2  # the rest, not from epoch 0
    assert client.get_run(stale.info.run_id).info.status == "KILLED"  # marked only once taken over
    assert sum("[resume] train" in o for o in outputs) == 1


def test_runs_logging_the_same_new_dataset_at_once_all_get_it(mlflow_server: str):
    """The server inserts a new dataset without a lock: concurrent first logs hit its UNIQUE constraint. Every run
    must still end up with the dataset input (the second process of a pair used to die on this)."""
    from mlflow.entities import Dataset, DatasetInput

    trackers = [T.Tracker(mlflow_server, "same-dataset") for _ in range(8)]
    assert trackers[0].experiment_id  # create the experiment once, so only the dataset insert races
    client, errors = MlflowClient(mlflow_server), []
    # a few rounds, each with a new dataset: the race window is a few milliseconds
    for round in range(5):
        run_ids = [t.start_run(f"r{round}.{i}", {}) for i, t in enumerate(trackers)]
        dataset = DatasetInput(
            Dataset(name="shapes", digest=f"{round}-{time.time():.6f}", source_type="code", source="{}")
        )
        barrier = threading.Barrier(len(trackers))

        def log(
            tracker: T.Tracker, run_id: str, barrier: threading.Barrier = barrier, dataset: DatasetInput = dataset
        ) -> None:
            barrier.wait()
            try:
                tracker.log_dataset(run_id, dataset)
            except Exception as exc:  # a thread's exception would only be printed: collect it for the assert
                errors.append(exc)

        threads = [threading.Thread(target=log, args=pair) for pair in zip(trackers, run_ids)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        digests = [[d.dataset.digest for d in client.get_run(r).inputs.dataset_inputs] for r in run_ids]
        assert digests == [[dataset.dataset.digest]] * len(run_ids)
