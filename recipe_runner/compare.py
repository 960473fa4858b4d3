"""`recipe compare`: every stage of chosen recipe runs side by side, read back from MLflow.

Arguments name recipe runs in the words a user has at hand (a recipe file, an experiment, a run id);
the rows are one per stage run, in a fixed column order so csv/json/markdown stay machine-stable:

    recipe_run, recipe, node_id, stage_type, action, sweep.<stage>.<key>..., metric, value,
    macs, params, size_mb, latency_ms, onnx_latency_ms, seconds, host, <each --metric>

`host` is the machine that measured the row (latency is a property of a machine): for a reused stage, the
host of the run it reuses.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import persistence as T
from .registry import did_you_mean

HEAD = ["recipe_run", "recipe", "node_id", "stage_type", "action"]
TAIL = ["metric", "value", "macs", "params", "size_mb", "latency_ms", "onnx_latency_ms", "seconds", "host"]
# the family's primary accuracy metric; a classifier logs no mAP, a detector no top1
PRIMARY = ("mAP50-95", "top1")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class CompareError(ValueError):
    """An argument names no recipe run (exit 2)."""


@dataclass
class RecipeRun:
    run_id: str
    name: str
    experiment_id: str


@dataclass
class Comparison:
    columns: list[str]
    rows: list[dict[str, Any]]  # every row has every column (None where a stage logged nothing)
    runs: list[RecipeRun]
    logged: set[str] = field(default_factory=set)  # every metric name the stage runs logged

    def unlogged(self, names: list[str]) -> list[str]:
        """`--metric` names no stage logged, each with a close logged name if there is one: a typo gave an
        empty column and no word."""
        import difflib

        notes = []
        for name in dict.fromkeys(names):
            if name not in self.logged:
                close = difflib.get_close_matches(name, sorted(self.logged), n=1)
                notes.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        return notes


def run_id_of(text: str) -> str | None:
    """The run id in `runs:/<id>[/path]` or a bare 32-hex id; None if `text` is neither."""
    if text.startswith("runs:/"):
        return text[len("runs:/") :].strip("/").split("/")[0] or None
    return text if RUN_ID.fullmatch(text) else None


def resolve(client: Any, targets: list[str], every_run: bool = False) -> list[RecipeRun]:
    """Recipe runs for the arguments: a recipe file or experiment -> its newest recipe run (all with `every_run`),
    a run id -> that run (a stage run -> its recipe run). No arguments: the newest recipe run in the store."""
    found: list[RecipeRun] = []
    if not targets:
        experiments = [e.experiment_id for e in client.search_experiments()]
        found = _recipe_runs(client, experiments, None, every_run)
        if not found:
            raise CompareError(f"no recipe runs in {client.tracking_uri}")
    for target in targets:
        found += _resolve_one(client, target, every_run)
    unique: dict[str, RecipeRun] = {}
    for run in found:
        unique.setdefault(run.run_id, run)
    return list(unique.values())


def _resolve_one(client: Any, target: str, every_run: bool) -> list[RecipeRun]:
    from mlflow.exceptions import MlflowException

    run_id = run_id_of(target)
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise CompareError(f"no run '{run_id}' in {client.tracking_uri}") from None
        if run.data.tags.get(T.ROLE) != "recipe" and T.PARENT_RUN in run.data.tags:
            run = client.get_run(run.data.tags[T.PARENT_RUN])  # a stage run: compare its whole recipe run
        if run.data.tags.get(T.ROLE) != "recipe":
            raise CompareError(f"run '{run_id}' is not a recipe run (no tag {T.ROLE}=recipe)")
        return [RecipeRun(run.info.run_id, run.data.tags.get(T.RECIPE_NAME, run.info.run_name), run.info.experiment_id)]
    recipe_name = None
    experiment_name = target
    if Path(target).suffix in (".yaml", ".yml") or Path(target).is_file():
        experiment_name, recipe_name = _recipe_file_experiment(Path(target))
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        names = [e.name for e in client.search_experiments()]
        what = (
            f"experiment '{experiment_name}' (of recipe {target})" if recipe_name else f"experiment or run '{target}'"
        )
        raise CompareError(f"no {what} in {client.tracking_uri}{did_you_mean(experiment_name, names)}")
    runs = _recipe_runs(client, [experiment.experiment_id], recipe_name, every_run)
    if not runs:
        of = f" of '{recipe_name}'" if recipe_name else ""
        raise CompareError(f"experiment '{experiment_name}' holds no recipe runs{of}")
    return runs


def _recipe_file_experiment(path: Path) -> tuple[str, str]:
    """(experiment, recipe name) of a recipe file, read without running anything."""
    from .recipe import RecipeError, load_recipe

    if not path.is_file():
        raise CompareError(f"recipe file '{path}' does not exist")
    try:
        recipe = load_recipe(path)
    except RecipeError as exc:
        raise CompareError(f"recipe file '{path}' is not valid: {exc.problems[0]}") from None
    return recipe.tracking.experiment or recipe.name, recipe.name


def _recipe_runs(client: Any, experiments: list[str], recipe_name: str | None, every_run: bool) -> list[RecipeRun]:
    query = f"tags.`{T.ROLE}` = 'recipe'"
    if recipe_name:
        query += f" and tags.`{T.RECIPE_NAME}` = '{recipe_name}'"
    runs = client.search_runs(
        experiments, query, order_by=["attributes.start_time DESC"], max_results=1000 if every_run else 1
    )
    return [
        RecipeRun(r.info.run_id, r.data.tags.get(T.RECIPE_NAME, r.info.run_name), r.info.experiment_id) for r in runs
    ]


def compare(client: Any, runs: list[RecipeRun], extra_metrics: list[str] = ()) -> Comparison:
    """One row per stage run of each recipe run, in the documented column order."""
    rows: list[dict[str, Any]] = []
    sweep_keys: list[str] = []
    logged: set[str] = set()
    for recipe_run in runs:
        children = client.search_runs(
            [recipe_run.experiment_id],
            f"tags.`{T.PARENT_RUN}` = '{recipe_run.run_id}'",
            order_by=["attributes.start_time ASC"],
            max_results=5000,
        )
        # a stage that failed (e.g. quantize's accuracy guard) or was cut off is not a result to compare or plot
        for child in (c for c in children if c.info.status == "FINISHED"):
            logged.update(child.data.metrics)
            row = _stage_row(client, recipe_run, child, extra_metrics)
            sweep_keys += [k for k in row if k.startswith("sweep.") and k not in sweep_keys]
            rows.append(row)
    columns = HEAD + sweep_keys + TAIL + [m for m in extra_metrics if m not in TAIL]
    return Comparison(columns, [{c: row.get(c) for c in columns} for row in rows], runs, logged)


def _stage_row(client: Any, recipe_run: RecipeRun, run: Any, extra_metrics: list[str]) -> dict[str, Any]:
    tags, metrics = run.data.tags, run.data.metrics
    source = _source_run(client, tags.get(T.REUSED_FROM))
    timed = source or run
    params = dict(run.data.params)
    if source is not None:  # a reused run logs the config but not its sweep values: its source has them
        params = {**source.data.params, **params}
    metric = next((m for m in PRIMARY if m in metrics), None)
    row: dict[str, Any] = {
        "recipe_run": recipe_run.run_id,
        "recipe": recipe_run.name,
        "node_id": tags.get(T.NODE_ID, run.info.run_name),
        "stage_type": tags.get(T.STAGE_TYPE),
        "action": action_of(tags),
        **{k: _param_value(v) for k, v in params.items() if k.startswith("sweep.")},
        "metric": metric,
        "value": metrics.get(metric) if metric else None,
        "seconds": (timed.info.end_time - timed.info.start_time) / 1000 if timed.info.end_time else None,
        "host": timed.data.tags.get(T.LEASE_HOST),
    }
    for name in ["macs", "params", "size_mb", "latency_ms", "onnx_latency_ms", *extra_metrics]:
        row.setdefault(name, metrics.get(name))
    return row


def action_of(tags: dict[str, str]) -> str:
    """ran / reused / resumed, from the tags the engine sets."""
    if tags.get(T.ROLE) == "reused":
        return "reused"
    return "resumed" if T.RESUMED_FROM in tags else "ran"


def _source_run(client: Any, run_id: str | None) -> Any:
    """The run a reused stage points to; None if there is none or it was deleted (its time is then unknown)."""
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def _param_value(text: str) -> Any:
    """Params are stored as text (JSON for non-strings): give numbers back as numbers."""
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):  # a store writer's param may nest deeper than json allows
        return text


# -- formats ---------------------------------------------------------------
def to_csv(comparison: Comparison) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(comparison.columns)
    for row in comparison.rows:
        writer.writerow(["" if row[c] is None else row[c] for c in comparison.columns])
    return out.getvalue()


def to_json(comparison: Comparison) -> str:
    return json.dumps([{c: row[c] for c in comparison.columns} for row in comparison.rows], indent=2) + "\n"


def to_markdown(comparison: Comparison) -> str:
    return _pipe_table(comparison.columns, comparison.rows)


def _pipe_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    """Human-readable number: 1.23M for MACs, 4 significant digits otherwise ('-' when missing)."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.4g}"


