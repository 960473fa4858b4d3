"""Benchmark: DepGraph pruning of YOLOv8n on builtin:shapes (64 train / 16 val images, 160 px), ratios 0.3/0.5/0.7.

Runs a real recipe through the engine: one baseline trained 40 epochs (the yolov8_depgraph recipe's train stage),
one branch per ratio, each pruned in 4 steps with 10 fine-tuning epochs between steps and fine-tuned
30 epochs after. Then exports every model with Ultralytics' exporter and times ONNX
Runtime on one CPU thread at 640x640, batch 1. Prints a table and writes
bench/results/prune_yolo.json.

    python bench/prune_yolo.py [WORKDIR]   # about 6 minutes on 2 idle CPU cores; WORKDIR keeps the MLflow store
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import compute_seconds, median_ms, output_models, run_recipe  # noqa: E402

RECIPE = """\
version: 1
name: bench-yolov8n-prune
seed: 0
model: yolov8n.yaml
data: builtin:shapes
defaults: {imgsz: 160, batch: 16, args: {nbs: 16}}
stages:
  train: {type: train, epochs: 40}
  prune: {type: prune, method: depgraph, ratio: {sweep: [0.3, 0.5, 0.7]}, steps: 4, finetune_epochs: 10,
          args: {nbs: 16, warmup_epochs: 0}}
  finetune: {type: finetune, epochs: 30, args: {nbs: 16, warmup_epochs: 0}}
"""
LATENCY_SIZE = 640


def ort_latency_ms(model, imgsz: int, workdir: Path) -> float:
    """Median ONNX Runtime latency, one thread, batch 1, of the model as Ultralytics exports it."""
    import numpy as np
    import onnxruntime as ort

    from recipe_runner.models.yolo.export import export_onnx_file

    path = export_onnx_file(model, workdir / f"m{time.time_ns()}.onnx", imgsz, 17, False, False, 1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)}
    latency = median_ms(lambda: session.run(None, feed))
    path.unlink()
    return latency


def main() -> None:
    # a folder given on the command line keeps its mlflow.db: a second call reuses every trained stage
    work = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="bench-yolo-"))
    plan, reports, wall = run_recipe(RECIPE, work)
    rows, base = [], None
    for report, model in output_models(plan, reports, work):
        m = report.metrics
        row = {
            "stage": report.node_id,
            "mAP50": m["mAP50"],
            "mAP50-95": m["mAP50-95"],
            "macs_160": m["macs"],
            "params": m["params"],
            "ort_ms_640": ort_latency_ms(model, LATENCY_SIZE, work),
        }
        base = base or row
        row["macs_reduction"] = base["macs_160"] / row["macs_160"]
        row["speedup"] = base["ort_ms_640"] / row["ort_ms_640"]
        rows.append(row)
    header = (
        f"{'model':34} {'mAP50':>6} {'mAP50-95':>8} {'MACs@160':>9} {'params':>7} {'MACs x':>7} "
        f"{'ORT ms@640':>10} {'speedup':>8}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['stage']:34} {r['mAP50']:6.3f} {r['mAP50-95']:8.3f} {r['macs_160'] / 1e6:8.1f}M "
            f"{r['params'] / 1e6:6.2f}M "
            f"{r['macs_reduction']:6.2f}x {r['ort_ms_640']:10.1f} {r['speedup']:7.2f}x"
        )
    out = Path(__file__).resolve().parent / "results" / "prune_yolo.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "recipe": RECIPE,
                "wall_seconds": wall,
                "stage_seconds": compute_seconds(plan, reports),
                "latency": "onnxruntime 1 thread, batch 1, 640x640, median of 20",
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {out} ({wall:.0f} s for the recipe)")


if __name__ == "__main__":
    sys.exit(main())
