"""Each stage a Ray task: the branches of a recipe (a sweep, several methods) run in parallel, on this machine
(a local Ray started for the run) or on a cluster (`--address auto | ray://host:port`).

The driver validates, plans, owns the parent run and schedules (Engine); a task gets the plan (without its MLflow
client), its stage, its parent's finished run and the runner's factory (StageRunner.elsewhere), builds its own
Tracker and stage runner and runs the stage exactly as the sequential executor would: leases, resume, verified
checkpoints. Models travel through the tracking store (the parent's checkpoint artifact and its sha256), never
through driver memory; two tasks that reach one cache key are two processes on one store, which the leases already
make safe (persistence/leases.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..outcomes import StageFailed
from . import Done, Executor, ExecutorUnavailable, KnownOutput, RunnerFactory, StageRunner

if TYPE_CHECKING:
    from ..planner import Plan, PlannedStage

INSTALL_HINT = '--executor ray needs Ray: pip install "recipe-runner[ray]"'
#: seconds a cancelled task gets to mark its stage run KILLED before its worker is killed
CANCEL_GRACE_S = 30.0
#: environment a task on a cluster needs from the driver (a local Ray inherits it anyway)
FORWARDED_ENV = ("RECIPE_RUNNER_", "YOLO_", "MLFLOW_", "HF_HUB_OFFLINE", "DO_NOT_TRACK", "OMP_NUM_THREADS")


class RemoteError(RuntimeError):
    """An exception raised in a task, by its type name and message: its class may not exist in the driver."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> Any:
        return RemoteError, (self.kind, str(self))


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, address: str | None = None):
        # read by Ray when it is imported
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # every stage's own [run]/[reuse] line, not "repeated 2x"
        # MLflow prints two links per finished run on an http store: with a task per stage, they drown the output
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ExecutorUnavailable(INSTALL_HINT) from None
        self.address = address
        self._started_ray = False
        self._server: Any = None  # local_server.LocalServer, when the run needs one
        self._plan_ref: Any = None
        self._plan_nodes = 0  # graph nodes in the plan put into Ray: a search adds trial nodes as it asks them
        self._warming: list[Any] = []  # warm-up tasks (kept referenced until the run ends)
        self._tasks: dict[Any, tuple[PlannedStage, str]] = {}  # ObjectRef -> (stage, parent run id)
        self._tracker: Any = None
        self._announce: Any = print
        self._remote: Any = None  # _run_stage_task as a Ray remote function, made once per run

    # -- lifecycle ----------------------------------------------------------
    def __enter__(self) -> RayExecutor:
        import ray

        if not ray.is_initialized():  # a caller (or a test) that started Ray keeps its own
            try:
                if self.address:
                    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
                    ray.init(address=self.address, runtime_env={"env_vars": env}, logging_level=logging.WARNING)
                else:
                    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ExecutorUnavailable(f"cannot start or join Ray ({self.address or 'local'}): {exc}") from None
            self._started_ray = True
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        try:
            if self._started_ray:
                ray.shutdown()
        finally:
            if self._server is not None:
                self._server.stop()

    def prepare(self, plan: Plan) -> Plan:
        """Parallel stages need a store that takes concurrent writers: a local sqlite file gets a local
        `mlflow server` in front of it for this run; a file store is refused."""
        from ..persistence import Tracker, TrackingError, local_server

        uri = plan.tracker.uri
        if local_server.is_file_store(uri):
            raise ExecutorUnavailable(
                f"--executor ray cannot share the file store {uri} between processes: use a "
                "sqlite:/// URI (a local mlflow server is then started for the run) or an "
                "`mlflow server` (--tracking-uri http://host:port)"
            )
        if local_server.needs_server(uri):
            if not _all_tasks_here(self.address):
                raise ExecutorUnavailable(
                    f"tasks on the Ray cluster {self.address} cannot reach the local store "
                    f"{uri}: run an `mlflow server` they can reach and pass --tracking-uri "
                    "http://host:port"
                )
            self._server = local_server.LocalServer(uri)
            try:
                served = self._server.start()
            except local_server.LocalServerError as exc:
                raise TrackingError(str(exc)) from None
            tracker = Tracker(served, plan.tracker.experiment_name)
            tracker.check()
            plan = dataclasses.replace(plan, tracker=tracker)
        return plan

    # -- the Executor interface --------------------------------------------
    def submit(self, runner: StageRunner, planned: PlannedStage, parent_run_id: str, workdir: Path) -> None:
        import ray

        plan = runner.plan
        if self._plan_ref is None:
            self._tracker, self._announce = plan.tracker, runner.announce
            self._remote = ray.remote(_run_stage_task)
            self._warm(plan)
        if self._plan_ref is None or len(plan.graph.nodes) != self._plan_nodes:
            # into Ray's object store once per run (again when a search added trials); the MLflow client stays
            # here (each task makes its own)
            self._plan_ref = ray.put(dataclasses.replace(plan, tracker=None))
            self._plan_nodes = len(plan.graph.nodes)
        node = planned.node
        task = self._remote.options(name=f"stage:{node.id}", max_retries=0, **resources(node.config))
        # the parent and the stage's other inputs (a distillation teacher), fetched from the store by the task
        known = {n: runner.known_output(n) for n in [*([node.parent] if node.parent else []), *node.inputs.values()]}
        ref = task.remote(
            self._plan_ref,
            planned,
            parent_run_id,
            plan.tracker.uri,
            plan.tracker.experiment_name,
            runner.elsewhere(),
            known,
        )
        self._tasks[ref] = (planned, parent_run_id)

    def _warm(self, plan: Plan) -> None:
        """A fresh local Ray's workers import torch and the stage code only when their first task arrives (seconds):
        a search's parallel trials then start one after another. Warm the idle workers while the first stages run."""
        import ray

        if not (self._started_ray and not self.address and plan.recipe.search is not None):
            return
        idle = int(ray.cluster_resources().get("CPU", 1)) - 1
        modules = ["recipe_runner.engine", "recipe_runner.stages", type(plan.family).__module__]
        warm = ray.remote(_import_modules).options(num_cpus=1, max_retries=0)
        self._warming = [warm.remote(modules) for _ in range(max(0, idle))]

    def wait(self) -> list[Done]:
        import ray

        ready, _ = ray.wait(list(self._tasks), num_returns=1)
        more, _ = (
            ray.wait([r for r in self._tasks if r not in ready], num_returns=len(self._tasks) - 1, timeout=0)
            if len(self._tasks) > 1
            else ([], [])
        )
        out = []
        for ref in [*ready, *more]:
            planned, _ = self._tasks.pop(ref)
            try:
                outcome = ray.get(ref)
            except Exception as exc:  # the task died (worker crash, out of memory): the stage failed
                cause = getattr(exc, "cause", None) or exc
                last_line = (str(cause).strip().splitlines() or [""])[-1]
                error = RemoteError(type(cause).__name__, last_line)
                out.append(Done(planned, error=StageFailed(planned.node.id, error)))
                continue
            if outcome[0] == "failed":
                _, run_id, kind, message = outcome
                out.append(Done(planned, error=StageFailed(planned.node.id, RemoteError(kind, message), run_id)))
            else:
                _, report, source = outcome
                out.append(Done(planned, report=report, source=source))
        return out

    def cancel(self) -> None:
        """ray.cancel raises KeyboardInterrupt in each running task: the stage marks its run KILLED (its epoch
        checkpoint stays, so a re-run resumes it). A task that does not end in CANCEL_GRACE_S is killed, and any
        stage run of this recipe run still RUNNING is then marked KILLED from here."""
        import ray

        refs = list(self._tasks)
        if not refs:
            return
        parent_ids = {parent for _, parent in self._tasks.values()}
        for ref in refs:
            ray.cancel(ref)
        _, stuck = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_S)
        for ref in stuck:
            self._announce(f"[cancel] {self._tasks[ref][0].node.id}: still running after {CANCEL_GRACE_S:g} s, killed")
            ray.cancel(ref, force=True)
        self._tasks.clear()
        if self._tracker is not None:
            for parent_id in parent_ids:
                self._tracker.kill_running_children(parent_id)


