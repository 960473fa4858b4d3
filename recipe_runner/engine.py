"""Walk the stage graph: reuse, resume or run each stage, one parent MLflow run per recipe run.

For each node, in topological order:
  reuse   a FINISHED run with the same cache key holds a verified checkpoint: record it, train nothing
  resume  an unfinished run with the same key saved an epoch checkpoint: continue from that epoch
  run     otherwise: load the parent's output, run the stage, evaluate, checkpoint, log

A node starts once its parent is done; an executor (executors/) runs it, in this process by default. A failure
stops the run, or with on_error='keep-going' skips only the failed node's descendants.
"""

from __future__ import annotations

import copy
import json
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from mlflow.exceptions import MlflowException

from . import persistence as T
from .config_base import TrainingKnobs
from .data import cache_root
from .executors import Executor, KnownOutput, RunnerFactory
from .executors.sequential import SequentialExecutor
from .graph import StageNode
from .models import handoff_problems

# the outcome types live apart (executors build them too); imported from here by older code, so re-exported
from .outcomes import RunFailed, StageFailed, StageReport
from .persistence import CheckpointError, EpochCadence, leases, load_checkpoint, save_checkpoint, sha256_of
from .persistence import records as R
from .persistence import versions as V
from .planner import Plan, PlannedStage
from .pruning.unstructured import sparsity as weight_sparsity
from .stages import STAGES, StageOutput
from .timing import section, timed

__all__ = ["Engine", "RunFailed", "RunningStage", "StageFailed", "StageInput", "StageReport", "stage_runner"]

PACKAGES = [
    "recipe-runner",
    "torch",
    "torchvision",
    "torch-pruning",
    "ultralytics-opencv-headless",
    "ultralytics",
    "mlflow",
    "onnx",
    "onnxruntime",
    "pydantic",
    "openvino",
    "nncf",
]


#: what a stage failure does to the rest of the run (like DVC's on_error): stop at once, or finish every stage
#: that does not depend on the failed one
OnError = Literal["stop", "keep-going"]


ProgressFactory = Callable[[str, int], Callable[[int], None]]


