"""Benchmark: pruning methods side by side on YOLOv8n (recipes/yolov8_methods.yaml).

Runs the methods recipe through the engine: one model trained 40 epochs; one branch per method, each pruned
to the same ratio in one step and fine-tuned the same number of epochs (slim_sparse after a sparse-train stage).
Prints a table per method (MACs, params, mAP50-95 right after pruning and after fine-tuning, stage seconds)
and writes bench/results/methods.json.

    python bench/methods.py [WORKDIR]                 # under 20 minutes on 2 idle CPU cores
    python bench/methods.py WORKDIR --tiny            # smoke test: tiny data, 1 epoch per stage (about 2 minutes)
    python bench/methods.py WORKDIR --drop sparse     # leave a stage and everything after it out

A WORKDIR keeps its mlflow.db: a second call reuses every finished stage and prints the same table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_recipe  # noqa: E402

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "recipes" / "yolov8_methods.yaml"
PRIMARY = "mAP50-95"
TINY = {"data": "builtin:shapes?train=16&val=8&imgsz=64", "imgsz": 64, "batch": 8}


def shrink(recipe: dict[str, Any]) -> None:
    """The same graph at a smoke-test size: tiny data, 64 px, one epoch wherever epochs are counted."""
    recipe["name"] += "-tiny"
    recipe["data"] = TINY["data"]
    recipe["defaults"].update(imgsz=TINY["imgsz"], batch=TINY["batch"])
    for stage in recipe["stages"].values():
        for key in ("epochs", "finetune_epochs"):
            if key in stage:
                stage[key] = 1


def drop(recipe: dict[str, Any], names: list[str]) -> None:
    """Remove stages and every stage downstream of them (e.g. a branch whose stage type this checkout lacks)."""
    stages = recipe["stages"]
    gone = set(names)
    unknown = gone - set(stages)
    if unknown:
        raise SystemExit(f"--drop: no stage named {', '.join(sorted(unknown))}")
    changed = True
    while changed:
        changed = False
        for sid, stage in stages.items():
            if sid not in gone and stage.get("from") in gone:
                gone.add(sid)
                changed = True
    for sid in gone:
        del stages[sid]


def _source_run(client, run_id: str):
    """The run that did the work: a reused stage's record points at it."""
    from recipe_runner import persistence as T

    run = client.get_run(run_id)
    return client.get_run(run.data.tags.get(T.REUSED_FROM, run_id))


def _seconds(run) -> float:
    return (run.info.end_time - run.info.start_time) / 1000


def method_rows(plan: Any, reports: list, recipe: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per prune stage: its method, size, metric before / after its fine-tune, and the seconds it cost."""
    client = plan.tracker.client
    by_id = {r.node_id: r for r in reports}
    stages = recipe["stages"]
    rows = []
    for sid, stage in stages.items():
        if stage["type"] != "prune" or sid not in by_id:
            continue
        prune = _source_run(client, by_id[sid].run_id)
        history = client.get_metric_history(prune.info.run_id, f"step/{PRIMARY}_before_ft")
        finetune = next((f for f, s in stages.items() if s.get("from") == sid and f in by_id), None)
        after = by_id[finetune].metrics if finetune else by_id[sid].metrics
        # stages between the trained model and this prune stage (slim_sparse's sparse-train) count for it too
        before_prune, parent = 0.0, stage.get("from")
        while parent in stages and stages[parent]["type"] != "train":
            before_prune += _seconds(_source_run(client, by_id[parent].run_id))
            parent = stages[parent].get("from")
        label = (
            stage["method"]
            + (f" {stage['importance']}" if "importance" in stage else "")
            + (f" {stage['rank_ratio']}" if "rank_ratio" in stage else "")
        )
        rows.append(
            {
                "branch": sid.removeprefix("prune_"),
                "method": label,
                "macs": after["macs"],
                "params": after["params"],
                f"{PRIMARY}_baseline": prune.data.metrics.get(f"baseline_{PRIMARY}"),
                f"{PRIMARY}_pruned": history[-1].value if history else None,
                f"{PRIMARY}_finetuned": after[PRIMARY],
                "mAP50_finetuned": after["mAP50"],
                "pre_seconds": before_prune,
                "prune_seconds": _seconds(prune),
                "finetune_seconds": _seconds(_source_run(client, by_id[finetune].run_id)) if finetune else 0.0,
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], baseline: dict[str, float]) -> None:
    print(
        f"{'branch':18} {'method':18} {'MACs':>8} {'params':>7} {'pruned':>7} {'fine-tuned':>10} "
        f"{'pre s':>6} {'prune s':>7} {'ft s':>6}"
    )
    print(
        f"{'(trained model)':18} {'':18} {baseline['macs'] / 1e6:7.1f}M {baseline['params'] / 1e6:6.2f}M "
        f"{'':>7} {baseline[PRIMARY]:10.3f}"
    )
    for r in rows:
        pruned = "-" if r[f"{PRIMARY}_pruned"] is None else f"{r[f'{PRIMARY}_pruned']:.3f}"
        print(
            f"{r['branch']:18} {r['method']:18} {r['macs'] / 1e6:7.1f}M {r['params'] / 1e6:6.2f}M {pruned:>7} "
            f"{r[f'{PRIMARY}_finetuned']:10.3f} {r['pre_seconds']:6.0f} {r['prune_seconds']:7.0f} "
            f"{r['finetune_seconds']:6.0f}"
        )
    print(f"({PRIMARY} on the val split: 'pruned' right after the prune step, 'fine-tuned' after the ft_ stage)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", nargs="?", help="folder for the run and its mlflow.db (default: a temp folder)")
    parser.add_argument("--tiny", action="store_true", help="smoke-test size: tiny data, one epoch per stage")
    parser.add_argument(
        "--drop", nargs="*", default=[], metavar="STAGE", help="leave these stages (and their descendants) out"
    )
    args = parser.parse_args(argv)
    recipe = yaml.safe_load(RECIPE.read_text())
    if args.tiny:
        shrink(recipe)
    drop(recipe, args.drop)
    work = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="bench-methods-"))
    text = yaml.safe_dump(recipe, sort_keys=False)
    plan, reports, wall = run_recipe(text, work)
    baseline = next(r.metrics for r in reports if r.node_id == "train")
    rows = method_rows(plan, reports, recipe)
    print_table(rows, baseline)
    # a smoke run must not overwrite the committed results of the full benchmark: it writes into its workdir
    out = work / "methods.json" if args.tiny or args.drop else HERE / "results" / "methods.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "recipe": text,
                "wall_seconds": wall,
                "dropped": args.drop,
                "tiny": args.tiny,
                "baseline": {k: baseline[k] for k in ("macs", "params", PRIMARY, "mAP50")},
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {out} ({wall:.0f} s for the recipe)")


if __name__ == "__main__":
    main()