def resources(config: Any) -> dict[str, float]:
    """Ray resources of one stage: one GPU per GPU its device names (a list: all of them), else one CPU; the
    stage's `resources:` key overrides either."""
    out = {"num_cpus": 1.0, "num_gpus": float(_gpu_count(config.device))}
    extra = getattr(config, "resources", None)
    if extra is not None:
        if extra.cpus is not None:
            out["num_cpus"] = extra.cpus
        if extra.gpus is not None:
            out["num_gpus"] = extra.gpus
    return out


def _gpu_count(device: Any) -> int:
    if isinstance(device, list):
        return len(device)
    return (
        1
        if isinstance(device, int) or isinstance(device, str) and (device.isdigit() or device.startswith("cuda"))
        else 0
    )


def _all_tasks_here(address: str | None) -> bool:
    """Whether every task runs on this machine (so a server on 127.0.0.1 and ./mlruns reach them): a local Ray, or a
    one-node cluster that is not behind Ray Client on another host."""
    import ray

    if address and address.startswith("ray://") and not address.startswith(("ray://127.", "ray://localhost")):
        return False
    return sum(1 for node in ray.nodes() if node.get("Alive")) <= 1


def _import_modules(modules: list[str]) -> int:
    """In a Ray worker: import what a stage will, so the worker's first stage starts at once. Returns the worker's
    process id (which worker was warmed)."""
    import importlib

    for name in modules:
        importlib.import_module(name)
    return os.getpid()