class RunningStage:
    """The StageContext a stage sees: logging, epoch checkpoints and progress, bound to one MLflow run."""

    def __init__(
        self,
        engine: Engine,
        node: StageNode,
        run_id: str,
        workdir: Path,
        parent: StageInput,
        resume_state: dict | None,
        prefix: str = "",
    ):
        self.engine = engine
        self.node = node
        self.run_id = run_id
        self.workdir = workdir
        self.stage_id = node.id
        self.family = engine.family
        self.data = engine.data
        self.seed = engine.plan.recipe.seed
        self.model_source = engine.plan.recipe.model.source
        self.parent_model = parent.model
        self.parent_file = parent.file
        self.parent_metrics = parent.metrics
        self.parent_cache_key = engine.plan.graph.nodes[node.parent].cache_key if node.parent else ""
        self.resume_state, self.prefix = resume_state, prefix
        every = node.config.checkpoint_every if isinstance(node.config, TrainingKnobs) else 1
        self.cadence = EpochCadence(every)
        self._inputs: dict[str, Any] = {}  # role -> the loaded input model or file (shared with nested contexts)
        # states kept on this machine between uploads: as often as costs about 3% too (every epoch of a small
        # model; a YOLO epoch of a few seconds every few epochs), so a kill here loses little and costs little
        self.local_cadence = EpochCadence("auto")
        # the slot of the next epoch checkpoint: alternated per write (not epoch % 2, which with an even cadence
        # writes one slot over and over), so the slot the tags point to is never the one being overwritten
        self.next_slot = 0
        self.upload_due = True  # whether the next saved state also goes to the store (prune: every step)

    def input_gives(self, role: str) -> str:
        """What the stage input `role` gives: "model" (a PyTorch module) or "file" (an ONNX/INT8 file)."""
        return self.engine.plan.graph.gives(self._input_id(role))

    def input_file(self, role: str) -> Path:
        """The output file of the stage input `role` (a benchmark's baseline), verified by its sha256 as a parent's
        file is."""
        if role not in self._inputs:
            given = self.engine.input_of(self._input_id(role), self.workdir / "inputs" / role)
            if given.file is None:
                raise TypeError(f"input '{role}' of stage '{self.node.id}' gives a PyTorch model, not a file")
            self._inputs[role] = given.file
        return self._inputs[role]

    def _input_id(self, role: str) -> str:
        if role not in self.node.inputs:
            have = ", ".join(self.node.inputs) or "none"
            raise KeyError(f"stage '{self.node.id}' has no input '{role}' (it has: {have})")
        return self.node.inputs[role]

    def input_model(self, role: str) -> Any:
        """The model of the stage input `role` (the distillation "teacher"): loaded as a parent is (in memory if it
        ran here, else from the store, sha256-verified, weights_only), on the CPU in fp32, frozen (eval mode, no
        gradients). It is this stage's to read, never part of its output: the engine checkpoints only the model
        the stage returns."""
        if role not in self._inputs:
            given = self.engine.input_of(self._input_id(role), self.workdir / "inputs" / role)
            if given.model is None:
                raise TypeError(f"input '{role}' of stage '{self.node.id}' gives a file, not a PyTorch model")
            model = given.model.float().eval()
            for p in model.parameters():
                p.requires_grad_(False)
            self._inputs[role] = model
        return self._inputs[role]

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.engine.tracker.log_metrics(self.run_id, {self.prefix + k: v for k, v in metrics.items()}, step)

    def epoch_state_due(self, epoch: int) -> bool:
        """Should the trainer build and save its epoch state now? The stage's `checkpoint_every` decides which
        states are uploaded (what a resume elsewhere can lose); in between, states are kept on this machine
        (what a resume here can lose), each kind as often as costs about 3% of the training time."""
        if self.prefix:  # fine-tuning inside a multi-step stage: the stage checkpoints per step instead
            return False
        self.upload_due = self.cadence.due(epoch)
        return self.upload_due or self.local_cadence.due(epoch)

    @timed("epoch checkpoints")
    def save_epoch_state(self, state: dict, epoch: int) -> None:
        """Keep a resumable state of `epoch` on this machine, and upload it when the cadence said so (a trainer
        asks epoch_state_due first; prune, which does not, uploads every step)."""
        if self.prefix:
            return
        upload, self.upload_due = self.upload_due, True
        if not upload:  # this machine only: the newest state, for a resume here (which falls back to the store's)
            started = self.local_cadence.clock()
            save_checkpoint(
                {"cache_key": self.node.cache_key, **state}, local_latest_state(self.node.cache_key), durable=False
            )
            self.local_cadence.written(epoch, started)
            return
        started = self.cadence.clock()
        slot, self.next_slot = self.next_slot, 1 - self.next_slot
        # kept on this machine after a crash (not in the run's scratch folder): a resume here needs no download
        path = local_epoch_state(self.node.cache_key, slot)
        sha = save_checkpoint({"cache_key": self.node.cache_key, **state}, path)
        self.engine.tracker.log_artifact(self.run_id, path, f"epoch/{slot}")
        # after the upload, never before: a crash in between leaves the tags on the other, intact slot
        self.engine.tracker.set_tags(self.run_id, {T.EPOCH: epoch, T.EPOCH_SHA: sha, T.EPOCH_SLOT: slot})
        self.cadence.written(epoch, started)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.engine.tracker.log_artifact(self.run_id, path, folder)

    def warn(self, message: str) -> None:
        self.engine.announce(f"[warn]   {self.stage_id}: {message}")
        self.engine.tracker.set_tags(self.run_id, {T.WARNING: message[:5000]})

    @timed("plots")
    def log_plot(self, figure: Any, name: str) -> None:
        self.engine.tracker.log_figure(self.run_id, figure, name)
        import matplotlib.pyplot as plt

        plt.close(figure)

    def progress(self, description: str, total: int) -> Callable[[int], None]:
        return self.engine.progress(f"{self.node.id}: {self.prefix}{description}", total)

    def nested(self, prefix: str) -> RunningStage:
        child = RunningStage(
            self.engine, self.node, self.run_id, self.workdir, StageInput(), None, f"{self.prefix}{prefix}/"
        )
        child._inputs = self._inputs  # a teacher is loaded once per stage, not once per prune step
        return child


