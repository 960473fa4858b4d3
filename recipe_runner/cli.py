"""The `recipe` command: run, validate, plan, schema, compare, reproduce, ui.

Exit codes: 0 success, 1 a stage or the tracking store failed, 2 the recipe or the command line is wrong.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .recipe import RecipeError, load_recipe, recipe_json_schema
from .reproduce import DEFAULT_TOLERANCE

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Run model-compression recipes: train, sparse-train, prune, fine-tune, quantize, export; tracked in MLflow.",
)
console = Console(width=None if sys.stdout.isatty() else 120)  # piped output: wide enough for the tables

RecipeArg = typer.Argument(..., help="path to a recipe YAML file", show_default=False)
SetOpt = typer.Option(None, "--set", help="override a recipe value: dotted.key=value (repeatable)")
UriOpt = typer.Option(
    None, "--tracking-uri", help="MLflow tracking URI (overrides tracking.uri and $MLFLOW_TRACKING_URI)"
)


@contextmanager
def _timings_written() -> Iterator[None]:
    """$RECIPE_RUNNER_TIMINGS gets the run's time sections (bench/overhead.py), also when the run fails."""
    from . import timing

    try:
        yield
    finally:
        timing.write_if_asked()


@contextmanager
def _sigterm_as_interrupt() -> Iterator[list[str]]:
    """`kill` or a scheduler's timeout takes Ctrl-C's path: stage and parent runs marked KILLED, checkpoints kept.
    Yields the names of the signals received: Ray's waits re-raise a bare KeyboardInterrupt without our message."""
    received: list[str] = []

    def interrupt(signum: int, frame) -> None:
        received.append(signal.Signals(signum).name)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _exit_codes() -> Iterator[None]:
    """Turn known failures into one clear line each and the documented exit code."""
    from .persistence import TrackingError

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..." is noise here
    try:
        yield
    except RecipeError as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        raise typer.Exit(2)
    except TrackingError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)


@app.command()
def validate(recipe: Path = RecipeArg, set_: list[str] | None = SetOpt) -> None:
    """Check a recipe (format, types, ranges, stage graph); exit 2 with file:line:col per problem."""
    from .graph import compile_graph

    with _exit_codes():
        loaded = load_recipe(recipe, set_ or [])
        graph = compile_graph(loaded)
    searched = len(loaded.stages) - len({n.stage_id for n in graph.nodes.values()})
    trials = f"; search: {searched} stage(s) copied per trial, {loaded.search.trials} trials" if loaded.search else ""
    console.print(f"{recipe}: ok ({len(graph.nodes)} stages{trials})", markup=False, highlight=False)


@app.command()
def schema() -> None:
    """Print the recipe JSON Schema (for editors: # yaml-language-server: $schema=recipe.schema.json)."""
    sys.stdout.write(json.dumps(recipe_json_schema(), indent=2) + "\n")


@app.command()
def plan(
    recipe: Path = RecipeArg,
    set_: list[str] | None = SetOpt,
    tracking_uri: str | None = UriOpt,
    force: list[str] | None = typer.Option(None, "--force"),
    only: list[str] | None = typer.Option(None, "--only"),
) -> None:
    """Show the stage graph and, per stage, whether MLflow lets it be reused, resumed, or must run."""
    from .persistence import versions
    from .planner import RunOptions, prepare

    with _exit_codes():
        p = prepare(recipe, RunOptions(set_ or [], force or [], only or [], tracking_uri))
    found = _print_search(p) if p.recipe.search is not None else None
    table = Table(title=f"{p.recipe.name}  (tracking: {p.tracker.uri}, experiment: {p.tracker.experiment_name})")
    table.add_column("stage", overflow="fold", min_width=min(40, max((len(s.node.id) for s in p.stages), default=5)))
    for column in ("type", "from", "action", "cache key", "source run"):
        table.add_column(column, overflow="fold")
    colour = {"reuse": "green", "resume": "yellow", "wait": "magenta", "run": "cyan", "skip": "dim"}
    for s in p.stages:
        # an input (a distillation teacher) is an edge too: shown beside the parent
        edges = [s.node.parent or "-", *(f"{role}: {nid}" for role, nid in s.node.inputs.items())]
        table.add_row(
            escape(s.node.id),
            s.node.type,
            escape(", ".join(edges)),
            f"[{colour[s.action]}]{s.action}[/]",
            s.node.cache_key[:12],
            s.source.run_id[:12] if s.source else "-",
        )
    console.print(table)
    for note in p.notes:
        console.print(f"[note] {note}", markup=False, highlight=False)
    for s in p.stages:
        other = versions.differences(s.source.tags) if s.action == "reuse" and s.source else []
        if other:
            console.print(
                f"note: {s.node.id} would be reused from a run made with {', '.join(other)}",
                markup=False,
                highlight=False,
            )
    if found is not None:
        console.print(found, markup=False, highlight=False)


