"""Benchmark: wall time of a 4-branch sweep, sequential (in-process) vs --executor ray (a local Ray), on this machine.

One recipe: a trained TinyVGG, then four DepGraph ratios, each pruned in 2 steps with fine-tuning and fine-tuned
again: 1 stage both executors run alone, then 8 stages in 4 independent branches. Each executor starts from an
empty store (nothing reused). The Ray wall time includes everything `recipe run --executor ray` adds: starting a
local Ray and a local `mlflow server` in front of the sqlite store, and the workers importing torch. Prints a
table and writes bench/results/ray_sweep.json.

    python bench/ray_sweep.py [WORKDIR]   # 2 to 4 minutes on 2 CPU cores; needs the ray extra

WORKDIR (default: a new temporary folder) must not hold an earlier run's stores: both executors start empty.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

RECIPE = """\
version: 1
name: bench-ray-sweep
seed: 0
model: tinyvgg
data: builtin:shapes-cls?train=512&val=64&imgsz=64
defaults: {imgsz: 64, batch: 32}
stages:
  train: {type: train, epochs: 3}
  prune: {type: prune, method: depgraph, ratio: {sweep: [0.2, 0.4, 0.6, 0.8]}, steps: 2, finetune_epochs: 2}
  finetune: {type: finetune, epochs: 6}
"""


def run(work: Path, executor_name: str) -> dict:
    """Plan and run the recipe in `work` (its own sqlite store) with one executor; seconds per phase."""
    from recipe_runner import executors
    from recipe_runner.engine import Engine
    from recipe_runner.planner import RunOptions, prepare

    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    recipe = work / "recipe.yaml"
    recipe.write_text(RECIPE)
    started = time.time()
    executor = executors.make(executor_name)
    plan = prepare(recipe, RunOptions())
    planned = time.time()
    with executor:
        plan = executor.prepare(plan)  # ray: a local mlflow server in front of the sqlite file
        ready = time.time()
        reports = Engine(
            plan,
            lambda description, total: lambda n: None,
            executor=executor,
            announce=lambda line: print(f"  {line}", flush=True),
        ).run()
        ran = time.time()
    ended = time.time()
    return {
        "executor": executor_name,
        "wall_s": ended - started,
        "plan_s": planned - started,
        "startup_s": ready - planned,
        "stages_s": ran - ready,
        "shutdown_s": ended - ran,
        "stages": {
            r.node_id: {
                "action": r.action,
                "seconds": r.seconds,
                "top1": r.metrics.get("top1"),
                "macs": r.metrics.get("macs"),
            }
            for r in reports
        },
        "cache_keys": {s.node.id: s.node.cache_key for s in plan.stages},
    }


def main() -> None:
    work = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="bench-ray-"))
    from recipe_runner.data import resolve_data

    resolve_data("builtin:shapes-cls?train=512&val=64&imgsz=64", "classify")  # generated once, before either clock
    rows = []
    for name in ("sequential", "ray"):
        print(f"{name}:", flush=True)
        rows.append(run(work / name, name))
    seq, par = rows
    assert seq["cache_keys"] == par["cache_keys"], "the executors ran different work"
    print(
        f"\n{'executor':11} {'wall s':>7} {'plan s':>7} {'startup s':>10} {'stages s':>9} {'shutdown s':>11} "
        f"{'speedup':>8}"
    )
    for r in rows:
        print(
            f"{r['executor']:11} {r['wall_s']:7.1f} {r['plan_s']:7.1f} {r['startup_s']:10.1f} {r['stages_s']:9.1f} "
            f"{r['shutdown_s']:11.1f} {seq['wall_s'] / r['wall_s']:7.2f}x"
        )
    out = Path(__file__).resolve().parent / "results" / "ray_sweep.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "recipe": RECIPE,
                "cpus": os.cpu_count(),
                "load_average_at_end": os.getloadavg(),
                "python": platform.python_version(),
                "rows": rows,
                "speedup_wall": seq["wall_s"] / par["wall_s"],
                "speedup_stages": seq["stages_s"] / par["stages_s"],
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