def _run_stage_task(
    plan: Plan,
    planned: PlannedStage,
    parent_run_id: str,
    tracking_uri: str,
    experiment: str,
    build: RunnerFactory,
    known: dict[str, KnownOutput],
) -> tuple:
    """In a Ray worker: run one stage with a fresh Tracker and a runner built by `build` from the plan and the
    outputs the stage reads; ('done', report, finished run) or ('failed', run id, error type, message). A
    KeyboardInterrupt (ray.cancel) marks the stage run KILLED."""
    from ..data import cache_root, resolve_data
    from ..offline import configure_offline
    from ..persistence import Tracker

    configure_offline(cache_root())
    if not Path(plan.data.path).exists() and plan.data.spec.startswith("builtin:"):  # another node: generate it here
        plan = dataclasses.replace(plan, data=resolve_data(plan.data.spec, plan.data.task))
    plan = dataclasses.replace(plan, tracker=Tracker(tracking_uri, experiment))
    planned = _on_assigned_gpu(planned)
    runner = build(plan, lambda line: print(line, flush=True), known)
    workdir = Path(tempfile.mkdtemp(prefix="recipe-runner-task-"))
    try:
        report = runner.run_stage(planned, parent_run_id, workdir)
    except StageFailed as exc:
        return "failed", exc.run_id, getattr(exc.error, "kind", None) or type(exc.error).__name__, str(exc.error)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    source = runner.known_output(planned.node.id)[0] or plan.tracker.stage_run(report.run_id)
    return "done", report, source


def _on_assigned_gpu(planned: PlannedStage) -> PlannedStage:
    """Ray shows a task only the GPUs it assigned (CUDA_VISIBLE_DEVICES, renumbered from 0): a GPU stage runs on
    the first of them, a stage with a device list on as many."""
    import ray

    wanted = _gpu_count(planned.node.config.device)
    if wanted and resources(planned.node.config)["num_gpus"] >= 1 and ray.get_gpu_ids():
        device: Any = list(range(wanted)) if isinstance(planned.node.config.device, list) else 0
        node = dataclasses.replace(planned.node, config=planned.node.config.model_copy(update={"device": device}))
        planned = dataclasses.replace(planned, node=node)
    return planned