def _print_search(p) -> str:
    """The search space, and the trials MLflow holds (replayed without running anything); returns the summary
    line printed under the stage table (whose rows the replay added)."""
    from .search import preview

    shown = preview(p)
    study = shown.study
    table = Table(
        title=f"search: {study.config.sampler}, {study.total} trials, "
        + ", ".join(f"{o.direction} {o.name}" for o in study.objectives)
        + (f", subject to {'; '.join(study.config.constraints)}" if study.config.constraints else "")
    )
    table.add_column("key")
    table.add_column("space")
    for name, space in study.spaces.items():
        table.add_row(escape(name), escape(space.describe()))
    console.print(table)
    for record in shown.found:
        values = ", ".join(f"{k}={v}" for k, v in {**record.params, **record.values}.items())
        console.print(
            f"trial {record.number}: finished ({values})" + ("" if record.feasible else ", infeasible"),
            markup=False,
            highlight=False,
        )
    for record in shown.asked:
        console.print(
            f"trial {record.number}: to run ({', '.join(f'{k}={v}' for k, v in record.params.items())})",
            markup=False,
            highlight=False,
        )
    later = study.total - len(shown.found) - len(shown.asked)
    return f"search: {len(shown.found)} of {study.total} trials finished, {len(shown.asked)} asked next" + (
        f", {later} more chosen as results arrive" if later else ""
    )