# a search's trials table (search/report.read_table rows) holds each trial's stage actions and run ids too: too
# long for a table a person reads
HIDDEN_TRIAL_COLUMNS = ("actions", "runs")


def trials_title(run: RecipeRun, trials: list[dict[str, Any]]) -> str:
    return f"{len(trials)} search trial(s) of {run.name} {run.run_id[:8]}"


def trials_markdown(run: RecipeRun, trials: list[dict[str, Any]]) -> str:
    """A search's trials table as a titled pipe table, without the hidden columns (as in the rich table)."""
    columns = [c for c in trials[0] if c not in HIDDEN_TRIAL_COLUMNS]
    return f"\n**{trials_title(run, trials)}**\n\n" + _pipe_table(columns, trials)


FORMATS = {"csv": to_csv, "json": to_json, "markdown": to_markdown}


def table_view(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """(headers, cells) as the rich table shows them, narrow enough for a terminal: short run ids, readable
    numbers, no column empty in every row, no run columns for one recipe run (the title names it), no type
    column (the node id says it), and the metric's own name as its header when all rows share one."""
    rows = [dict(row) for row in comparison.rows]
    metrics = {row["metric"] for row in rows}
    columns = [c for c in comparison.columns if any(row[c] is not None for row in rows) and c != "stage_type"]
    if len({row["host"] for row in rows}) <= 1 and "host" in columns:  # one machine measured everything
        columns.remove("host")
    if len(comparison.runs) == 1:
        columns = [c for c in columns if c not in ("recipe_run", "recipe")]
    headers = list(columns)
    if len(metrics) == 1 and None not in metrics and "metric" in columns:
        columns.remove("metric")
        headers.remove("metric")
        headers[headers.index("value")] = metrics.pop()
    cells = [[row[c][:8] if c == "recipe_run" else _cell(row[c]) for c in columns] for row in rows]
    return headers, cells


# -- the store ---------------------------------------------------------------
def open_store(uri: str) -> Any:
    """An MlflowClient for reading, after cheap checks: a dead server would otherwise be retried for minutes,
    and a missing sqlite file would be created empty (and then hold no runs)."""
    from mlflow.tracking import MlflowClient

    if uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as exc:
            raise T.TrackingError(f"cannot reach the MLflow tracking server at {uri}: {type(exc).__name__}") from None
    elif uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise CompareError(
            f"no MLflow store at {uri[len('sqlite:///') :]} (pass --tracking-uri or set MLFLOW_TRACKING_URI)"
        )
    T.quiet_mlflow()
    return MlflowClient(tracking_uri=uri)


def tracking_uri_for(targets: list[str], cli_uri: str | None) -> str:
    """--tracking-uri, else the tracking.uri of the first recipe file argument that sets one, else the default."""
    recipe_uri = None
    for target in targets:
        if cli_uri is None and Path(target).is_file() and Path(target).suffix in (".yaml", ".yml"):
            from .recipe import RecipeError, load_recipe

            try:
                recipe_uri = load_recipe(Path(target)).tracking.uri
            except RecipeError:
                continue
            if recipe_uri:
                break
    return T.resolve_uri(cli_uri, recipe_uri)
