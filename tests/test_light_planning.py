"""Planning a recipe whose checks already passed (and a fully cached re-run) does not import Ultralytics or torch;
a changed recipe is checked again in full."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RECIPE = """\
version: 1
name: light
model: yolov8n.yaml
data: builtin:shapes?train=8&val=4&imgsz=64
defaults: {{imgsz: 64, batch: 4, args: {args}}}
stages:
  train: {{type: train, epochs: 1}}
  prune: {{type: prune, method: slim, ratio: 0.3}}
"""
PROBE = """\
import atexit, json, os, sys
atexit.register(lambda: open(os.environ["RR_PROBE"], "w").write(json.dumps(
    {m: m in sys.modules for m in ("ultralytics", "torch")})))
sys.argv = ["recipe", *sys.argv[1:]]
from recipe_runner.cli import main
main()
"""


def _plan(workspace: Path) -> tuple[subprocess.CompletedProcess, dict]:
    probe = workspace / "probe.json"
    env = {**os.environ, "RR_PROBE": str(probe)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "plan", "recipe.yaml"],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, json.loads(probe.read_text())


def test_second_plan_skips_the_family_checks_and_their_imports_until_the_recipe_changes(workspace: Path):
    recipe = workspace / "recipe.yaml"
    recipe.write_text(RECIPE.format(args="{nbs: 4}"))
    first, imported = _plan(workspace)
    assert first.returncode == 0, first.stderr
    assert imported == {"ultralytics": True, "torch": True}  # the checks ran: yaml, args, slim's BatchNorm check
    second, imported = _plan(workspace)
    assert second.returncode == 0, second.stderr
    assert imported == {"ultralytics": False, "torch": False}
    assert "train" in second.stdout and "run" in second.stdout

    # a changed recipe is checked again: a bad Ultralytics argument is still refused, located, before MLflow
    recipe.write_text(RECIPE.format(args="{nbs: 4, no_such_arg: 1}"))
    bad, imported = _plan(workspace)
    assert bad.returncode == 2 and "no_such_arg" in bad.stderr + bad.stdout
    assert "recipe.yaml:5" in bad.stderr + bad.stdout
    assert imported["ultralytics"]