@dataclass
class StageInput:
    """What a stage receives from its parent: a module or a verified file, and the parent's metrics."""

    model: Any = None
    file: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class Engine:
    """Schedules a plan's stages onto an executor and is the StageRunner it hands them to (executors/__init__.py).
    Without an executor, stages run in this process, one at a time (a library caller's default; the CLI always
    passes one)."""

    def __init__(
        self,
        plan: Plan,
        progress: ProgressFactory,
        announce: Callable[[str], None] = print,
        on_error: OnError = "stop",
        executor: Executor | None = None,
    ):
        self.plan = plan
        self.tracker = plan.tracker
        self.progress = progress
        self.announce = announce
        self.on_error, self.executor = on_error, executor or SequentialExecutor()
        self.outputs: dict[str, Any] = {}  # node id -> model or file, for stages that ran in this process
        self.sources: dict[str, T.StageRun] = {}  # node id -> the finished run holding its checkpoint or file
        self.run_ids: dict[str, str] = {}  # node id -> the run that made its output in this process
        self.metrics: dict[str, dict[str, float]] = {}  # node id -> the metrics its run logged
        self.family = plan.family
        self.data = plan.data
        self.steps = 0  # the parent run's pipeline chart: one step per finished stage, across schedule() calls

    def run(self) -> list[StageReport]:
        recipe = self.plan.recipe
        name = R.parent_run_name(recipe.name)
        parent_id = self.tracker.start_run(
            R.unique_name(name, self.tracker.recipe_run_names(name)),
            {
                T.ROLE: "recipe",
                T.RECIPE_NAME: recipe.name,
                T.RECIPE_SHA: recipe.sha256,
                T.NOTE: recipe.description,
            },
        )
        self.tracker.log_dataset(parent_id, R.dataset_input(self.data, "recipe"))
        self.tracker.log_text(parent_id, recipe.text, f"recipe/{recipe.path.name}")
        self.tracker.log_text(parent_id, json.dumps(self.lock(), indent=2, default=str), "recipe/recipe.lock.json")
        self.tracker.log_params(
            parent_id,
            {
                "recipe": recipe.name,
                "seed": recipe.seed,
                "model": recipe.model.source,
                "data": recipe.data,
                "overrides": " ".join(recipe.overrides),
            },
        )
        for note in self.plan.notes:
            self.announce(f"[note]   {note}")
        scratch = Path(tempfile.mkdtemp(prefix="recipe-runner-"))
        reports: list[StageReport] = []
        status = "FAILED"
        try:
            if recipe.search is not None:
                from .search import run_search

                run_search(self, parent_id, scratch, reports)  # the shared stages, then the trials as asked
            else:
                self.schedule(parent_id, scratch, reports)
            status = "FAILED" if any(r.action == "failed" for r in reports) else "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            self.executor.cancel()
            raise
        except BaseException:
            self.executor.cancel()  # on_error='stop': stages running elsewhere end KILLED, resumable
            raise
        finally:
            try:
                self._describe(parent_id, reports, status)
            finally:
                self.tracker.finish(parent_id, status)
            shutil.rmtree(scratch, ignore_errors=True)
        if status == "FAILED":
            raise RunFailed(reports)
        return reports

    def schedule(
        self,
        parent_id: str,
        scratch: Path,
        reports: list[StageReport],
        stages: list[PlannedStage] | None = None,
        on_error: OnError | None = None,
        label: str = "stages",
    ) -> None:
        """Hand every stage (of `stages`, default the plan's) whose parent is done to the executor, until none is
        left; apply the error policy (default the engine's). A parent outside `stages` must be done already."""
        on_error = on_error or self.on_error
        waiting = [s for s in (self.plan.stages if stages is None else stages) if s.action != "skip"]
        advance = self.progress(label, len(waiting))
        done: set[str] = set(self.outputs) | set(self.sources)
        blocked: dict[str, str] = {}  # node id -> the failed stage it depends on (itself, if it failed)
        running = 0
        while waiting or running:
            for planned in list(waiting):  # plan order is topological: a parent is judged before its children
                node = planned.node
                failed = [n for n in node.upstream() if n in blocked]
                if failed:
                    waiting.remove(planned)
                    blocked[node.id] = blocked[failed[0]]
                    reports.append(StageReport(node.id, "skipped", "", {}, 0.0, f"after failed {blocked[node.id]}"))
                    self.announce(f"[skip]   {node.id}  (its ancestor {blocked[node.id]} failed)")
                    advance(1)
                elif all(n in done for n in node.upstream()):
                    waiting.remove(planned)
                    self.executor.submit(self, planned, parent_id, scratch / node.cache_key)
                    running += 1
            if not running:
                if waiting:  # unreachable for a graph in topological order; never wait on nothing
                    raise RuntimeError(f"no stage can start: {[s.node.id for s in waiting]}")
                break  # the last stages left were skipped
            for finished in self.executor.wait():
                running -= 1
                node_id = finished.planned.node.id
                advance(1)
                if finished.error is not None:
                    if on_error == "stop":
                        raise finished.error
                    blocked[node_id] = node_id
                    reports.append(StageReport(node_id, "failed", finished.error.run_id, {}, 0.0, str(finished.error)))
                    self.announce(f"[fail]   {finished.error}")
                    continue
                report = finished.report
                if finished.source is not None:  # ran in another process: children fetch its output from the store
                    self.sources[node_id], self.metrics[node_id] = finished.source, report.metrics
                done.add(node_id)
                reports.append(report)
                # one step per stage, in run order: the parent run's own chart of the pipeline
                pipeline = R.pipeline_metrics(report.metrics, self.family.primary_metric)
                self.tracker.log_metrics(parent_id, pipeline, self.steps)
                self.steps += 1

    def run_stage(self, planned: PlannedStage, parent_id: str, workdir: Path) -> StageReport:
        """Reuse, resume or run one stage whose parent is done, in this process (an executor calls it): claim the
        key, then reuse its finished run, or execute it and close the attempts it took over."""
        started = time.time()
        workdir.mkdir(parents=True, exist_ok=True)
        tags = self._stage_tags(planned)
        planned, claim = self._claim(planned, tags, parent_id)
        if planned.action == "reuse":
            return self._reuse(planned, tags, parent_id, started)
        # attempts that were cut off (their leases were stale when we claimed the key, leases.py): the one we
        # continue (or fail to), and any that died before writing an epoch checkpoint
        cut_off = list(claim.dead)
        if planned.action == "resume" and planned.source.status == "RUNNING":
            cut_off.append(planned.source)
        try:
            action, result, metrics = self._execute(planned, claim.run_id, workdir)
        finally:
            claim.release()
        self._close_cut_off(cut_off, parent_id)
        node = planned.node
        self.outputs[node.id] = result
        self.metrics[node.id] = metrics
        self.run_ids[node.id] = claim.run_id
        return StageReport(node.id, action, claim.run_id, metrics, time.time() - started)

    def _stage_tags(self, planned: PlannedStage) -> dict[str, Any]:
        """The tags of a stage run: its key, names, recipe, action, and which runs hold its inputs."""
        node = planned.node
        tags = {
            T.ROLE: "stage",
            T.CACHE_KEY: node.cache_key,
            T.STAGE_ID: node.stage_id,
            T.NODE_ID: node.id,
            T.STAGE_TYPE: node.type,
            T.RECIPE_NAME: self.plan.recipe.name,
            T.RECIPE_SHA: self.plan.recipe.sha256,
            T.ACTION: planned.action,
            T.RUN_NAME: R.run_name(node.stage_id, node.sweep),
        }
        for role, input_id in node.inputs.items():  # e.g. the teacher: which stage, and which run holds its model
            tags.update({T.input_stage(role): input_id, T.input_run(role): self.output_run(input_id)})
        return tags

    def _claim(self, planned: PlannedStage, tags: dict[str, Any], parent_id: str) -> tuple[PlannedStage, leases.Claim]:
        """Take the stage's key (leases.py) and decide its action now, not at plan time: another process may have
        finished or started this key meanwhile. A planned reuse claims nothing. Updates tags' action."""
        node = planned.node
        if planned.action == "reuse":
            return planned, leases.Claim()
        claim = leases.acquire(
            self.tracker,
            node.id,
            node.cache_key,
            {**tags, **V.version_tags()},
            parent_id,
            planned.forced,
            self.announce,
            done=T.done_tag(self.plan.graph.gives(node.id)),
        )
        source = claim.reuse or claim.resume
        planned = PlannedStage(node, "reuse" if claim.reuse else "resume" if claim.resume else "run", source)
        tags[T.ACTION] = planned.action
        return planned, claim

    def _reuse(self, planned: PlannedStage, tags: dict[str, Any], parent_id: str, started: float) -> StageReport:
        """Record a finished run's output as this stage's: a run tagged 'reused' with its metrics, nothing trained."""
        node, source = planned.node, planned.source
        # latency is a property of a machine: say when the reused measurements come from another one
        host = source.tags.get(T.LEASE_HOST)
        elsewhere = {T.MEASURED_ON: host} if host and host != leases.me().host else {}
        # the model was made by the source run's versions, not by the installed ones
        run_id = self.tracker.start_run(
            node.id,
            {**tags, **V.recorded(source.tags), T.ROLE: "reused", T.REUSED_FROM: source.run_id, **elsewhere},
            parent_id,
        )
        self.tracker.log_params(run_id, _params(node))
        self.tracker.log_dataset(run_id, R.dataset_input(self.data, node.type))
        metrics = {**source.metrics, "epochs_trained": 0.0}
        self.tracker.log_metrics(run_id, metrics)
        self.tracker.finish(run_id)
        self.sources[node.id] = source
        self.metrics[node.id] = metrics
        other = V.differences(source.tags)
        note = f"  made with {', '.join(other)}" if other else ""
        note += f"  latency measured on {host}, not here" if elsewhere else ""
        self.announce(f"[reuse]  {node.id}  (run {source.run_id[:8]}){note}")
        return StageReport(node.id, "reuse", run_id, metrics, time.time() - started)

    def _execute(self, planned: PlannedStage, run_id: str, workdir: Path) -> tuple[str, Any, dict[str, float]]:
        """Run the stage in its claimed run (resuming when it can), record its output and finish the run; returns
        the action taken, the output and its metrics. A failure ends the run FAILED (StageFailed), Ctrl-C KILLED."""
        node = planned.node
        try:
            self.tracker.log_params(run_id, _params(node))
            self.tracker.log_dataset(run_id, R.dataset_input(self.data, node.type))
            planned, resume_state = self._resume_state(planned, run_id, workdir)
            parent = self.input_of(node.parent, workdir) if node.parent else self.root_input()
            ctx = RunningStage(self, node, run_id, workdir, parent, resume_state)
            if resume_state is not None:  # this machine's copy of the resumed slot stays intact until the next write
                ctx.next_slot = _other_slot(planned.source.tags)
            output = STAGES.get(node.type).run(ctx, node.config)
            metrics = dict(output.metrics)
            metrics["epochs_trained"] = float(output.epochs_trained)
            if self.plan.graph.gives(node.id) == "file":
                result = self._record_file(node, run_id, output, metrics)
            else:
                result = self._record_model(node, run_id, workdir, output, metrics)
            self.tracker.finish(run_id)
            # finished: nothing will resume from its epoch checkpoints (the store keeps them)
            shutil.rmtree(local_epoch_state(node.cache_key, 0).parent.parent, ignore_errors=True)
        except KeyboardInterrupt:
            self.tracker.finish(run_id, "KILLED")
            raise
        except Exception as exc:
            self.tracker.set_tags(run_id, {T.ERROR: f"{type(exc).__name__}: {exc}"[:5000]})
            self.tracker.finish(run_id, "FAILED")
            raise StageFailed(node.id, exc, run_id) from exc
        return planned.action, result, metrics

    def _resume_state(self, planned: PlannedStage, run_id: str, workdir: Path) -> tuple[PlannedStage, dict | None]:
        """The verified epoch state a resume continues from, or none (a resume that cannot verify one runs from the
        start); tags the run with the final action and says which it is."""
        node = planned.node
        resume_state = None
        if planned.action == "resume":
            try:
                imgsz = node.config.imgsz if isinstance(node.config, TrainingKnobs) else 64
                resume_state = self._load_epoch_state(planned.source, workdir, imgsz)
            except (CheckpointError, OSError, MlflowException) as exc:  # not verified: not trusted; start over
                self.announce(
                    f"[warn]   {node.id}: cannot resume run {planned.source.run_id[:8]} ({exc}); starting over"
                )
                planned = PlannedStage(node, "run")
        # the claim run was created before the action was final
        self.tracker.set_tags(run_id, {T.ACTION: planned.action})
        if resume_state is not None:
            self.tracker.set_tags(
                run_id, {T.RESUMED_FROM: planned.source.run_id, T.RESUMED_EPOCH: resume_state["epoch"]}
            )
            self.announce(f"[resume] {node.id}  from epoch {resume_state['epoch']} of run {planned.source.run_id[:8]}")
        else:
            self.announce(f"[run]    {node.id}")
        return planned, resume_state

    def _close_cut_off(self, cut_off: list[T.StageRun], parent_id: str) -> None:
        """Mark KILLED the cut-off attempts this stage took over, and their recipe runs."""
        for dead in cut_off:
            self.tracker.finish(dead.run_id, "KILLED")
            self._finish_dead_recipe_run(dead.tags.get(T.PARENT_RUN), parent_id)

    # -- the StageRunner seam (executors/__init__.py) ---------------------------------------------------------------
    def known_output(self, node_id: str) -> KnownOutput:
        """Where a done node's output is for a stage run in another process: its finished run, if known here."""
        return self.sources.get(node_id), self.metrics.get(node_id, {})

    def elsewhere(self) -> RunnerFactory:
        return stage_runner

    def output_run(self, node_id: str) -> str:
        """The id of the finished run that holds a done node's output ("" if unknown)."""
        source = self.sources.get(node_id)
        return source.run_id if source is not None else self.run_ids.get(node_id, "")

    def _finish_dead_recipe_run(self, run_id: str | None, own_id: str) -> None:
        """Mark KILLED the recipe run of a cut-off attempt we took over, else it shows as running forever.

        Its process is gone (its stage's lease was stale) and one process runs one stage at a time, so no
        live stage of it remains.
        """
        if run_id and run_id != own_id:
            if self.tracker.client.get_run(run_id).info.status == "RUNNING":
                self.tracker.finish(run_id, "KILLED")

    def _record_model(self, node: StageNode, run_id: str, workdir: Path, output: StageOutput, metrics: dict) -> Any:
        """Evaluate the output module, checkpoint it as plain data, log both; the sha256 tag goes last."""
        if output.model is None:
            raise TypeError(f"stage type '{node.type}' gives a model but its run returned none")
        problems = handoff_problems(output.model)
        if problems:
            raise TypeError(
                f"stage type '{node.type}' returned a model that is not on the CPU in fp32, as stages hand "
                f"models over: {'; '.join(problems)}"
            )
        if output.evaluate_output:
            metrics.update(self.evaluate(output.model, node.config, output.evaluation))
        path = workdir / "checkpoint" / "model.pt"
        with section("stage checkpoints"):
            sha = save_checkpoint({"cache_key": node.cache_key, "model": self.family.describe(output.model)}, path)
        metrics["size_mb"] = path.stat().st_size / 1e6
        self.tracker.log_metrics(run_id, metrics, output.final_step)
        self.tracker.log_artifact(run_id, path, "checkpoint")
        self.tracker.set_tags(run_id, {T.CHECKPOINT_SHA: sha})
        return output.model

    def _record_file(self, node: StageNode, run_id: str, output: StageOutput, metrics: dict) -> Path:
        """Upload the output file itself (no PyTorch checkpoint); its sha256 tag, set last, marks the run done."""
        if output.file is None or not Path(output.file).is_file():
            raise TypeError(f"stage type '{node.type}' gives a file but its run returned none")
        path = Path(output.file)
        metrics["size_mb"] = path.stat().st_size / 1e6
        model_id = None
        # a stage that makes an .onnx file also logs it as an MLflow model (ONNX flavour), listed in MLflow's model
        # views with its metrics; a pass-through stage (evaluate, benchmark) hands on its parent's, logged there
        if path.suffix == ".onnx" and STAGES.get(node.type).gives == "file":
            model_id = self.tracker.log_onnx_model(run_id, path, node.stage_id, output.final_step)
        self.tracker.log_metrics(run_id, metrics, output.final_step, model_id)
        self.tracker.log_artifact(run_id, path, "output")
        self.tracker.set_tags(run_id, {T.OUTPUT_SHA: sha256_of(path), T.OUTPUT_ARTIFACT: f"output/{path.name}"})
        return path

    def _describe(self, parent_id: str, reports: list[StageReport], status: str) -> None:
        """The parent run's description: the recipe's own text, then a table of the stages this run went through."""
        nodes = [self.plan.graph.nodes[r.node_id] for r in reports]
        rows = [
            R.StageRow(R.run_name(n.stage_id, n.sweep), n.type, r.action, r.metrics) for n, r in zip(nodes, reports)
        ]
        table = R.stage_table(rows, self.family.primary_metric)
        self.tracker.set_tags(parent_id, {T.NOTE: R.description(self.plan.recipe.description, table, status)})

    def evaluate(self, model: Any, config: Any, measured: dict[str, float] | None = None) -> dict[str, float]:
        """The standard evaluation; `measured`: the family's accuracy metrics of this model, already taken."""
        metrics = dict(measured) if measured is not None else dict(self.family.evaluate(model, self.data, config))
        metrics.update(self.family.cost(model, config.imgsz))
        metrics["gflops"] = 2 * metrics["macs"] / 1e9  # Ultralytics' convention: one MAC is two FLOPs
        metrics["latency_ms"] = self.family.latency(model, config.imgsz)
        metrics["sparsity"] = weight_sparsity(model)
        return metrics

    def root_input(self) -> StageInput:
        """A first stage's parent: the model as given by `model:` (built, or loaded with its weights, by the family)."""
        recipe = self.plan.recipe
        return StageInput(model=self.family.build(recipe.model.source, self.data, recipe.seed))

    @timed("stage inputs")
    def input_of(self, node_id: str, workdir: Path) -> StageInput:
        """A stage's output for its child: in memory if it ran here, else fetched from MLflow and verified."""
        gives = self.plan.graph.gives(node_id)
        if node_id not in self.outputs:
            source = self.sources[node_id]
            if gives == "file":
                suffix = self.plan.graph.file_suffix(node_id)
                self.outputs[node_id] = self._verified_file(source, workdir / "parent", suffix)
            else:
                path = self.tracker.download(source.run_id, T.CHECKPOINT_ARTIFACT, workdir / "parent")
                payload = load_checkpoint(path, source.tags.get(T.CHECKPOINT_SHA))
                self.outputs[node_id] = self.family.rebuild(payload["model"])
        metrics = dict(self.metrics.get(node_id, {}))
        if gives == "file":
            return StageInput(file=self.outputs[node_id], metrics=metrics)
        # a child must not change its parent's output (branches share it)
        return StageInput(model=copy.deepcopy(self.outputs[node_id]), metrics=metrics)

    def _verified_file(self, source: T.StageRun, dest: Path, suffix: str) -> Path:
        """The run's output file, checked against its sha256 tag and renamed to `model<suffix>`.

        Both tags are written by whoever can write to the store, so the sha256 proves integrity, not origin: the
        runner, not the tag, names the file a runtime sees (Ultralytics picks its loader from the file name, and
        unpickles a *.pt). The tag must name output/<plain name><suffix>, the suffix the stage type writes."""
        artifact = source.tags.get(T.OUTPUT_ARTIFACT, "")
        folder, _, name = artifact.partition("/")
        if folder != "output" or not OUTPUT_NAME.fullmatch(name) or not name.endswith(suffix):
            raise CheckpointError(
                f"run {source.run_id[:8]} records its output as {artifact[:120]!r}; this stage's "
                f"output is output/<name>{suffix} (letters, digits, '_', '-'): refusing to fetch it"
            )
        download = self.tracker.download(source.run_id, artifact, dest / "download")
        if sha256_of(download) != source.tags.get(T.OUTPUT_SHA):
            raise CheckpointError(
                f"output file {download} of run {source.run_id[:8]} does not match its recorded sha256"
            )
        path = dest / f"model{suffix}"
        download.replace(path)
        return path

    def _load_epoch_state(self, source: T.StageRun, workdir: Path, imgsz: int) -> dict:
        """The newest verified epoch state: the one the tags name (this machine's copy if its sha256 matches,
        else the store's), or this machine's newest state between uploads when it is further on."""
        key = source.tags.get(T.CACHE_KEY, "")
        latest = _local_latest(key)
        try:
            tagged = self._tagged_epoch_state(source, workdir, key, imgsz)
        except (CheckpointError, OSError, MlflowException):
            if latest is None:
                raise
            tagged = None
        # the tagged state was probed when loaded; this machine's newer one is probed only when it would be used
        problem = None
        if latest is not None and (tagged is None or latest["epoch"] > tagged["epoch"]):
            problem = self._unusable(latest, imgsz)
            if problem is None:
                self.announce(
                    f"[resume] {source.tags.get(T.NODE_ID, '')}: epoch {latest['epoch']}'s state found on "
                    f"this machine (the store has {tagged['epoch'] if tagged else 'none that verifies'})"
                )
                return latest
        if tagged is None:
            raise CheckpointError(f"this machine's epoch state of run {source.run_id[:8]} holds a model that {problem}")
        return tagged

    def _tagged_epoch_state(self, source: T.StageRun, workdir: Path, key: str, imgsz: int) -> dict:
        slot, expected = epoch_slot(source.tags), source.tags.get(T.EPOCH_SHA)
        local = local_epoch_state(key, slot)
        if expected and local.is_file() and sha256_of(local) == expected:
            self.announce(f"[resume] {source.tags.get(T.NODE_ID, '')}: epoch checkpoint found on this machine")
            state = load_checkpoint(local, expected)
        else:
            state = load_checkpoint(
                self.tracker.download(source.run_id, T.epoch_artifact(slot), workdir / "resume"), expected
            )
        if not _state_of(state, key):
            found = f"cache key {str(state.get('cache_key'))[:12]}, epoch {str(state.get('epoch'))[:12]}"
            raise CheckpointError(f"the epoch checkpoint of run {source.run_id[:8]} is not one of this stage ({found})")
        problem = self._unusable(state, imgsz)
        if problem is not None:
            raise CheckpointError(f"the epoch checkpoint of run {source.run_id[:8]} holds a model that {problem}")
        return state

    def _unusable(self, state: dict, imgsz: int) -> str | None:
        """Why the state's model does not rebuild and run one image at imgsz, or None. Its sha256 proves only that
        it is the file that was recorded; one written by a faulty writer or an incompatible version must start
        the stage over, not fail it halfway through a resume."""
        import torch

        try:
            model = self.family.rebuild(state["model"]).eval()
            with torch.no_grad():
                model(self.family.example_inputs(model, imgsz))
        except Exception as exc:  # whatever rebuilding or running raises, the state is unusable
            return f"does not rebuild and run ({type(exc).__name__}: {str(exc)[:200]})"
        return None

    def lock(self) -> dict[str, Any]:
        """Everything needed to reproduce this run: resolved configs, keys, versions, data, seed, git commit."""
        recipe, graph = self.plan.recipe, self.plan.graph
        versions = {"python": platform.python_version()}
        for name in PACKAGES:
            try:
                versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                pass
        return {
            "recipe": recipe.name,
            "recipe_file": str(recipe.path),
            "recipe_sha256": recipe.sha256,
            "overrides": recipe.overrides,
            "seed": recipe.seed,
            "model": recipe.model.model_dump(),
            # the local files by content (reproduce checks a custom module's file against it before importing it)
            "model_identity": next(n.identity["parent"]["model"] for n in graph.nodes.values() if n.parent is None),
            "model_notes": self.plan.notes,
            "preprocessing": self.family.preprocessing(),
            "data": {"spec": recipe.data, "fingerprint": self.data.fingerprint, "classes": self.data.names},
            "stages": {
                n.id: {
                    "type": n.type,
                    "parent": n.parent,
                    **({"inputs": n.inputs} if n.inputs else {}),
                    "cache_key": n.cache_key,
                    "sweep": n.sweep,
                    "config": n.config.model_dump(mode="json", by_alias=True),
                }
                for n in graph.nodes.values()
            },
            "versions": versions,
            "git_commit": _git_commit(recipe.path.parent),
            "runner_git_commit": V.runner_commit(),
        }


