"""method: low-rank: SVD / Tucker-2 factors, the rebuild from a weights_only checkpoint, ONNX, recipes end to end."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_DATA, cli, local_uri, stage_runs, write_recipe
from mlflow.tracking import MlflowClient
from torch import nn

from recipe_runner import persistence as T
from recipe_runner.models.lowrank_layers import LowRankConv2d
from recipe_runner.models.torchvision import TorchvisionFamily
from recipe_runner.pruning import METHODS, plan_steps
from recipe_runner.pruning.lowrank import LowRankConfig, decompose_conv, decompose_linear


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _low_rank_weight(c_out: int, c_in: int, k: int, rank: int) -> torch.Tensor:
    """A kernel whose channel unfoldings have rank `rank`, plus a little noise: a spectrum that decays."""
    torch.manual_seed(0)
    core = torch.randn(rank, rank, k, k)
    u_out, u_in = torch.linalg.qr(torch.randn(c_out, rank))[0], torch.linalg.qr(torch.randn(c_in, rank))[0]
    return torch.einsum("or,rshw,is->oihw", u_out, core, u_in) + 0.01 * torch.randn(c_out, c_in, k, k)


@pytest.mark.parametrize("stride", [1, 2])
def test_tucker2_conv_is_exact_at_full_rank_and_degrades_gracefully(stride: int):
    conv = nn.Conv2d(16, 24, 3, stride=stride, padding=1).eval()
    with torch.no_grad():
        conv.weight.copy_(_low_rank_weight(24, 16, 3, 6))
    x = torch.randn(2, 16, 15, 15)
    y = conv(x)
    full = decompose_conv(conv, [16, 24]).eval()
    assert [type(m) for m in full] == [nn.Conv2d, nn.Conv2d, nn.Conv2d]
    assert full.core.stride == (stride, stride) and full.reduce.stride == (1, 1)
    assert torch.allclose(full(x), y, atol=1e-5)
    # the error grows as the ranks shrink; the kernel's true rank (6) keeps it at the noise level
    errors = [_relative_error(decompose_conv(conv, [r, r])(x), y) for r in (12, 6, 3, 1)]
    assert errors == sorted(errors), errors
    assert errors[1] < 0.05 and errors[-1] > 0.3


def test_pointwise_conv_and_linear_are_svd_exact_at_full_rank():
    conv = nn.Conv2d(12, 20, 1, stride=2).eval()
    x = torch.randn(2, 12, 9, 9)
    low = decompose_conv(conv, [12])
    assert "core" not in low._modules and low.reduce.stride == (2, 2)
    assert torch.allclose(low(x), conv(x), atol=1e-5)
    linear = nn.Linear(30, 20)
    with torch.no_grad():
        linear.weight.copy_(_low_rank_weight(20, 30, 1, 5)[:, :, 0, 0])
    v = torch.randn(4, 30)
    assert torch.allclose(decompose_linear(linear, 20)(v), linear(v), atol=1e-5)
    errors = [_relative_error(decompose_linear(linear, r)(v), linear(v)) for r in (10, 5, 2)]
    assert errors == sorted(errors) and errors[1] < 0.1 and errors[2] > 0.3, errors
    # multiplied back out: the factors are the layer they replace
    assert torch.allclose(
        decompose_linear(linear, 7).dense().weight,
        decompose_linear(linear, 7).expand.weight @ decompose_linear(linear, 7).reduce.weight,
    )


def _resnet18(classes: int = 3) -> nn.Module:
    return TorchvisionFamily().build("resnet18", SimpleNamespace(num_classes=classes), seed=0).eval()


def _lowrank(model: nn.Module, family, steps: int = 1, **keys) -> nn.Module:
    config = LowRankConfig(method="low-rank", imgsz=32, steps=steps, **keys)
    for plan in plan_steps(config.ratio, config.steps):
        model = METHODS.get("low-rank").prune_step(model, family, None, config, plan)
    return model.eval()


def test_resnet18_at_half_rank_is_smaller_reloads_exactly_and_exports_onnx(tmp_path: Path):
    family = TorchvisionFamily()
    model = _resnet18()
    before = family.cost(model, 32)
    model = _lowrank(model, family, rank_ratio=0.5)
    after = family.cost(model, 32)
    assert after["macs"] < 0.6 * before["macs"] and after["params"] < 0.6 * before["params"], (before, after)
    assert isinstance(model.layer1[0].conv1, LowRankConv2d) and model.layer1[0].conv1.ranks == [32, 32]
    assert isinstance(model.layer2[0].downsample[0], LowRankConv2d)  # 1x1, stride 2: SVD
    assert isinstance(model.fc, nn.Linear)  # the output layer is left alone
    table = METHODS.get("low-rank").layer_table(model)
    assert {row["layer"] for row in table} >= {"conv1", "layer4.1.conv2"} and all(r["macs_ratio"] < 1 for r in table)

    # the stage checkpoint: plain data, loaded with weights_only, rebuilt onto a fresh resnet18
    path = tmp_path / "ckpt.pt"
    torch.save(family.describe(model), path)
    rebuilt = family.rebuild(torch.load(path, weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    assert family.cost(rebuilt, 32) == after

    # ONNX Runtime agrees with PyTorch
    import onnxruntime as ort

    onnx_path = family.write_onnx(rebuilt, tmp_path / "m.onnx", 32)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = rebuilt(x).numpy()
    np.testing.assert_allclose(sess.run(None, {"images": x.numpy()})[0], expected, atol=1e-4, rtol=1e-3)


def test_steps_compound_to_the_rank_ratio_and_energy_picks_ranks():
    family = TorchvisionFamily()

    def tinyvgg() -> nn.Module:
        return family.build("tinyvgg", SimpleNamespace(num_classes=3), seed=0).eval()

    table = METHODS.get("low-rank").layer_table
    once = table(_lowrank(tinyvgg(), family, rank_ratio=0.25))
    twice = table(_lowrank(tinyvgg(), family, steps=2, rank_ratio=0.25))
    ranks = {r["layer"]: r["rank"] for r in once}
    assert ranks == {r["layer"]: r["rank"] for r in twice}
    assert ranks["features.4.0"] == [16, 32]  # a 128x64 3x3 kernel: a quarter of each full rank (64, 128)
    # energy: more energy kept, wider factors (never wider than the layer's full rank)
    low = table(_lowrank(tinyvgg(), family, energy=0.5))
    high = table(_lowrank(tinyvgg(), family, energy=0.8))
    rank_of = {r["layer"]: r["rank"] for r in high}
    shared = [r for r in low if r["layer"] in rank_of]
    assert shared and all(a <= b for r in shared for a, b in zip(r["rank"], rank_of[r["layer"]]))
    assert any(a < b for r in shared for a, b in zip(r["rank"], rank_of[r["layer"]]))
    assert all(rank <= full for r in high for rank, full in zip(r["rank"], r["full_rank"]))


def test_bad_low_rank_keys_are_located_errors(workspace: Path):
    cases = {
        "rank_ratio: 0": "greater than 0",
        "rank_ratio: 0.5, energy: 0.9": "rank_ratio or energy, not both",
        "ratio: 0.3": "ratio is not a key of method: low-rank",
    }
    for keys, message in cases.items():
        path = write_recipe(workspace, f"  prune: {{type: prune, method: low-rank, {keys}}}\n")
        result = cli("validate", path)
        assert result.exit_code == 2, result.output
        assert f"{path}:" in result.output and message in result.output, result.output


LENET = """\
  train: {type: train, epochs: 1, lr: 0.05}
  prune: {type: prune, method: low-rank, rank_ratio: 0.4, steps: 2, finetune_epochs: 1}
  onnx: {type: export, from: prune}
  int8: {type: quantize, from: prune, calibration_images: 16, max_metric_drop: 1}
