"""--executor ray on this machine: one local Ray for the module, real stages in real worker processes, a real local
`mlflow server` in front of each run's sqlite store (started and stopped by the executor)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import cli, local_uri, stage_runs, write_recipe
from mlflow.tracking import MlflowClient
from test_executors import SWEEP, by_node, corrupt_checkpoint

from recipe_runner import persistence as T

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")

COMPARED = ("top1", "macs", "params", "size_mb", "epochs_trained", "latency_ms")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray (2 CPUs, as this machine has) for every test here; two workers warmed up (torch and the runner
    imported), so that the two branches meet two ready processes."""
    saved = {k: os.environ.get(k) for k in ("RAY_USAGE_STATS_ENABLED", "RECIPE_RUNNER_CACHE")}
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # the workers inherit the environment Ray starts with: the dataset cache that `workspace` gives each test
    os.environ["RECIPE_RUNNER_CACHE"] = str(tmp_path_factory.getbasetemp() / "rr-cache")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")

    @ray.remote(num_cpus=1)
    def warm() -> int:
        import mlflow.tracking  # noqa: F401
        import torch_pruning  # noqa: F401
        import torchvision  # noqa: F401

        import recipe_runner.engine  # noqa: F401  (torch, mlflow, the stages)
        import recipe_runner.models.torchvision  # noqa: F401

        time.sleep(1)  # both tasks at once: two workers
        return os.getpid()

    assert len(set(ray.get([warm.remote(), warm.remote()]))) == 2
    yield
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _run(folder: Path, monkeypatch: pytest.MonkeyPatch, *args: str):
    folder.mkdir(exist_ok=True)
    monkeypatch.chdir(folder)  # the sqlite store and its ./mlruns artifacts live here
    return cli("run", write_recipe(folder, SWEEP, name="par"), *args)


def test_branches_run_in_parallel_workers_and_match_the_sequential_run(
    local_ray, workspace: Path, monkeypatch: pytest.MonkeyPatch
):
    sequential = _run(workspace / "seq", monkeypatch)
    assert sequential.exit_code == 0, sequential.output
    parallel = _run(workspace / "ray", monkeypatch, "--executor", "ray")
    assert parallel.exit_code == 0, parallel.output
    # the sqlite store got a local mlflow server for the run, stopped at its end
    assert "executor: ray" in parallel.output
    served = parallel.output.split("tracking: ", 1)[1].split()[0]
    assert served.startswith("http://127.0.0.1:")
    with pytest.raises(requests.ConnectionError):
        requests.get(served + "/health", timeout=2)

    seq = by_node(stage_runs(local_uri(workspace / "seq")))
    par = by_node(stage_runs(local_uri(workspace / "ray")))
    assert set(par) == set(seq) and len(par) == 7
    for node_id, run in par.items():
        assert run.info.status == "FINISHED" and run.data.tags[T.ROLE] == "stage", node_id
        # the same work: same cache keys, and the metrics the sequential run measured
        assert run.data.tags[T.CACHE_KEY] == seq[node_id].data.tags[T.CACHE_KEY], node_id
        for metric in COMPARED[:-1]:
            assert run.data.metrics[metric] == seq[node_id].data.metrics[metric], (node_id, metric)
        assert run.data.metrics["latency_ms"] > 0  # timed, so not compared
        # every stage ran in a Ray worker, not in this (the driver's) process
        assert int(run.data.tags[T.LEASE_PID]) != os.getpid(), node_id
    # the two branches ran in two worker processes at the same time: the prune stages, submitted together, each
    # took a worker of its own, and the branches' stage runs (prune, finetune, check) overlap in time
    a, b = (par[f"prune[prune.ratio={r}]"] for r in ("0.3", "0.5"))
    assert a.data.tags[T.LEASE_PID] != b.data.tags[T.LEASE_PID]
    spans = {}
    for ratio in ("0.3", "0.5"):
        runs = [par[f"{stage}[prune.ratio={ratio}]"] for stage in ("prune", "finetune", "check")]
        spans[ratio] = (min(r.info.start_time for r in runs), max(r.info.end_time for r in runs))
    (start_a, end_a), (start_b, end_b) = spans.values()
    assert start_a < end_b and start_b < end_a, spans
    # the finetune stages got their parents' checkpoints through the store: the pruned shapes arrived
    assert par["finetune[prune.ratio=0.5]"].data.metrics["macs"] == par["prune[prune.ratio=0.5]"].data.metrics["macs"]

    again = _run(workspace / "ray", monkeypatch, "--executor", "ray")
    assert again.exit_code == 0, again.output
    reused = by_node(stage_runs(local_uri(workspace / "ray")))
    assert set(reused) == set(par)
    for node_id, run in reused.items():
        assert run.data.tags[T.ROLE] == "reused", node_id
        assert run.data.tags[T.REUSED_FROM] == par[node_id].info.run_id