def stage_runner(plan: Plan, announce: Callable[[str], None], known: dict[str, KnownOutput]) -> Engine:
    """An Engine that runs single stages in another process (a Ray worker): no progress display, and the done
    outputs its stage reads (parent, inputs) found through their finished runs."""
    runner = Engine(plan, lambda description, total: lambda n: None, announce=announce)
    for node_id, (source, metrics) in known.items():
        if source is not None:
            runner.sources[node_id] = source
        runner.metrics[node_id] = metrics
    return runner


#: the name part of a file stage's output artifact (output/<name>): plain characters, a suffix a runtime reads as data
OUTPUT_NAME = re.compile(r"[A-Za-z0-9_\-]{1,100}\.(onnx|openvino)")


def epoch_slot(tags: dict[str, str]) -> int:
    """The epoch-checkpoint slot a run's tags name; a garbled one is an unverifiable checkpoint (start over)."""
    raw = tags.get(T.EPOCH_SLOT, "0")
    if raw not in ("0", "1"):
        raise CheckpointError(f"epoch-slot tag {str(raw)[:20]!r} is neither 0 nor 1")
    return int(raw)


def _other_slot(tags: dict[str, str]) -> int:
    """The slot a resumed stage writes first: not the one the tags name (a garbled tag names none)."""
    try:
        return 1 - epoch_slot(tags)
    except CheckpointError:
        return 0