"""


def test_low_rank_recipe_logs_ranks_fine_tunes_exports_and_quantizes(workspace: Path):
    result = cli("run", write_recipe(workspace, LENET))
    assert result.exit_code == 0, result.output
    uri = local_uri(workspace)
    runs = {r.data.tags[T.NODE_ID]: r for r in stage_runs(uri)}
    client = MlflowClient(uri)
    prune = runs["prune"]
    macs = [m.value for m in client.get_metric_history(prune.info.run_id, "step/macs")]
    assert len(macs) == 3 and macs[0] > macs[1] > macs[2], macs  # before, after step 1, after step 2
    assert len(client.get_metric_history(prune.info.run_id, "step/top1_before_ft")) == 2
    folder = Path(client.download_artifacts(prune.info.run_id, "layers", str(workspace / "dl")))
    table = json.loads((folder / "layers_step2.json").read_text())
    assert {r["layer"] for r in table} == {"features.0.0", "features.2.0", "classifier.1", "classifier.3"}
    assert runs["onnx"].data.metrics["onnx_max_abs_diff"] < 1e-3
    assert runs["int8"].data.metrics["int8_layers"] > 0


YOLO_LOWRANK = f"""\
version: 1
name: tiny-yolo-lowrank
seed: 0
model: yolov8n.yaml
data: {TINY_DATA}
defaults:
  imgsz: 64
  batch: 8
