"""Benchmark: what deploying YOLOv8n on a CPU gains from pruning and INT8, with both quantization backends.

Runs one recipe through the engine on the built-in detection data at the quickstart size (64 train /
16 val images, 160 px): a baseline trained 40 epochs, a branch pruned with DepGraph to ratio 0.5
(4 steps, 10 fine-tuning epochs each, then 30), and INT8 (ONNX Runtime QDQ, OpenVINO NNCF) of both.
Every model file is timed by a benchmark stage (batch 1, 1 thread, median of 50 after warm-up, 640 px;
ONNX Runtime for .onnx files, OpenVINO for its IR). Rows: FP32 baseline, pruned FP32, baseline INT8 and
pruned INT8 per backend (FP32 rows timed in both runtimes); columns: MACs, file size, median latency at
640 px on 1 thread, speedup vs the FP32 baseline in ONNX Runtime and vs the FP32 baseline in the row's own
runtime, mAP50-95 (of the file itself for INT8 rows, on the 16 validation images at 160 px).

    python bench/deploy.py [WORKDIR]          # the real run: about 10 minutes on 2 idle CPU cores
    python bench/deploy.py WORKDIR --tiny     # a smoke test of the script (tiny data, 1-2 epochs: mAP ~0)
    python bench/deploy.py WORKDIR --retime   # reuse the trained models, quantize and time again (a quiet machine)

A WORKDIR keeps its mlflow.db: a second call reuses every stage (and shares train/prune/finetune with
recipes/yolov8_depgraph.yaml and recipes/yolov8_deploy.yaml run in the same folder).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import compute_seconds, run_recipe  # noqa: E402

FULL = {
    "data": "builtin:shapes",
    "imgsz": 160,
    "batch": 16,
    "train": 40,
    "steps": 4,
    "step_epochs": 10,
    "finetune": 30,
    "calibration": 64,
    "max_drop": 0.05,
}
# the smoke test: the numbers mean nothing (mAP ~0), the path through every stage is what it checks
TINY = {
    "data": "builtin:shapes?train=16&val=8&imgsz=64",
    "imgsz": 64,
    "batch": 8,
    "train": 2,
    "steps": 1,
    "step_epochs": 0,
    "finetune": 1,
    "calibration": 8,
    "max_drop": 1.0,
}
LATENCY = "latency_ms_t1_640px"


def recipe(size: dict, openvino: bool) -> str:
    backends = ["ort"] + (["openvino"] if openvino else [])
    stages = [
        f"  train: {{type: train, epochs: {size['train']}}}",
        f"  prune: {{type: prune, method: depgraph, importance: group-l2, ratio: 0.5, steps: {size['steps']}, "
        f"finetune_epochs: {size['step_epochs']}, max_map_drop: 0.2, args: {{nbs: 16, warmup_epochs: 0}}}}",
        f"  finetune: {{type: finetune, epochs: {size['finetune']}, args: {{nbs: 16, warmup_epochs: 0}}}}",
    ]
    for model in ("train", "finetune"):
        stages.append(f"  fp32_{model}: {{type: benchmark, from: {model}, bench_imgsz: 640, batch: 4}}")
        if openvino:  # the same FP32 file, run by OpenVINO: each backend's INT8 against its own runtime's FP32
            stages.append(
                f"  fp32_openvino_{model}: {{type: benchmark, from: {model}, bench_imgsz: 640, batch: 4, "
                f"runtime: openvino}}"
            )
        for backend in backends:
            name = "onnxruntime" if backend == "ort" else "openvino"
            stages.append(
                f"  int8_{backend}_{model}: {{type: quantize, from: {model}, backend: {name}, "
                f"calibration_images: {size['calibration']}, max_metric_drop: {size['max_drop']}}}"
            )
            stages.append(
                f"  bench_{backend}_{model}: {{type: benchmark, from: int8_{backend}_{model}, "
                f"bench_imgsz: 640, batch: 4}}"
            )
    return (
        f"version: 1\nname: bench-yolov8n-deploy\nseed: 0\nmodel: yolov8n.yaml\ndata: {size['data']}\n"
        f"defaults: {{imgsz: {size['imgsz']}, batch: {size['batch']}, args: {{nbs: 16}}}}\nstages:\n"
        + "\n".join(stages)
        + "\n"
    )


def rows(metrics: dict[str, dict], openvino: bool) -> list[dict]:
    out = []
    for model, label in (("train", "baseline"), ("finetune", "pruned 0.5")):
        timed = [("onnxruntime", f"fp32_{model}")] + ([("openvino", f"fp32_openvino_{model}")] if openvino else [])
        for runtime, node in timed:
            bench = metrics[node]
            out.append(
                {
                    "model": f"{label} FP32 ({'ONNX Runtime' if runtime == 'onnxruntime' else 'OpenVINO'})",
                    "runtime": runtime,
                    "macs": metrics[model]["macs"],
                    "size_mb": bench["file_size_mb_640px"],
                    "ms_640_t1": bench[LATENCY],
                    "mAP50-95": metrics[model]["mAP50-95"],
                }
            )
        for backend in ["ort"] + (["openvino"] if openvino else []):
            quantized, timed = metrics[f"int8_{backend}_{model}"], metrics[f"bench_{backend}_{model}"]
            out.append(
                {
                    "model": f"{label} INT8 ({'ONNX Runtime' if backend == 'ort' else 'OpenVINO'})",
                    "runtime": "onnxruntime" if backend == "ort" else "openvino",
                    "macs": quantized["macs"],
                    "size_mb": quantized["size_mb"],
                    "ms_640_t1": timed[LATENCY],
                    "mAP50-95": quantized["mAP50-95"],
                    "fp32_file_mAP50-95": quantized["fp32_mAP50-95"],
                }
            )
    base = out[0]["ms_640_t1"]  # the FP32 baseline in ONNX Runtime
    same = {r["runtime"]: r["ms_640_t1"] for r in reversed(out) if r["model"].startswith("baseline FP32")}
    for row in out:
        row["speedup"] = base / row["ms_640_t1"]
        row["speedup_same_runtime"] = same[row["runtime"]] / row["ms_640_t1"]
    return out


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    tiny = "--tiny" in sys.argv
    work = Path(args[0]).resolve() if args else Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    openvino = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
    if not openvino:
        print("openvino/nncf not installed: ONNX Runtime rows only (pip install 'recipe-runner[openvino]')")
    text = recipe(TINY if tiny else FULL, openvino)
    measuring = [
        line.split(":")[0].strip()
        for line in text.splitlines()
        if "type: benchmark" in line or "type: quantize" in line
    ]
    plan, reports, wall = run_recipe(text, work, force=tuple(measuring) if "--retime" in sys.argv else ())
    table = rows({r.node_id: r.metrics for r in reports}, openvino)
    print(
        f"{'model':34} {'MACs@' + str((TINY if tiny else FULL)['imgsz']):>9} {'MB':>6} {'ms@640 1t':>9} "
        f"{'speedup':>8} {'same-rt':>8} {'mAP50-95':>8}"
    )
    for r in table:
        print(
            f"{r['model']:34} {r['macs'] / 1e6:8.1f}M {r['size_mb']:6.2f} {r['ms_640_t1']:9.1f} "
            f"{r['speedup']:7.2f}x {r['speedup_same_runtime']:7.2f}x {r['mAP50-95']:8.3f}"
        )
    out = Path(__file__).resolve().parent / "results" / ("deploy_tiny.json" if tiny else "deploy.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "recipe": text,
                "wall_seconds": wall,
                "stage_seconds": compute_seconds(plan, reports),
                "latency": "batch 1, 1 thread, 640x640, median of 50 after 10 warm-up calls",
                "rows": table,
            },
            indent=2,
        )
    )
    print(f"wrote {out} ({wall:.0f} s for the recipe)")


if __name__ == "__main__":
    sys.exit(main())
