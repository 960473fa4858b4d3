"""What the benchmark scripts share: run a recipe through the engine, then get each stage's output model back."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def run_recipe(text: str, work: Path, force: tuple[str, ...] = ()) -> tuple[Any, list, float]:
    """Run recipe `text` in folder `work` (its mlflow.db makes a second call reuse every stage but `force`)."""
    from recipe_runner.engine import Engine
    from recipe_runner.planner import RunOptions, prepare

    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    recipe = work / "recipe.yaml"
    recipe.write_text(text)
    started = time.time()
    plan = prepare(recipe, RunOptions(force=list(force)))
    reports = Engine(
        plan, lambda description, total: lambda n: None, announce=lambda line: print(line, flush=True)
    ).run()
    return plan, reports, time.time() - started


def output_models(plan: Any, reports: list, work: Path, skip: str = "prune") -> Iterator[tuple[Any, Any]]:
    """(report, model) for every stage except those whose id starts with `skip`, from verified checkpoints."""
    from recipe_runner import persistence as T
    from recipe_runner.persistence import load_checkpoint

    for report in reports:
        if report.node_id.startswith(skip):
            continue
        run = plan.tracker.client.get_run(report.run_id)
        source = run.data.tags.get(T.REUSED_FROM, report.run_id)  # a reused stage's checkpoint is its source's
        run = plan.tracker.client.get_run(source)
        path = plan.tracker.download(source, T.CHECKPOINT_ARTIFACT, work / "dl" / source)
        yield report, plan.family.rebuild(load_checkpoint(path, run.data.tags[T.CHECKPOINT_SHA])["model"])


def median_ms(call, runs: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]


def compute_seconds(plan: Any, reports: list) -> float:
    """Seconds the stages took when they actually ran (from MLflow), so a re-run that reuses them reports the same."""
    from recipe_runner import persistence as T

    total = 0.0
    for report in reports:
        run = plan.tracker.client.get_run(report.run_id)
        source = plan.tracker.client.get_run(run.data.tags.get(T.REUSED_FROM, report.run_id))
        total += (source.info.end_time - source.info.start_time) / 1000
    return total
