"""int8-qat: fine-tuning with INT8 fake quantization, delivered as ONNX Runtime's fast QDQ file (U8S8, per channel).

Tiny sizes: lenet at 32 px on 64 generated images, 1-2 epochs; YOLOv8n at 64 px on 16 images, 1 epoch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RecordingContext, cli, local_uri, stage_runs, write_recipe
from mlflow.tracking import MlflowClient
from torch import nn

from recipe_runner import persistence as T
from recipe_runner.quantization import layer_precision, qat

QAT_STAGES = """\
  train:
    type: train
    epochs: 1
  prune:
    type: prune
    method: depgraph
    ratio: 0.5
  int8:
    type: quantize
    mode: int8-qat
    epochs: 2
    calibration_images: 16
    max_metric_drop: 1
"""


def test_snapped_weights_keep_their_integers_when_batchnorm_folds_into_them():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    qat.snap_weights(conv)
    gains = torch.tensor([0.5, -2.0, 3.0, 1e-3]).view(4, 1, 1, 1)  # a folded BatchNorm scales each output channel
    folded = conv.weight.detach() * gains
    ints = (conv.weight / qat.weight_scale(conv.weight).view(4, 1, 1, 1)).detach()
    folded_ints = folded / qat.weight_scale(folded).view(4, 1, 1, 1)
    assert torch.allclose(ints, ints.round(), atol=1e-4)
    assert torch.allclose(folded_ints, ints * gains.sign(), atol=1e-4)


def test_fake_quant_state_survives_a_resume(tmp_path: Path, workspace: Path):
    from recipe_runner.data import resolve_data
    from recipe_runner.models.torchvision import TorchvisionFamily
    from recipe_runner.stages.quantize import QuantizeConfig

    family = TorchvisionFamily()
    data = resolve_data("builtin:shapes-cls?train=64&val=32&imgsz=32", "classify")
    config = QuantizeConfig(mode="int8-qat", epochs=2, imgsz=32, batch=16)
    first = RecordingContext(tmp_path)
    hook = qat.FakeQuant()
    family.train(family.build("lenet", data, 0), data, config, 2, first, hooks=[hook], keep="last")
    saved = first.states[0]["hooks"]["fake-quant"]["ranges"]
    layers = qat.quantizable(family.build("lenet", data, 0))
    assert set(saved) == set(layers) and all(high > low for low, high in saved.values())
    again = qat.FakeQuant()
    resumed = family.train(
        family.build("lenet", data, 0),
        data,
        config,
        2,
        RecordingContext(tmp_path, resume_state=first.states[0]),
        hooks=[again],
        keep="last",
    )
    assert resumed.epochs_trained == 1
    assert again.ranges == saved  # the trainer handed the saved ranges back before training went on
    # and training continued from them: one epoch of 4 batches moves a range by the moving average only
    for name, (_low, high) in again.state_dict()["ranges"].items():
        assert abs(high - saved[name][1]) <= 0.1 * (saved[name][1] - saved[name][0])


def test_qat_of_a_pruned_lenet_gives_an_int8_file_ort_runs_and_a_rerun_reuses_it(workspace: Path):
    import onnxruntime as ort

    path = write_recipe(workspace, QAT_STAGES)
    result = cli("run", path)
    assert result.exit_code == 0, result.output
    runs = {r.data.tags[T.NODE_ID]: r for r in stage_runs(local_uri(workspace))}
    int8 = runs["int8"]
    metrics = int8.data.metrics
    assert metrics["epochs_trained"] == 2 and "top1" in metrics and "q_top1" in metrics
    assert metrics["int8_layers"] >= 3 and metrics["float_layers"] == 0  # every conv and linear on INT8 weights
    client = MlflowClient(local_uri(workspace))
    history = client.get_metric_history(int8.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2]
    file = Path(client.download_artifacts(int8.info.run_id, int8.data.tags[T.OUTPUT_ARTIFACT], str(workspace / "q")))
    assert layer_precision(file)["float_layers"] == 0
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: np.zeros((2, 3, 32, 32), np.float32)})[0]
    assert out.shape[0] == 2
    again = cli("run", path)
    assert again.exit_code == 0 and "[reuse]  int8" in again.output, again.output


def test_qat_needs_epochs_and_a_backend_that_does_it(workspace: Path):
    for body, words in (
        ("    mode: int8-qat\n    epochs: 0\n", "stages.int8.epochs: Input should be greater than or equal to 1"),
        ("    mode: int8-qat\n", "mode int8-qat fine-tunes the model: set epochs"),
        ("    backend: openvino\n    mode: int8-qat\n    epochs: 1\n", "backend openvino does mode"),
    ):
        path = write_recipe(workspace, f"  train:\n    type: train\n  int8:\n    type: quantize\n{body}")
        result = cli("validate", path)
        assert result.exit_code == 2 and words in result.output and "recipe.yaml:" in result.output, result.output


@pytest.mark.parametrize("mode", ["int8-static"])
def test_training_keys_leave_ptq_keys_alone(mode: str):
    from recipe_runner.stages.quantize import QuantizeConfig

    plain = QuantizeConfig(mode=mode).identity()
    assert QuantizeConfig(mode=mode, epochs=3, lr=0.5, distill={"teacher": "x"}).identity() == plain
    assert "epochs" not in plain and "lr" not in plain


def test_qat_of_a_pruned_yolo_keeps_only_the_decode_float(family, tiny_data, tmp_path: Path):
    """The stage's steps, without the recipe around them (the lenet test runs those): fine-tune with fake
    quantization, snap, export, quantize as int8-static does."""
    import onnx

    from recipe_runner.pruning import METHODS, plan_steps
    from recipe_runner.quantization import BACKENDS, QuantizeRequest
    from recipe_runner.stages.quantize import QuantizeConfig

    method = METHODS.get("depgraph")
    model = method.prune_step(
        family.build("yolov8n.yaml", tiny_data, seed=0),
        family,
        tiny_data,
        method.config(method="depgraph", imgsz=64, ratio=0.5),
        plan_steps(0.5, 1)[0],
    )
    cost = family.cost(model, 64)
    config = QuantizeConfig(mode="int8-qat", epochs=1, imgsz=64, batch=8)
    hook = qat.FakeQuant(family.qat_float_layers)
    result = family.train(model, tiny_data, config, 1, RecordingContext(tmp_path), hooks=[hook], keep="last")
    assert hook.state_dict()["ranges"] and not any("dfl" in name for name in hook.state_dict()["ranges"])
    tuned = qat.finish(result.model, family.qat_float_layers)
    assert family.cost(tuned, 64) == cost
    fp32 = family.write_onnx(tuned, tmp_path / "fp32.onnx", 64)
    request = QuantizeRequest(
        fp32, tmp_path / "int8.onnx", "int8-static", calibration=family.calibration_batches(tiny_data, 64, 4)
    )
    request.keep_float = family.float_nodes(onnx.load(str(fp32)))
    BACKENDS.get("onnxruntime").quantize(request)
    precision = layer_precision(request.target)
    # every convolution on INT8 weights but the DFL's (the head's decode, float as in PTQ)
    assert precision["int8_layers"] >= 60 and precision["float_layers"] == 1
    assert family.evaluate_file(request.target, tiny_data, config)["mAP50-95"] >= 0