def test_keep_going_on_ray_finishes_the_other_branch(local_ray, workspace: Path, monkeypatch: pytest.MonkeyPatch):
    folder = workspace / "kg"
    assert _run(folder, monkeypatch, "--only", "prune").exit_code == 0
    uri = local_uri(folder)
    corrupt_checkpoint(by_node(stage_runs(uri))["prune[prune.ratio=0.5]"])

    result = _run(folder, monkeypatch, "--executor", "ray", "--keep-going")
    assert result.exit_code == 1, result.output
    runs = by_node(stage_runs(uri))
    for node_id in ("finetune[prune.ratio=0.3]", "check[prune.ratio=0.3]"):
        assert runs[node_id].info.status == "FINISHED" and runs[node_id].data.tags[T.ROLE] == "stage", node_id
        assert int(runs[node_id].data.tags[T.LEASE_PID]) != os.getpid()
    failed = runs["finetune[prune.ratio=0.5]"]
    assert failed.info.status == "FAILED" and "sha256" in failed.data.tags[T.ERROR]
    assert "check[prune.ratio=0.5]" not in runs  # skipped: no run started
    parent = MlflowClient(uri).get_run(failed.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED"
    assert "error: stage 'finetune[prune.ratio=0.5]' failed: CheckpointError" in result.output
    assert "skipped (an ancestor failed): check[prune.ratio=0.5]" in result.output


LONG_TRAIN = """\
version: 1
name: cancel
seed: 0
model: lenet
data: builtin:shapes-cls?train=512&val=16&imgsz=32
defaults: {imgsz: 32, batch: 16}
stages:
  train:
    type: train
    epochs: 12
"""


def test_sigterm_cancels_the_ray_task_its_run_ends_killed_and_a_rerun_resumes(local_ray, workspace: Path):
    recipe = workspace / "recipe.yaml"
    recipe.write_text(LONG_TRAIN)
    uri = local_uri(workspace)
    signalled = threading.Event()

    def terminate_once_training() -> None:
        """SIGTERM to this process (the driver) as soon as the stage, in its worker, has saved an epoch checkpoint."""
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                started = (workspace / "mlflow.db").exists()
                runs = MlflowClient(uri).search_runs(["1"], f"tags.`{T.EPOCH}` = '1'") if started else []
            except Exception:  # the server is writing the same sqlite file: read again
                runs = []
            if runs:
                signalled.set()
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=terminate_once_training, daemon=True)
    watcher.start()
    result = cli("run", recipe, "--executor", "ray")
    watcher.join(timeout=10)
    assert signalled.is_set() and result.exit_code == 143, result.output
    client = MlflowClient(uri)
    killed = by_node(stage_runs(uri))["train"]
    assert killed.info.status == "KILLED", killed.info.status  # cancelled, not left RUNNING or FAILED
    assert int(killed.data.tags[T.EPOCH]) >= 1
    assert int(killed.data.tags[T.LEASE_PID]) != os.getpid()
    assert client.get_run(killed.data.tags["mlflow.parentRunId"]).info.status == "KILLED"
    assert {r.info.status for r in client.search_runs(["1"])} == {"KILLED"}  # nothing left RUNNING

    resumed = cli("run", recipe)  # sequential: any executor resumes what another one left
    assert resumed.exit_code == 0, resumed.output
    train = by_node(stage_runs(uri))["train"]
    assert train.data.tags[T.RESUMED_FROM] == killed.info.run_id
    assert train.data.metrics["epochs_trained"] == 12 - int(train.data.tags[T.RESUMED_EPOCH])


SEARCH = """\
  train:
    type: train
    epochs: 1
  prune:
    type: prune
    method: depgraph
    ratio: {search: [0.3, 0.6]}
"""


def test_search_with_parallel_runs_a_batch_of_trials_at_once(local_ray, workspace: Path):
    """search.parallel: 2 asks two trials before telling either; Ray runs both at once, each worker given the plan
    with the trial nodes the search added after the run began."""
    path = write_recipe(workspace, SEARCH, name="par-search")
    path.write_text(
        path.read_text().replace(
            "stages:\n", "search:\n  trials: 2\n  parallel: 2\n  sampler: grid\n  maximize: prune.top1\nstages:\n"
        )
    )
    result = cli("run", path, "--executor", "ray")
    assert result.exit_code == 0, result.output
    prunes = [r for r in stage_runs(local_uri(workspace)) if r.data.tags[T.STAGE_ID] == "prune"]
    assert sorted(float(r.data.params["ratio"]) for r in prunes) == [0.3, 0.6]  # the grid, each point once
    a, b = prunes
    assert a.data.tags[T.LEASE_PID] != b.data.tags[T.LEASE_PID]
    assert a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time
    assert (
        "recipe_runner.best_trial"
        in MlflowClient(local_uri(workspace)).get_run(prunes[0].data.tags["mlflow.parentRunId"]).data.tags
    )


def test_a_search_warms_the_idle_workers_of_a_local_ray_the_executor_started(local_ray, workspace: Path):
    """A fresh local Ray's worker imports torch and the stage code only when its first task arrives: the executor
    sends the idle workers an import task while the shared stages run. Only on a Ray it started itself (a cluster's
    or a caller's workers are not its to occupy), and only for a search (whose batches start together)."""
    from recipe_runner.executors.ray_executor import RayExecutor
    from recipe_runner.planner import RunOptions, prepare

    (workspace / "sweep").mkdir()
    sweep_plan = prepare(write_recipe(workspace / "sweep", SWEEP, name="warm-sweep"), RunOptions())
    path = write_recipe(workspace, SEARCH, name="warm")
    path.write_text(path.read_text().replace("stages:\n", "search:\n  trials: 2\n  maximize: prune.top1\nstages:\n"))
    search_plan = prepare(path, RunOptions())
    executor = RayExecutor()
    executor._warm(search_plan)
    assert executor._warming == []  # the module's own Ray: the executor did not start it
    executor._started_ray = True  # as if it had started this local Ray
    try:
        executor._warm(sweep_plan)
        assert executor._warming == []  # no search: nothing to warm
        executor._warm(search_plan)
        # 2 CPUs: one runs the first stage, the other imports; the import task succeeds in a worker process
        assert len(executor._warming) == 1
        assert ray.get(executor._warming, timeout=120)[0] != os.getpid()
    finally:
        executor._started_ray = False
