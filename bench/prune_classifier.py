"""Benchmark: DepGraph pruning of ResNet-18 on builtin:shapes-cls at ratios 0.3 / 0.5 / 0.7.

Runs a real recipe through the engine (one trained baseline, one branch per ratio, each
pruned in 2 steps with fine-tuning), then exports every stage's model to ONNX and times
ONNX Runtime on one CPU thread at 224x224. Prints a table and writes bench/results/prune_classifier.json.

    python bench/prune_classifier.py [WORKDIR]   # about 1.5 minutes on 2 idle CPU cores; WORKDIR keeps the MLflow store
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import compute_seconds, median_ms, output_models, run_recipe  # noqa: E402

RECIPE = """\
version: 1
name: bench-resnet18-prune
seed: 0
model: resnet18
data: builtin:shapes-cls?train=512&val=128&imgsz=64
defaults: {imgsz: 64, batch: 32}
stages:
  train: {type: train, epochs: 10, optimizer: sgd, lr: 0.01}
  prune: {type: prune, method: depgraph, ratio: {sweep: [0.3, 0.5, 0.7]}, steps: 2, finetune_epochs: 2}
  finetune: {type: finetune, epochs: 4, lr: 0.005}
"""
LATENCY_SIZE = 224


def ort_latency_ms(model, imgsz: int) -> float:
    """Median ONNX Runtime latency, one thread, batch 1."""
    import numpy as np
    import onnxruntime as ort
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model.eval(), (torch.randn(1, 3, imgsz, imgsz),), str(path), opset_version=17, dynamo=False
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {
            session.get_inputs()[0].name: np.random.default_rng(0)
            .standard_normal((1, 3, imgsz, imgsz))
            .astype(np.float32)
        }
        return median_ms(lambda: session.run(None, feed))


def main() -> None:
    work = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="bench-cls-"))
    plan, reports, wall = run_recipe(RECIPE, work)
    rows, base = [], None
    for report, model in output_models(plan, reports, work):
        m = report.metrics
        row = {
            "stage": report.node_id,
            "top1": m["top1"],
            "macs_64": m["macs"],
            "params": m["params"],
            "ort_ms_224": ort_latency_ms(model, LATENCY_SIZE),
        }
        base = base or row
        row["macs_reduction"] = base["macs_64"] / row["macs_64"]
        row["speedup"] = base["ort_ms_224"] / row["ort_ms_224"]
        rows.append(row)
    print(f"{'model':32} {'top1':>6} {'MACs@64':>9} {'params':>8} {'MACs x':>7} {'ORT ms@224':>11} {'speedup':>8}")
    for r in rows:
        print(
            f"{r['stage']:32} {r['top1']:6.3f} {r['macs_64'] / 1e6:8.1f}M {r['params'] / 1e6:7.2f}M "
            f"{r['macs_reduction']:6.2f}x {r['ort_ms_224']:11.2f} {r['speedup']:7.2f}x"
        )
    out = Path(__file__).resolve().parent / "results" / "prune_classifier.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "recipe": RECIPE,
                "wall_seconds": wall,
                "stage_seconds": compute_seconds(plan, reports),
                "latency": "onnxruntime 1 thread, batch 1, 224x224, median of 20",
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {out} ({wall:.0f} s for the recipe)")


if __name__ == "__main__":
    sys.exit(main())
