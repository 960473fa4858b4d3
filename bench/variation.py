"""Measure CPU run-to-run variation of stage metrics: the evidence behind `recipe reproduce`'s default tolerance.

Each recipe runs several times FROM SCRATCH (a fresh working directory and MLflow store per run, so nothing is
reused), each in its own process; the first two with the same thread count (the same machine reproducing itself),
the others with another thread count (a different reduction order, a stand-in for another CPU). For every stage
and metric it records the largest absolute difference to the first run, and writes
bench/results/variation.json.

    python bench/variation.py [--recipes tiny small quickstart] [--threads 2 2 1]
    # tiny + small (the default): ~10 min on 2 busy cores; quickstart (resnet18): several minutes per run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = """\
version: 1
name: variation-tiny
seed: 0
model: lenet
data: builtin:shapes-cls?train=64&val=32&imgsz=32
defaults: {imgsz: 32, batch: 16}
stages:
  train: {type: train, epochs: 3}
  prune: {type: prune, method: depgraph, ratio: 0.3}
  finetune: {type: finetune, epochs: 2}
"""
# a classifier that learns (top-1 ~0.9 on 128 validation images, so one image is 0.0078): train, DepGraph prune
# with fine-tuning between steps, fine-tune, ONNX export; a few CPU minutes
SMALL = """\
version: 1
name: variation-small
seed: 0
model: tinyvgg
data: builtin:shapes-cls?train=512&val=128&imgsz=32
defaults: {imgsz: 32, batch: 32}
stages:
  train: {type: train, epochs: 10, optimizer: sgd, lr: 0.05}
  prune: {type: prune, method: depgraph, ratio: 0.5, steps: 2, finetune_epochs: 1}
  finetune: {type: finetune, epochs: 3}
  onnx: {type: export}
"""
# metrics a reproduction is judged on or reports; latency is wall-clock and excluded from the tolerance
COMPARED = [
    "top1",
    "val_loss",
    "mAP50",
    "mAP50-95",
    "macs",
    "params",
    "sparsity",
    "size_mb",
    "onnx_max_abs_diff",
    "latency_ms",
    "onnx_latency_ms",
]


def run_once(recipe_text: str, threads: int, work: Path) -> tuple[dict[str, dict[str, float]], float]:
    """Run the recipe in a fresh folder and process; returns node id -> metrics, and the wall seconds."""
    work.mkdir(parents=True)
    (work / "recipe.yaml").write_text(recipe_text)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "recipe_runner.cli", "run", "recipe.yaml", "--tracking-uri", uri],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"run failed in {work}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    seconds = time.time() - started
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    stages = client.search_runs(experiments, "tags.`recipe_runner.role` = 'stage'")
    return {r.data.tags["recipe_runner.node_id"]: dict(r.data.metrics) for r in stages}, seconds


def measure(name: str, recipe_text: str, threads: list[int], scratch: Path) -> dict:
    runs = [run_once(recipe_text, t, scratch / f"{name}-{i}") for i, t in enumerate(threads)]
    first, _ = runs[0]
    result: dict = {"threads": threads, "seconds": [round(s, 1) for _, s in runs], "runs": {}}
    for i, ((metrics, _), t) in enumerate(zip(runs, threads)):
        if i == 0:
            continue
        label = f"run{i}_threads{t}_vs_run0_threads{threads[0]}"
        diffs = {
            node: {
                k: abs(metrics[node][k] - first[node][k]) for k in COMPARED if k in first[node] and k in metrics[node]
            }
            for node in first
        }
        largest = {
            k: max(d.get(k, 0.0) for d in diffs.values()) for k in COMPARED if any(k in d for d in diffs.values())
        }
        result["runs"][label] = {"largest_abs_diff": largest, "per_stage": diffs}
    result["values_run0"] = {node: {k: m[k] for k in COMPARED if k in m} for node, m in first.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipes",
        nargs="+",
        choices=["tiny", "small", "quickstart"],
        default=["tiny", "small"],
        help="quickstart: recipes/resnet18_depgraph.yaml; results for other recipes in --out are kept",
    )
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[2, 2, 1], help="one run per entry, this many threads"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "variation.json")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    scratch = Path(tempfile.mkdtemp(prefix="rr-variation-"))
    texts = {"tiny": TINY, "small": SMALL, "quickstart": (ROOT / "recipes" / "resnet18_depgraph.yaml").read_text()}
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in args.recipes:
        report[name] = measure(name, texts[name], args.threads, scratch)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # after each recipe: a long run keeps what it measured
    for name, entry in report.items():
        for label, run in entry["runs"].items():
            print(f"{name} {label}: " + ", ".join(f"{k} {v:.3g}" for k, v in run["largest_abs_diff"].items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
