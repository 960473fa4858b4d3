"""The runner's time sections (bench/overhead.py reads them): exclusive times, main thread only, JSON on request."""

from __future__ import annotations

import json
import threading
import time

from recipe_runner import timing


def test_nested_sections_keep_exclusive_time_and_other_threads_do_not_count(tmp_path, monkeypatch):
    monkeypatch.setattr(timing, "_totals", type(timing._totals)(float))
    monkeypatch.setattr(timing, "_counts", type(timing._counts)(int))
    with timing.section("outer"):
        time.sleep(0.05)
        with timing.section("inner"):
            time.sleep(0.1)
    worker = threading.Thread(target=lambda: timing.timed("outer")(time.sleep)(0.2))
    worker.start()
    worker.join()
    out = tmp_path / "t.json"
    monkeypatch.setenv(timing.ENV, str(out))
    timing.write_if_asked()
    sections = json.loads(out.read_text())
    assert sections["inner"]["calls"] == 1 and sections["outer"]["calls"] == 1
    assert sections["inner"]["seconds"] >= 0.1
    # the inner sleep is not counted again in outer, and the thread's 0.2 s sleep is not counted at all
    assert 0.05 <= sections["outer"]["seconds"] < 0.1


def test_a_recipe_run_writes_its_sections(workspace, monkeypatch):
    from conftest import cli, write_recipe

    # the sections are per process: count only this run's
    monkeypatch.setattr(timing, "_totals", type(timing._totals)(float))
    monkeypatch.setattr(timing, "_counts", type(timing._counts)(int))
    recipe = write_recipe(workspace, "  train: {type: train, epochs: 1}")
    out = workspace / "timings.json"
    monkeypatch.setenv(timing.ENV, str(out))
    result = cli("run", str(recipe))
    assert result.exit_code == 0, result.output
    sections = json.loads(out.read_text())
    assert sections["plan"]["calls"] == 1 and sections["evaluations"]["calls"] >= 1
    assert sections["epoch checkpoints"]["calls"] == 1
    assert sections["mlflow.log_metrics"]["calls"] >= 1
