"""Run a recipe's search: the shared stages once, then trials asked from the study in batches of `parallel`.

Each trial is a copy of the searched stages and their descendants (StageGraph.add_trials) run through the
engine like any stage: reused, resumed or run by cache key, each its own MLflow run. A trial whose stage fails
is told as failed and the search goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from ..outcomes import SearchFailed, StageReport
from ..persistence import Tracker
from ..planner import Plan, PlannedStage, plan_stage
from . import report
from .study import Study, TrialRecord, best


class Engine(Protocol):
    """What a search needs of the engine that drives it (engine.py's Engine): the search sits below the engine
    and never imports it."""

    plan: Plan
    tracker: Tracker
    outputs: dict[str, Any]
    announce: Callable[[str], None]

    def schedule(
        self,
        parent_id: str,
        scratch: Path,
        reports: list[StageReport],
        stages: list[PlannedStage] | None = None,
        on_error: Literal["stop", "keep-going"] | None = None,
        label: str = "stages",
    ) -> None: ...


def run_search(engine: Engine, parent_id: str, scratch: Path, reports: list[StageReport]) -> None:
    plan = engine.plan
    engine.schedule(parent_id, scratch, reports)  # the stages above the search, shared by every trial
    if any(r.action == "failed" for r in reports):
        return  # --keep-going: the shared stages failed, so no trial can run; the engine reports the run FAILED
    shared = {n.stage_id: n.id for n in plan.graph.nodes.values() if "trial" not in n.sweep}
    searched = set(plan.recipe.stages) - set(shared)  # the stages each trial copies
    if plan.options.only and not searched & {name.split("[", 1)[0] for name in plan.options.only}:
        engine.announce("[search] --only names no searched stage (or one below it): no trials run")
        return
    study = Study(plan.recipe)
    records: list[TrialRecord] = []
    run_ids = {r.node_id: r.run_id for r in reports}
    total = study.total
    if total < study.config.trials:
        engine.announce(f"[search] the grid has {total} points: {total} trials, not {study.config.trials}")
    while len(records) < total:
        batch = [study.ask() for _ in range(min(study.config.parallel, total - len(records)))]
        stages = _plan_trials(plan, batch)
        done: list[StageReport] = []
        first, last = batch[0].number + 1, batch[-1].number + 1
        label = f"trial {first} of {total}" if first == last else f"trials {first}-{last} of {total}"
        # one trial's failure must not stop the others: it is told to the sampler as failed
        engine.schedule(parent_id, scratch, done, stages, on_error="keep-going", label=label)
        for record in batch:
            mine = [r for r in done if plan.graph.nodes[r.node_id].sweep.get("trial") == record.number]
            _judge(engine, study, record, mine, {**shared, **_trial_nodes(plan, record.number)}, run_ids)
            study.tell(record)
            records.append(record)
            reports.extend(r for r in mine if r.action not in ("failed", "skipped"))
            for r in mine:
                engine.outputs.pop(r.node_id, None)  # a finished trial's models are not needed again
            engine.announce(
                report.progress_line(record, len(records), total, best(records, study.objectives), study.objectives)
            )
    report.record(engine.tracker, parent_id, study, records)
    if not best(records, study.objectives):
        failed = sum(r.state != "COMPLETE" for r in records)
        raise SearchFailed(
            f"no feasible trial: none of {len(records)} trial(s) met every constraint "
            f"({', '.join(study.config.constraints) or 'none'}); {failed} failed. Every trial is kept "
            "in MLflow: loosen a constraint or raise search.trials and run again (finished trials are "
            "reused)",
            reports,
        )


def _plan_trials(plan: Plan, batch: list[TrialRecord]) -> list[PlannedStage]:
    """Plan a batch's new trial nodes; `--force` reaches them through a forced stage above or a searched stage
    named (with everything below it)."""
    nodes = plan.graph.add_trials({record.number: record.params for record in batch})
    forced = {s.node.id for s in plan.stages if s.forced}
    named = set(plan.options.force)
    stages = []
    for node in nodes:  # parents first
        if node.parent in forced or node.stage_id in named or node.id in named:
            forced.add(node.id)
            stages.append(PlannedStage(node, "run", forced=True))
        else:
            stages.append(plan_stage(plan.tracker, plan.graph, node))
    plan.stages.extend(stages)
    return stages


def _trial_nodes(plan: Plan, number: int) -> dict[str, str]:
    """stage id -> this trial's node id."""
    return {n.stage_id: n.id for n in plan.graph.nodes.values() if n.sweep.get("trial") == number}


def _judge(
    engine: Engine,
    study: Study,
    record: TrialRecord,
    mine: list[StageReport],
    node_of: dict[str, str],
    run_ids: dict[str, str],
) -> None:
    """The trial's values, read back from the stage runs in MLflow (a re-run reads the very numbers it told)."""
    record.actions = {r.node_id: r.action for r in mine}
    record.runs = {r.node_id: r.run_id for r in mine if r.run_id}
    broken = [r for r in mine if r.action == "failed"]
    if broken or len(mine) < len(_trial_nodes(engine.plan, record.number)):
        record.state, record.error = "FAIL", "; ".join(r.error for r in broken) or "a stage of the trial did not run"
        return
    ids = {**run_ids, **record.runs}
    metrics = {
        node: dict(engine.tracker.client.get_run(ids[node]).data.metrics)
        for node in set(node_of.values())
        if node in ids
    }
    study.judge(record, metrics, node_of)


@dataclass
class Preview:
    """What `recipe plan` shows of a search: the trials MLflow already holds, the next ones asked, the rest."""

    study: Study
    found: list[TrialRecord]
    asked: list[TrialRecord]
    stages: list[PlannedStage]
    note: str | None = None


def preview(plan: Plan) -> Preview:
    """Replay the study against MLflow without running anything: trials whose every stage is finished are told
    their recorded values; the first batch that is not is shown with its sampled values and actions."""
    study = Study(plan.recipe)
    shared = {s.node.stage_id: s for s in plan.stages if "trial" not in s.node.sweep}
    found: list[TrialRecord] = []
    while len(found) < study.total:
        batch = [study.ask() for _ in range(min(study.config.parallel, study.total - len(found)))]
        stages = _plan_trials(plan, batch)
        if any(s.action != "reuse" for s in stages) or any(s.action != "reuse" for s in shared.values()):
            return Preview(study, found, batch, stages)
        for record in batch:
            mine = {s.node.stage_id: s for s in stages if s.node.sweep.get("trial") == record.number}
            both = {**shared, **mine}
            metrics = {s.node.id: s.source.metrics for s in both.values() if s.source is not None}
            study.judge(record, metrics, {sid: s.node.id for sid, s in both.items()})
            study.tell(record)
            found.append(record)
    return Preview(study, found, [], [])
