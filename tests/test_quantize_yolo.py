"""quantize on YOLO through the engine: the head's decode stays float, INT8 and FP16 of a pruned model, and a
forced collapse (head quantized too, a test-only switch) that the max_metric_drop guard must catch.

A collapse is only measurable on a model that detects something: 1-2 epochs leave mAP at 0 on tiny data, so
the module trains one model 30 epochs (32 images, 64 px: mAP50-95 about 0.17) once, and every test's recipe
shares that train stage (reused by cache key from the module's MLflow store).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import cli, local_uri, stage_runs
from mlflow.tracking import MlflowClient

from recipe_runner import persistence as T

HEADER = """\
version: 1
name: tiny-yolo-quantize
seed: 0
model: yolov8n.yaml
data: builtin:shapes?train=32&val=8&imgsz=64
defaults: {imgsz: 64, batch: 8}
stages:
  train: {type: train, epochs: 30, args: {nbs: 8, warmup_epochs: 1, mosaic: 0.0}}
"""
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
NO_OPENVINO = "the openvino extra is not installed (pip install 'recipe-runner[openvino]')"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose mlflow.db holds the trained model (trained once, by the first test that needs it)."""
    return tmp_path_factory.mktemp("yolo-quantize")


@pytest.fixture
def here(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RECIPE_RUNNER_CACHE", str(tmp_path.parent / "rr-cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(store)
    return store


def run(folder: Path, stages: str):
    recipe = folder / "recipe.yaml"
    recipe.write_text(HEADER + stages)
    result = cli("run", recipe)
    return result, {r.data.tags[T.NODE_ID]: r for r in stage_runs(local_uri(folder))}


def download(folder: Path, run_) -> Path:
    client = MlflowClient(local_uri(folder))
    return Path(
        client.download_artifacts(
            run_.info.run_id, run_.data.tags[T.OUTPUT_ARTIFACT], str(folder / "dl" / run_.info.run_id)
        )
    )


def test_forced_head_quantization_collapses_and_the_guard_fails_the_stage(here: Path):
    # the default rule (head decode float) keeps the trained model within the bound
    result, runs = run(here, "  int8: {type: quantize, calibration_images: 32}\n")
    assert result.exit_code == 0, result.output
    train, int8 = runs["train"].data.metrics, runs["int8"].data.metrics
    assert train["mAP50-95"] > 0.1, "the shared model must detect something for a collapse to be measurable"
    assert int8["mAP50-95"] >= int8["fp32_mAP50-95"] - 0.05
    # the test-only switch quantizes the head's decode too: one INT8 scale for pixel boxes and 0-1 scores
    result, runs = run(here, "  int8: {type: quantize, calibration_images: 32, test_only_quantize_head: true}\n")
    assert result.exit_code == 1, result.output
    failed = runs["int8"]
    assert failed.info.status == "FAILED"
    reference, collapsed = failed.data.metrics["fp32_mAP50-95"], failed.data.metrics["q_mAP50-95"]
    assert reference - collapsed > 0.05
    message = failed.data.tags[T.ERROR]
    assert (
        f"int8-static mAP50-95 {collapsed:.4f} is {reference - collapsed:.4f} below the FP32 model's "
        f"{reference:.4f} (max_metric_drop 0.05)" in message
    )
    assert "(test only)" in failed.data.tags[T.WARNING]


PRUNED = """\
  prune: {type: prune, method: depgraph, ratio: 0.5, args: {nbs: 8, warmup_epochs: 0, mosaic: 0.0}}
  finetune: {type: finetune, epochs: 2, args: {nbs: 8, warmup_epochs: 0, mosaic: 0.0}}
  int8: {type: quantize, from: finetune, calibration_images: 16}
  fp16: {type: quantize, from: finetune, mode: fp16}
  bench: {type: benchmark, from: int8, bench_imgsz: 96, runs: 50, batch: 2}
"""


def test_int8_and_fp16_of_a_pruned_yolo_keep_the_head_decode_float(here: Path):
    result, runs = run(here, PRUNED)
    assert result.exit_code == 0, result.output
    finetune, int8, fp16 = runs["finetune"].data, runs["int8"].data, runs["fp16"].data
    assert finetune.metrics["macs"] < 0.5 * runs["train"].data.metrics["macs"]
    path = download(here, runs["int8"])
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    int8_convs = [
        n.name
        for n in convs
        if producer.get(n.input[1]) is not None
        and producer[n.input[1]].op_type == "DequantizeLinear"
        and inits[producer[n.input[1]].input[0]].data_type == onnx.TensorProto.INT8
    ]
    float_convs = sorted({n.name for n in convs} - set(int8_convs))
    # every convolution on int8 weights, except the head's DFL (its fixed 0..15 projection is decode, not features)
    assert float_convs == ["/model.22/dfl/conv/Conv"], float_convs
    assert int8.metrics["int8_layers"] == len(int8_convs) and int8.metrics["float_layers"] == 1
    # nothing after the head's branches is quantized: the final Concat of boxes and scores is fed in float
    head_decode = [
        n
        for n in model.graph.node
        if n.name.startswith("/model.22/") and "/cv2." not in n.name and "/cv3." not in n.name
    ]
    assert not [n.name for n in head_decode if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    final = producer[model.graph.output[0].name]
    assert final.op_type == "Concat" and all(producer[i].op_type != "DequantizeLinear" for i in final.input)
    # the file runs in ONNX Runtime (any size: dynamic axes) and Ultralytics' validator measured it
    import onnxruntime as ort

    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"images": np.zeros((1, 3, 96, 96), np.float32)}
    )[0]
    assert out.shape[0] == 1 and out.shape[1] == 4 + 3
    for metrics in (int8.metrics, fp16.metrics):
        for name in ("mAP50", "mAP50-95", "fp32_mAP50-95", "parent_mAP50-95", "size_mb", "latency_ms_t1"):
            assert name in metrics, name
    assert int8.metrics["size_mb"] < 0.4 * int8.metrics["fp32_size_mb"]
    assert fp16.metrics["fp16_initializers"] > 0 and fp16.metrics["size_mb"] < 0.6 * fp16.metrics["fp32_size_mb"]
    bench = runs["bench"].data.metrics
    assert bench["latency_ms_t1_96px"] > 0 and bench["latency_ms_t1_64px"] > 0 and bench["throughput_t1_b2_96px"] > 0


@pytest.mark.skipif(not HAS_OPENVINO, reason=NO_OPENVINO)
def test_openvino_backend_on_yolo_keeps_the_head_decode_float(here: Path):
    result, runs = run(here, "  ov: {type: quantize, backend: openvino, calibration_images: 16}\n")
    assert result.exit_code == 0, result.output
    metrics = runs["ov"].data.metrics
    assert metrics["int8_layers"] >= 60 and metrics["float_layers"] == 1  # the DFL convolution
    assert metrics["mAP50-95"] >= metrics["fp32_mAP50-95"] - 0.05
    from recipe_runner.runtimes import openvino_runtime

    path = download(here, runs["ov"])
    out = openvino_runtime.run(openvino_runtime.session(path), np.zeros((1, 3, 64, 64), np.float32))
    assert out.shape[:2] == (1, 7)
