"""What a search leaves on the parent run: the best trial (or the Pareto front) as tags, a trials table,
search.png, and one console line per trial."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import persistence as T
from ..recipe import Objective, parse_constraint
from .study import Study, TrialRecord, best

TABLE = "search/trials.json"
PLOT = "search/search.png"


def progress_line(
    record: TrialRecord, done: int, total: int, leaders: list[TrialRecord], objectives: list[Objective]
) -> str:
    values = ", ".join(f"{k}={_num(v)}" for k, v in record.params.items())
    if record.state != "COMPLETE":
        outcome = f"FAILED: {record.error}"
    else:
        outcome = ", ".join(f"{k}={_num(v)}" for k, v in record.values.items())
        outcome += (
            ""
            if record.feasible
            else "  (infeasible: "
            + ", ".join(_unmet(k, record.constraints[k], v) for k, v in record.violations.items() if v > 0)
            + ")"
        )
    if not leaders:
        lead = "no feasible trial yet"
    elif len(objectives) == 1:
        lead = f"trial {leaders[0].number} {objectives[0].name}={_num(leaders[0].values[objectives[0].name])}"
    else:
        lead = "Pareto front: trials " + ", ".join(str(r.number) for r in leaders)
    return f"[search] trial {done} of {total} (trial={record.number}: {values}) -> {outcome}; best so far: {lead}"


def _unmet(text: str, measured: float, violation: float) -> str:
    """'int8.mAP50-95 is 0.2344, needs >= 0.4277': the measured value and the limit it missed (a relative bound's
    limit is this trial's own reference value times the factor)."""
    constraint = parse_constraint(text)
    limit = measured + violation if constraint.op == ">=" else measured - violation
    return f"{constraint.name} is {_num(measured)}, needs {constraint.op} {_num(limit)}"


def record(tracker: T.Tracker, parent_id: str, study: Study, records: list[TrialRecord]) -> None:
    """Tags, metrics, the trials table and search.png on the recipe's parent run."""
    leaders = best(records, study.objectives)
    tags: dict[str, Any] = {T.PARETO_TRIALS: ",".join(str(r.number) for r in leaders)}
    if leaders and len(study.objectives) == 1:
        top = leaders[0]
        tags.update(
            {
                T.BEST_TRIAL: top.number,
                T.BEST_TRIAL_RUNS: json.dumps(top.runs),
                T.BEST_TRIAL_VALUES: json.dumps(top.values),
                T.BEST_TRIAL_PARAMS: json.dumps(top.params),
            }
        )
        tracker.log_metrics(parent_id, {f"search.best.{k}": v for k, v in top.values.items()})
    tracker.set_tags(parent_id, tags)
    tracker.client.log_table(parent_id, table(records, leaders), TABLE)
    tracker.log_figure(parent_id, figure(records, leaders, study.objectives), PLOT)


def table(records: list[TrialRecord], leaders: list[TrialRecord]) -> dict[str, list]:
    """Column -> values, one row per trial (mlflow.log_table's dict form)."""
    names = list(dict.fromkeys(k for r in records for k in r.params))
    values = list(dict.fromkeys(k for r in records for k in r.values))
    limits = list(dict.fromkeys(k for r in records for k in r.constraints))
    chosen = {r.number for r in leaders}
    columns: dict[str, list] = {"trial": [], "state": [], "feasible": [], "best": []}
    columns.update({n: [] for n in [*names, *values, *limits]})
    columns.update({"actions": [], "runs": [], "error": []})
    for r in records:
        columns["trial"].append(r.number)
        columns["state"].append(r.state)
        columns["feasible"].append(r.feasible)
        columns["best"].append(r.number in chosen)
        for n in names:
            columns[n].append(r.params.get(n))
        for n in values:
            columns[n].append(r.values.get(n))
        for n in limits:
            columns[n].append(r.constraints.get(n))
        columns["actions"].append(json.dumps(r.actions))
        columns["runs"].append(json.dumps(r.runs))
        columns["error"].append(r.error)
    return columns


def read_table(client: Any, run_id: str) -> list[dict[str, Any]]:
    """The trials table a search left on a recipe run, one dict per trial; [] for a run without a search."""
    from mlflow.exceptions import MlflowException

    if not any(a.path == TABLE for a in client.list_artifacts(run_id, "search")):
        return []
    try:
        data = json.loads(Path(client.download_artifacts(run_id, TABLE)).read_text())
    except (MlflowException, OSError, ValueError):
        return []
    return [dict(zip(data["columns"], row)) for row in data["data"]]


def figure(records: list[TrialRecord], leaders: list[TrialRecord], objectives: list[Objective]) -> Any:
    """One objective: its value per trial, feasible filled, infeasible hollow, the best marked. Two or more: the
    first two objectives against each other, the front of feasible trials joined."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.subplots()
    done = [r for r in records if r.state == "COMPLETE"]
    feasible, infeasible = [r for r in done if r.feasible], [r for r in done if not r.feasible]
    names = [o.name for o in objectives]
    if len(objectives) == 1:

        def xy(rs: list[TrialRecord]) -> tuple[list, list]:
            return [r.number for r in rs], [r.values[names[0]] for r in rs]

        ax.set_xlabel("trial")
        ax.set_ylabel(f"{names[0]} ({objectives[0].direction})")
    else:

        def xy(rs: list[TrialRecord]) -> tuple[list, list]:
            return [r.values[names[0]] for r in rs], [r.values[names[1]] for r in rs]

        ax.set_xlabel(f"{names[0]} ({objectives[0].direction})")
        ax.set_ylabel(f"{names[1]} ({objectives[1].direction})")
    ax.scatter(*xy(feasible), color="C0", label="feasible", zorder=2)
    ax.scatter(*xy(infeasible), facecolors="none", edgecolors="C3", label="infeasible", zorder=2)
    if len(objectives) == 1 and feasible:
        # the best feasible value so far, trial by trial: how the search converged
        sign = 1.0 if objectives[0].direction == "maximize" else -1.0
        steps, running = [], None
        for r in feasible:
            value = r.values[names[0]]
            running = value if running is None or sign * value > sign * running else running
            steps.append((r.number, running))
        ax.step(
            [s[0] for s in steps], [s[1] for s in steps], where="post", color="C0", alpha=0.5, lw=1, label="best so far"
        )
    front = sorted(leaders, key=lambda r: xy([r])[0][0])
    if front:
        style = "k--" if len(objectives) > 1 else "k"
        ax.plot(*xy(front), style, lw=1, zorder=1, label="Pareto front" if len(objectives) > 1 else None)
        ax.scatter(
            *xy(front),
            s=160,
            facecolors="none",
            edgecolors="k",
            zorder=3,
            label="best" if len(objectives) == 1 else None,
        )
    for r in done:
        ax.annotate(
            str(r.number), (xy([r])[0][0], xy([r])[1][0]), textcoords="offset points", xytext=(4, 4), fontsize=7
        )
    failed = len(records) - len(done)
    ax.set_title(f"search: {len(records)} trials, {len(feasible)} feasible" + (f", {failed} failed" if failed else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
