"""Benchmark: how hard is builtin:shapes-hard for a quickstart-size YOLOv8n, next to builtin:shapes?

For each dataset, at the same size, a real recipe through the engine: YOLOv8n trained from scratch at 160 px
(the quickstart's train stage, `nbs: 16`), then pruned to target_macs 0.3 in one step (no fine-tuning, to see
the raw loss) and fine-tuned. Prints a table (mAP50-95 after training, after pruning, after fine-tuning) and
writes bench/results/hard_data.json with the sizes, epochs and seconds it ran at.

    python bench/hard_data.py [--train 400] [--val 100] [--epochs 40] [--finetune 20] [WORKDIR]

The defaults are the dataset's own size and the quickstart's epochs (several CPU minutes per dataset on 2 idle
cores); pass smaller numbers on a busy machine and say so: the JSON records what was run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import compute_seconds, run_recipe  # noqa: E402

RECIPE = """\
version: 1
name: bench-hard-data-{name}
seed: 0
model: yolov8n.yaml
data: builtin:{name}?train={train}&val={val}
defaults: {{imgsz: 160, batch: 16, args: {{nbs: 16}}}}
stages:
  train: {{type: train, epochs: {epochs}}}
  prune: {{type: prune, method: depgraph, target_macs: 0.3}}
  finetune: {{type: finetune, epochs: {finetune}, args: {{nbs: 16, warmup_epochs: 0}}}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--finetune", type=int, default=20)
    parser.add_argument("--note", default="", help="what the machine was doing (kept in the JSON)")
    parser.add_argument("workdir", nargs="?", help="keeps the MLflow store: a second call reuses every stage")
    args = parser.parse_args()
    root = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="bench-hard-"))
    here = Path.cwd()
    rows = []
    for name in ("shapes", "shapes-hard"):
        recipe = RECIPE.format(name=name, train=args.train, val=args.val, epochs=args.epochs, finetune=args.finetune)
        started = time.time()
        plan, reports, wall = run_recipe(recipe, root / name)
        os.chdir(here)
        metrics = {r.node_id: r.metrics for r in reports}
        rows.append(
            {
                "data": f"builtin:{name}?train={args.train}&val={args.val}",
                **{f"{stage}_mAP50-95": metrics[stage]["mAP50-95"] for stage in ("train", "prune", "finetune")},
                "train_mAP50": metrics["train"]["mAP50"],
                "macs_kept": metrics["prune"]["macs"] / metrics["train"]["macs"],
                "stage_seconds": compute_seconds(plan, reports),
                "wall_seconds": time.time() - started,
            }
        )
    print(f"{'data':38} {'trained':>8} {'pruned':>8} {'tuned':>8} {'MACs kept':>9} {'seconds':>8}   (mAP50-95)")
    for r in rows:
        print(
            f"{r['data']:38} {r['train_mAP50-95']:8.3f} {r['prune_mAP50-95']:8.3f} {r['finetune_mAP50-95']:8.3f} "
            f"{r['macs_kept']:9.3f} {r['stage_seconds']:8.0f}"
        )
    out = Path(__file__).resolve().parent / "results" / "hard_data.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "recipe": RECIPE,
                "train_images": args.train,
                "val_images": args.val,
                "epochs": args.epochs,
                "finetune_epochs": args.finetune,
                "cpu_cores": os.cpu_count(),
                "note": args.note,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
