"""What a person sees in MLflow's web UI after the quickstart: scripts/ui_screenshot.py runs a recipe twice, starts
`recipe ui` (a real `mlflow server`) and opens its link in a real headless Chromium. The landing page is recorded
before any click; what it shows is checked in the page text against what MLflow's API holds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from ui_screenshot import find_chromium  # noqa: E402

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (Debian: apt-get install chromium)")


def test_recipe_ui_lands_on_both_recipe_runs_stage_metrics_without_a_click(tmp_path: Path):
    pytest.importorskip("playwright.sync_api", reason="Playwright drives Chromium: pip install playwright")
    out = tmp_path / "ui"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "RECIPE_RUNNER_CACHE": str(tmp_path.parent / "rr-cache"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DISPLAY", None)  # recipe ui would open a browser window
    # the landing page and the runs table; the artifact and model pages are for the docs (the script's default)
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "ui_screenshot.py"), "--out", str(out), "--pages", "landing,runs"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for png in ("charts.png", "runs.png"):
        assert (out / png).stat().st_size > 20_000, png  # a rendered page, not a blank one
    report = json.loads((out / "pages.json").read_text())
    facts, pages, ui = report["records"], report["pages"], report["ui"]
    parents = facts["recipe_runs"]
    assert len(parents) == 2

    # recipe ui's link: the experiment's runs, the "Model training" view, the chart view, our shared view state
    link = ui["link"]
    assert f"/#/experiments/{facts['experiment_id']}/runs?" in link
    for state in ("workflowType=machine_learning", "compareRunsMode=CHART", "viewStateShareKey=recipe-runner-"):
        assert state in link
    # Ctrl-C ends it cleanly, and its mlflow server with it
    assert ui["exit_code"] == 0
    host, port = link.split("/#/")[0].removeprefix("http://").split(":")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=5).close()

    # first sight, before any click: both recipe runs by name, and each one's stage metrics charted (one step
    # per stage: the primary metric, MACs and params), the runs overlaid
    landing = pages["landing"]
    assert landing["url"].startswith(link)  # the UI appends its default search state
    assert "You're viewing a shared view" in landing["text"]
    for parent in parents:
        assert parent["name"] in landing["text"]
        assert [s["name"] for s in parent["stages"]] == ["train", "prune", "finetune", "onnx"]
        for name in ("top1", "macs", "params"):
            assert f"{parent['name']} (pipeline/{name})" in landing["text"]
            assert f"pipeline/{name}" in parent["metrics"]

    # the same view as a table, recipe runs expanded: every stage run by name with its metrics, dataset and model;
    # the columns came from the shared view (the script selects none)
    runs = pages["runs"]["text"]
    for parent in parents:
        assert parent["name"] in runs
        for stage in parent["stages"]:
            metrics = stage["metrics"]
            for value in (int(metrics["macs"]), int(metrics["params"]), f"{metrics['top1']:.6g}"):
                assert str(value) in runs, (parent["name"], stage["name"], value)
    assert runs.count("shapes-cls (") == 10 and runs.count("Export") == 2
    for column in ("top1", "macs", "params", "size_mb", "recipe_runner.action", "overrides"):
        assert column in runs