@app.command()
def run(
    recipe: Path = RecipeArg,
    set_: list[str] | None = SetOpt,
    tracking_uri: str | None = UriOpt,
    force: list[str] | None = typer.Option(None, "--force", help="rerun this stage and its descendants even if cached"),
    only: list[str] | None = typer.Option(None, "--only", help="run only this stage (and the ancestors it needs)"),
    keep_going: bool = typer.Option(
        False, "--keep-going", help="a failed stage skips its descendants and the other branches finish (exit code 1)"
    ),
    executor: str = typer.Option(
        "sequential",
        "--executor",
        help="sequential (this process) | ray (a Ray task per stage, branches in parallel; extra: recipe-runner[ray])",
    ),
    address: str | None = typer.Option(
        None,
        "--address",
        help="with --executor ray: the cluster to join, auto | ray://host:port (default: start a local Ray)",
    ),
) -> None:
    """Run a recipe: reuse finished stages, resume unfinished ones, run the rest; log everything to MLflow."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import executors, timing
    from .engine import Engine, RunFailed, StageFailed
    from .planner import RunOptions, prepare
    from .search import SearchFailed

    failure: RunFailed | None = None
    with _sigterm_as_interrupt() as signals, _exit_codes(), _timings_written():
        try:
            runner = executors.make(executor, address)  # before anything is planned: a missing extra starts nothing
            with timing.section("plan"):
                p = prepare(recipe, RunOptions(set_ or [], force or [], only or [], tracking_uri))
            with runner:
                p = runner.prepare(p)
                console.print(
                    f"tracking: {p.tracker.uri}  experiment: {p.tracker.experiment_name}"
                    + (f"  executor: {runner.name}" if runner.name != "sequential" else ""),
                    markup=False,
                    highlight=False,
                )
                with Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=console,
                    transient=False,
                ) as progress:

                    def factory(description: str, total: int):
                        task = progress.add_task(description, total=total)
                        return lambda n: progress.advance(task, n)

                    engine = Engine(
                        p,
                        factory,
                        announce=lambda line: progress.console.print(line, markup=False, highlight=False),
                        on_error="keep-going" if keep_going else "stop",
                        executor=runner,
                    )
                    try:
                        reports = engine.run()
                    except RunFailed as exc:
                        failure, reports = exc, exc.reports
                    except StageFailed as exc:
                        if os.environ.get("RECIPE_RUNNER_DEBUG"):
                            raise
                        typer.echo(f"error: {exc}  (set RECIPE_RUNNER_DEBUG=1 for the traceback)", err=True)
                        raise typer.Exit(1)
                    except SearchFailed as exc:
                        typer.echo(f"error: {exc}", err=True)
                        raise typer.Exit(1)
                    except KeyboardInterrupt as exc:
                        typer.echo(
                            "interrupted: finished stages are kept; run again: the unfinished stage resumes from its "
                            "last epoch (or prune step) checkpoint, or starts over if it saved none yet",
                            err=True,
                        )
                        raise typer.Exit(143 if "SIGTERM" in (str(exc), *signals) else 130)
        except executors.ExecutorUnavailable as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2)
    table = Table(title=f"{p.recipe.name}: " + ("FAILED" if failure else "done"))
    keys = ["top1", "mAP50", "mAP50-95", "macs", "params", "size_mb", "epochs_trained"]
    shown = [k for k in keys if any(k in r.metrics for r in reports)]
    table.add_column("stage", overflow="fold", min_width=min(40, max((len(r.node_id) for r in reports), default=5)))
    for column in ["action", *shown, "seconds"]:
        table.add_column(column)
    for r in reports:
        action = {"failed": "[red]failed[/]", "skipped": "[dim]skipped[/]"}.get(r.action, r.action)
        table.add_row(escape(r.node_id), action, *[_fmt(r.metrics.get(k)) for k in shown], f"{r.seconds:.1f}")
    console.print(table)
    if failure:
        for r in failure.failed:
            typer.echo(f"error: {r.error}", err=True)
        if failure.skipped:
            typer.echo(f"skipped (an ancestor failed): {', '.join(r.node_id for r in failure.skipped)}", err=True)
        raise typer.Exit(1)


@app.command()
def compare(
    targets: list[str] | None = typer.Argument(
        None,
        metavar="RECIPE|EXPERIMENT|RUN",
        show_default=False,
        help="recipe files, experiment names, recipe run ids or runs:/ URIs (none: the newest recipe run)",
    ),
    metric: list[str] | None = typer.Option(None, "--metric", help="add this metric as a column (repeatable)"),
    format_: str = typer.Option("table", "--format", help="table | csv | json | markdown"),
    tracking_uri: str | None = UriOpt,
    plot: Path = typer.Option(Path("compare.png"), "--plot", help="write the Pareto plot here (PNG)"),
    no_plot: bool = typer.Option(False, "--no-plot", help="write and log no plot"),
    all_runs: bool = typer.Option(
        False, "--all-runs", help="every recipe run of a recipe or experiment, not only the newest"
    ),
) -> None:
    """Every stage of the chosen recipe runs side by side, and a Pareto plot logged to each of them."""
    from . import compare as C
    from .pareto import plot_comparison
    from .search.report import read_table

    if format_ not in ("table", *C.FORMATS):
        typer.echo(f"error: unknown --format '{format_}' (table, csv, json, markdown)", err=True)
        raise typer.Exit(2)
    with _exit_codes():
        try:
            client = C.open_store(C.tracking_uri_for(targets or [], tracking_uri))
            result = C.compare(client, C.resolve(client, targets or [], all_runs), metric or [])
        except C.CompareError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2)
        for note in result.unlogged(metric or []):
            typer.echo(f"[warn]   --metric {note}: no stage of these runs logged it; its column is empty", err=True)
        if format_ == "table":
            runs = ", ".join(f"{r.name} {r.run_id[:8]}" for r in result.runs[:3]) + (
                " ..." if len(result.runs) > 3 else ""
            )
            table = Table(title=f"{len(result.rows)} stage(s) of {runs}  (tracking: {client.tracking_uri})")
            columns, rows = C.table_view(result)
            # the node id is the one column worth reading whole
            node_width = min(40, max((len(r[columns.index("node_id")]) for r in rows), default=7))
            for column in columns:
                table.add_column(column, overflow="fold", min_width=node_width if column == "node_id" else None)
            for cells in rows:
                table.add_row(*map(escape, cells))
            console.print(table)
            for run in result.runs:
                _print_trials(client, run)
        else:
            sys.stdout.write(C.FORMATS[format_](result))
            # csv and json stay one row per stage run (sweep.trial and the sampled values are columns there)
            for run in result.runs if format_ == "markdown" else []:
                trials = read_table(client, run.run_id)
                if trials:
                    sys.stdout.write(C.trials_markdown(run, trials))
        if not no_plot:
            plot_comparison(result.rows, plot)
            for run in result.runs:  # next to the runs it compares, so `mlflow ui` shows it too
                client.log_artifact(run.run_id, str(plot), "compare")
            typer.echo(f"plot: {plot} (logged to {len(result.runs)} recipe run(s) as compare/{plot.name})", err=True)


@app.command()
def reproduce(
    run_ref: str = typer.Argument(..., metavar="RUN", help="a recipe run id or runs:/<id>", show_default=False),
    tracking_uri: str | None = UriOpt,
    tolerance: float | None = typer.Option(
        None,
        "--tolerance",
        show_default=False,
        help=f"largest absolute change of a stage's primary metric (default {DEFAULT_TOLERANCE:g}, measured: README)",
    ),
    workdir: Path | None = typer.Option(
        None,
        "--workdir",
        help="keep the recipe, lock and reproduction.json here (default: a temporary folder, removed)",
    ),
) -> None:
    """Re-run a recorded recipe run from scratch and compare every stage's metrics with the original's."""
    import shutil
    import tempfile

    from . import reproduce as R
    from .compare import CompareError, open_store
    from .engine import StageFailed

    tolerance = R.DEFAULT_TOLERANCE if tolerance is None else tolerance
    folder = workdir or Path(tempfile.mkdtemp(prefix="recipe-reproduce-"))
    with _sigterm_as_interrupt(), _exit_codes():
        from .persistence import resolve_uri

        uri = resolve_uri(tracking_uri, None)
        try:
            original = R.fetch_original(open_store(uri), run_ref, folder)
            recorded = original.lock.get("versions", {})
            versions = R.version_differences(recorded, R.installed_versions([n for n in recorded if n != "python"]))
            _print_versions(versions)
            plan, notes = R.prepare_reproduction(original, uri)
        except (R.ReproduceError, CompareError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2)
        for note in notes:
            console.print(f"[warn]   {note}", markup=False, highlight=False)
        console.print(
            f"reproducing run {original.run_id} ({original.lock.get('recipe')}) from scratch into {uri}, "
            f"experiment {original.experiment}",
            markup=False,
            highlight=False,
        )
        try:
            _run_quietly(plan)
        except StageFailed as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1)
        except KeyboardInterrupt as exc:
            typer.echo("interrupted: a reproduction is not resumed; run it again", err=True)
            raise typer.Exit(143 if str(exc) == "SIGTERM" else 130)
        outcome = R.judge(original, plan.tracker.stage_metrics(), tolerance, plan.tracker.recipe_run_id)
    _print_outcome(original.run_id, outcome, tolerance)
    if workdir is None:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        (folder / "reproduction.json").write_text(R.report_json(original, outcome, tolerance, versions))
    raise typer.Exit(0 if outcome.ok else 1)


def _print_trials(client, run) -> None:
    """A search's trials, one row each with its sampled values and objectives (from the run's trials table)."""
    from . import compare as C
    from .search.report import read_table

    trials = read_table(client, run.run_id)
    if not trials:
        return
    hidden = C.HIDDEN_TRIAL_COLUMNS
    table = Table(title=C.trials_title(run, trials))
    for column in (c for c in trials[0] if c not in hidden):
        table.add_column(column, overflow="fold")
    for row in trials:
        table.add_row(*(escape(_fmt(v) if isinstance(v, float) else str(v)) for k, v in row.items() if k not in hidden))
    console.print(table)


@app.command()
def ui(
    target: str | None = typer.Argument(
        None,
        metavar="[RECIPE|EXPERIMENT|RUN]",
        show_default=False,
        help="a recipe file, experiment name or recipe run id (none: the newest recipe run in the store)",
    ),
    tracking_uri: str | None = UriOpt,
    no_browser: bool = typer.Option(False, "--no-browser", help="print the link only"),
) -> None:
    """MLflow's web UI on a recipe's runs, their stage metrics charted side by side; Ctrl-C stops it."""
    import time

    from . import compare as C
    from . import ui as U
    from .persistence import LocalServerError

    with _sigterm_as_interrupt(), _exit_codes():
        uri = C.tracking_uri_for([target] if target else [], tracking_uri)
        try:
            client = C.open_store(uri)
            # read and tag before a local server starts: one writer at a time on a sqlite file
            where = U.landing(client, C.resolve(client, [target] if target else [], every_run=True))
            with U.served(uri) as (base, server):
                link = where.link(base)
                console.print(f"MLflow UI for {uri}:\n{link}", markup=False, highlight=False, soft_wrap=True)
                sys.stdout.flush()  # a program reading the link through a pipe gets it now
                if not no_browser:
                    U.open_browser(link)
                if server is None:
                    return  # a tracking server: nothing of ours to keep running
                console.print("Ctrl-C stops the server", markup=False, highlight=False)
                while server.running():
                    time.sleep(0.5)
                typer.echo("error: the mlflow server stopped", err=True)
                raise typer.Exit(1)
        except KeyboardInterrupt:
            return  # Ctrl-C is how this command ends, also while the server starts (served() stops it)
        except (C.CompareError, U.UiError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2)
        except LocalServerError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1)


def _run_quietly(plan) -> list:
    """Run a plan with the same progress display as `recipe run`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import executors
    from .engine import Engine

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:

        def factory(description: str, total: int):
            task = progress.add_task(description, total=total)
            return lambda n: progress.advance(task, n)

        return Engine(
            plan,
            factory,
            announce=lambda line: progress.console.print(line, markup=False, highlight=False),
            executor=executors.make("sequential"),
        ).run()