stages:
  train: {{type: train, epochs: 1}}
  prune: {{type: prune, method: low-rank, rank_ratio: 0.4, finetune_epochs: 1}}
  onnx: {{type: export}}
"""


def test_yolo_low_rank_step_fine_tunes_reloads_and_exports(workspace: Path, family):
    from ultralytics.nn.modules.conv import Conv
    from ultralytics.nn.modules.head import Detect

    from recipe_runner.persistence import load_checkpoint

    recipe = workspace / "yolo.yaml"
    recipe.write_text(YOLO_LOWRANK)
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    uri = local_uri(workspace)
    runs = {r.data.tags[T.NODE_ID]: r for r in stage_runs(uri)}
    train, prune, onnx = runs["train"].data.metrics, runs["prune"].data.metrics, runs["onnx"].data.metrics
    assert prune["macs"] < 0.8 * train["macs"] and prune["params"] < 0.8 * train["params"]
    assert prune["epochs_trained"] == 1
    assert onnx["onnx_max_abs_diff"] < 1e-3 * max(onnx["onnx_output_scale"], 1.0)
    # the fine-tuned stage checkpoint rebuilds (weights_only) with Ultralytics' conv+bn+act wrappers decomposed
    # inside (BatchNorm after the expand factor) and the Detect head as it was
    client = MlflowClient(uri)
    path = Path(client.download_artifacts(runs["prune"].info.run_id, T.CHECKPOINT_ARTIFACT, str(workspace / "dl")))
    model = family.rebuild(load_checkpoint(path, runs["prune"].data.tags[T.CHECKPOINT_SHA])["model"])
    decomposed = [m for m in model.modules() if isinstance(m, LowRankConv2d)]
    assert decomposed and all(m.wrapped and type(m.expand) is Conv for m in decomposed)
    head = next(m for m in model.modules() if isinstance(m, Detect))
    assert not any(isinstance(m, LowRankConv2d) for m in head.modules())
    assert isinstance(model.model[1], LowRankConv2d) and model.model[1].i == 1  # Ultralytics' routing kept
    assert family.cost(model, 64)["macs"] == prune["macs"]


def test_a_tampered_decomposition_record_is_refused():
    from recipe_runner.persistence import CheckpointError

    family = TorchvisionFamily()
    description = family.describe(_lowrank(family.build("lenet", SimpleNamespace(num_classes=3), seed=0), family))
    assert family.rebuild(description) is not None
    tampered = [
        {**description["decomposed"][0], "name": "features.9"},  # no such layer
        {**description["decomposed"][0], "name": "features.0.1"},  # a BatchNorm, not a convolution
        {**description["decomposed"][0], "ranks": [0, 3]},
        {**description["decomposed"][0], "kind": "eval"},
        {**description["decomposed"][0], "extra": 1},
    ]
    for record in tampered:
        with pytest.raises(CheckpointError):
            family.rebuild({**description, "decomposed": [record]})
