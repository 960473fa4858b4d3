"""quantize, evaluate-a-file and benchmark stages through the engine, with real ONNX Runtime (and OpenVINO where
installed), on a tiny pruned classifier. The YOLO cases are in test_quantize_yolo.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import cli, local_uri, stage_runs, write_recipe
from mlflow.tracking import MlflowClient

from recipe_runner import persistence as T

PRUNED = """\
  train: {type: train, epochs: 2, lr: 0.05}
  prune: {type: prune, method: depgraph, ratio: 0.5}
"""
QUANTIZED = (
    PRUNED
    + """\
  int8: {type: quantize, from: prune, calibration_images: 32}
  fp16: {type: quantize, from: prune, mode: fp16}
  dynamic: {type: quantize, from: prune, mode: int8-dynamic}
  bench: {type: benchmark, from: int8, bench_imgsz: 48, batch: 4}
  evaluate: {type: evaluate, from: bench}
"""
)
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
NO_OPENVINO = "the openvino extra is not installed (pip install 'recipe-runner[openvino]')"


def by_node(runs) -> dict:
    return {r.data.tags[T.NODE_ID]: r for r in runs}


def output_file(uri: str, run, folder: Path) -> Path:
    return Path(MlflowClient(uri).download_artifacts(run.info.run_id, run.data.tags[T.OUTPUT_ARTIFACT], str(folder)))


def int8_weight_inputs(path: Path) -> dict[str, bool]:
    """For every Conv/Gemm: is its weight a DequantizeLinear of an int8 initializer?"""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    found = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            source = producer.get(node.input[1])
            found[node.name] = bool(
                source is not None
                and source.op_type == "DequantizeLinear"
                and inits.get(source.input[0]) is not None
                and inits[source.input[0]].data_type == onnx.TensorProto.INT8
            )
    return found


def test_int8_fp16_dynamic_of_a_pruned_classifier_then_benchmark_and_evaluate_the_file(workspace: Path):
    result = cli("run", write_recipe(workspace, QUANTIZED))
    assert result.exit_code == 0, result.output
    uri = local_uri(workspace)
    runs = by_node(stage_runs(uri))
    int8, fp16, dynamic = runs["int8"].data, runs["fp16"].data, runs["dynamic"].data
    # the INT8 file: every convolution (and linear layer) runs on int8 weights, and ONNX Runtime loads it
    path = output_file(uri, runs["int8"], workspace / "dl")
    weights = int8_weight_inputs(path)
    assert weights and all(weights.values()), weights
    assert int8.metrics["int8_layers"] == len(weights) and int8.metrics["float_layers"] == 0
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"images": np.zeros((2, 3, 32, 32), np.float32)})[0].shape == (2, 4)  # dynamic batch
    # its own accuracy, next to the FP32 file's and the parent run's; smaller than FP32; timed
    for name in (
        "top1",
        "fp32_top1",
        "parent_top1",
        "metric_drop",
        "latency_ms_t1",
        "latency_p90_ms_t1",
        "fp32_latency_ms_t1",
        "speedup_t1",
        "calibration_images",
        "macs",
        "params",
    ):
        assert name in int8.metrics, name
    assert int8.metrics["top1"] == int8.metrics["q_top1"]
    # the export stage's name for the same ONNX Runtime timing, so compare puts INT8 next to FP32 exports
    assert int8.metrics["onnx_latency_ms"] == int8.metrics["latency_ms_t1"]
    assert int8.metrics["metric_drop"] == pytest.approx(int8.metrics["fp32_top1"] - int8.metrics["top1"])
    assert int8.metrics["metric_drop"] <= 0.05
    assert int8.metrics["size_mb"] < 0.5 * int8.metrics["fp32_size_mb"]
    assert int8.metrics["calibration_images"] == 32  # from the 64 training images
    client = MlflowClient(uri)
    calibration = client.list_artifacts(runs["int8"].info.run_id, "calibration")
    assert [a.path for a in calibration] == ["calibration/ranges.json"]
    assert not client.list_artifacts(runs["int8"].info.run_id, "checkpoint")
    # fp16: half-size float16 weights, a console note that CPUs gain nothing
    assert fp16.metrics["fp16_initializers"] > 0 and fp16.metrics["int8_layers"] == 0
    assert fp16.metrics["size_mb"] < 0.6 * fp16.metrics["fp32_size_mb"]
    assert "GPU target" in fp16.tags[T.WARNING] and "[warn]   fp16: fp16 is a GPU target" in result.output
    # int8-dynamic: the linear layers only; the convolutions stay float
    assert dynamic.metrics["int8_layers"] == 3 and dynamic.metrics["float_layers"] == 2
    # benchmark: batch 1 at 1 and all cores, at imgsz; a fixed-size classifier file is not timed at 48 px
    bench = runs["bench"].data.metrics
    assert {"latency_ms_t1_32px", "latency_p90_ms_t1_32px", "throughput_t1_b4_32px", "file_size_mb_32px"} <= set(bench)
    assert bench["file_size_mb_32px"] == pytest.approx(int8.metrics["size_mb"])
    assert "not timed at 48" in runs["bench"].data.tags[T.WARNING]
    # evaluate after benchmark: the same file, measured again, hands it on
    evaluate = runs["evaluate"].data
    assert evaluate.metrics["top1"] == int8.metrics["top1"]
    assert evaluate.tags[T.OUTPUT_SHA] == int8.tags[T.OUTPUT_SHA]

    # a re-run reuses every stage; a forced quantize reuses its cached calibration ranges
    again = cli("run", write_recipe(workspace, QUANTIZED))
    assert again.exit_code == 0, again.output
    assert {r.data.tags[T.ROLE] for r in stage_runs(uri)} == {"reused"}
    forced = cli("run", write_recipe(workspace, QUANTIZED), "--force", "int8", "--only", "int8")
    assert forced.exit_code == 0, forced.output
    rerun = by_node(stage_runs(uri))["int8"].data
    assert rerun.tags[T.ROLE] == "stage" and rerun.metrics["calibration_reused"] == 1.0
    assert rerun.metrics["top1"] == int8.metrics["top1"]


def test_benchmark_of_a_model_exports_fp32_at_both_sizes(workspace: Path):
    stages = "  train: {type: train, epochs: 1}\n  bench: {type: benchmark, bench_imgsz: 48, batch: 2}\n"
    result = cli("run", write_recipe(workspace, stages))
    assert result.exit_code == 0, result.output
    bench = by_node(stage_runs(local_uri(workspace)))["bench"].data.metrics
    for size in (32, 48):
        assert bench[f"latency_ms_t1_{size}px"] > 0 and bench[f"throughput_t1_b2_{size}px"] > 0
    assert bench["latency_ms_t1_48px"] <= bench["latency_p90_ms_t1_48px"]
    assert "top1" in bench  # the parent's accuracy, for the compare view


@pytest.mark.skipif(not HAS_OPENVINO, reason=NO_OPENVINO)
def test_openvino_backend_quantizes_a_pruned_classifier(workspace: Path):
    stages = PRUNED + (
        "  ov: {type: quantize, backend: openvino, calibration_images: 32}\n"
        "  bench_ov: {type: benchmark, from: ov, batch: 2}\n"
        "  bench_fp32_ov: {type: benchmark, from: prune, runtime: openvino, batch: 2}\n"
    )
    result = cli("run", write_recipe(workspace, stages))
    assert result.exit_code == 0, result.output
    uri = local_uri(workspace)
    ov_run = by_node(stage_runs(uri))["ov"]
    metrics = ov_run.data.metrics
    assert metrics["int8_layers"] == 5 and metrics["float_layers"] == 0  # 2 conv + 3 linear, on int8 weights
    assert "top1" in metrics and "fp32_top1" in metrics and metrics["metric_drop"] <= 0.05
    assert "latency_ms_t1" in metrics and "fp32_latency_ms_t1" in metrics  # both timed by OpenVINO
    path = output_file(uri, ov_run, workspace / "dl")
    from recipe_runner.runtimes import openvino_runtime

    model = openvino_runtime.session(path, threads=1)
    assert openvino_runtime.run(model, np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 4)
    # benchmark: OpenVINO runs the .openvino file, and (runtime: openvino) an FP32 export of a model
    runs = by_node(stage_runs(uri))
    for node in ("bench_ov", "bench_fp32_ov"):
        bench = runs[node].data.metrics
        assert bench["openvino_runtime"] == 1.0 and bench["latency_ms_t1_32px"] > 0, node
        assert bench["throughput_t1_b2_32px"] > 0, node