def local_epoch_state(cache_key: str, slot: int) -> Path:
    """Where a stage's epoch checkpoints are written before their upload, and stay until the stage finishes."""
    return cache_root() / "epochs" / cache_key / str(slot) / "state.pt"


def local_latest_state(cache_key: str) -> Path:
    """The newest epoch state written on this machine and not uploaded (between the cadence's uploads)."""
    return cache_root() / "epochs" / cache_key / "latest" / "state.pt"


def _state_of(state: dict, cache_key: str) -> bool:
    return state.get("cache_key") == cache_key and isinstance(state.get("epoch"), int)


def _local_latest(cache_key: str) -> dict | None:
    """This machine's newest unuploaded state of the key, if it loads (written here: no sha256 to check against;
    still loaded as plain data)."""
    path = local_latest_state(cache_key)
    if not cache_key or not path.is_file():
        return None
    try:
        state = load_checkpoint(path, sha256_of(path))
    except (CheckpointError, OSError):
        return None
    return state if _state_of(state, cache_key) else None


def _params(node: StageNode) -> dict[str, Any]:
    """A stage run's params: its resolved config, and the sweep values that made this copy (also when reused)."""
    return {**node.params(), **{f"sweep.{k}": v for k, v in node.sweep.items()}}


def _git_commit(folder: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder or ".", capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
