"""The README's MLflow UI screenshots: scripts/ui_screenshot.py against a real `mlflow server` and a real
headless Chromium. What a person sees is checked in the page text, not only that PNGs were written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from ui_screenshot import find_chromium  # noqa: E402

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (Debian: apt-get install chromium)")


def test_ui_shows_stage_runs_their_metrics_and_the_prune_plot(tmp_path: Path):
    pytest.importorskip("playwright.sync_api", reason="Playwright drives Chromium: pip install playwright")
    out = tmp_path / "ui"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "RECIPE_RUNNER_CACHE": str(tmp_path.parent / "rr-cache"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "ui_screenshot.py"), "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for png in ("runs.png", "charts.png", "prune-steps.png"):
        assert (out / png).stat().st_size > 20_000, png  # a rendered page, not a blank one
    report = json.loads((out / "pages.json").read_text())
    facts, pages = report["records"], report["pages"]
    parents = facts["recipe_runs"]
    assert len(parents) == 2

    # the runs table, recipe runs expanded: every stage run by name, with its metrics, dataset and model
    runs = pages["runs"]["text"]
    assert "workflowType=machine_learning" in pages["runs"]["url"]
    for parent in parents:
        assert parent["name"] in runs
        assert [s["name"] for s in parent["stages"]] == ["train", "prune", "finetune", "onnx"]
        for stage in parent["stages"]:
            metrics = stage["metrics"]
            for value in (int(metrics["macs"]), int(metrics["params"]), f"{metrics['top1']:.6g}"):
                assert str(value) in runs, (parent["name"], stage["name"], value)
    assert runs.count("shapes-cls (") == 10 and runs.count("Export") == 2
    for column in ("top1", "macs", "params", "size_mb"):
        assert column in runs

    # the chart view: each recipe run's pipeline charts (primary metric, MACs, params), one step per stage
    charts = pages["charts"]["text"]
    for name in ("top1", "macs", "params"):
        for parent in parents:
            assert f"{parent['name']} (pipeline/{name})" in charts

    # the prune stage's plot, shown by MLflow's artifact viewer
    assert "prune_steps.png" in pages["prune_steps"]["image_alts"]
    assert "prune_steps.png" in pages["prune_steps"]["text"]

    # the exported ONNX files in the experiment's model view
    models = pages["models"]["text"]
    assert models.count("Ready") == 2 and "onnx" in models