def _print_versions(differences: list[tuple[str, str, str]]) -> None:
    if not differences:
        console.print("package versions: as recorded in the lock", markup=False, highlight=False)
        return
    table = Table(title="package versions differ from the lock's")
    for column in ("package", "recorded", "installed"):
        table.add_column(column)
    for row in differences:
        table.add_row(*map(escape, row))
    console.print(table)


def _print_outcome(original_id: str, outcome, tolerance: float) -> None:
    table = Table(
        title=f"original {original_id[:8]} vs reproduction {(outcome.run_id or '-')[:8]} "
        f"(primary metric within {tolerance:g}?)"
    )
    for column in ("stage", "metric", "original", "reproduced", "diff", "ok"):
        table.add_column(column, overflow="fold")
    previous = None
    for row in outcome.rows:
        verdict = ("[green]yes[/]" if row.ok else "[red]NO[/]") if row.judged else ""
        diff = "-" if row.diff is None else f"{row.diff:+.4g}"
        table.add_row(
            escape(row.node_id) if row.node_id != previous else "",
            escape(row.metric),
            _fmt(row.original),
            _fmt(row.reproduced),
            diff,
            verdict,
        )
        previous = row.node_id
    console.print(table)
    failed = [r.node_id for r in outcome.rows if not r.ok]
    console.print(
        f"reproduced within {tolerance:g}"
        if not failed
        else f"NOT reproduced within {tolerance:g}: {', '.join(failed)}",
        markup=False,
        highlight=False,
    )


def _fmt(value) -> str:
    if value is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.4g}"


def main() -> None:
    """The `recipe` command. It ends without Python's interpreter teardown: with torch, Ultralytics and MLflow
    loaded, freeing every object one by one took 2-3 s per command (bench/overhead.py). Exit handlers still run
    and output is flushed first; nothing else is left to write by then."""
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
