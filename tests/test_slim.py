"""method: slim (network slimming's pruning step) and depgraph's hessian / bn-scale importances and max_layer_ratio.

Real torch-pruning throughout; hand-made nets with hand-set gammas for exactness, tiny recipes end to end.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import cli, count_runs, local_uri, stage_runs, write_recipe
from mlflow.tracking import MlflowClient
from test_yolo import YOLO_RECIPE
from torch import nn

from recipe_runner import persistence as T
from recipe_runner.models.torchvision import TorchvisionFamily
from recipe_runner.persistence import load_checkpoint
from recipe_runner.pruning import METHODS, plan_steps


class ConvBnNet(nn.Module):
    """conv-bn-relu x2, pooled into a linear head: two prunable layers, each ranked by its own BatchNorm."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.c2, self.b2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 2)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


class BareFamily:
    """The three family methods slim's step uses, for a plain module."""

    def prepare_for_pruning(self, model):
        return model

    def example_inputs(self, model, imgsz):
        return torch.randn(1, 3, imgsz, imgsz)

    def output_layers(self, model):
        return [model.fc]


def _net(gammas1: list[float], gammas2: list[float]) -> ConvBnNet:
    torch.manual_seed(0)
    net = ConvBnNet(len(gammas1)).eval()
    with torch.no_grad():
        net.b1.weight.copy_(torch.tensor(gammas1))
        net.b2.weight.copy_(torch.tensor(gammas2))
    return net


def _slim(net: nn.Module, ratio: float, **keys) -> nn.Module:
    method = METHODS.get("slim")
    config = method.config(method="slim", ratio=ratio, imgsz=16, **keys)
    return method.prune_step(net, BareFamily(), None, config, plan_steps(ratio, 1)[0])


def _surviving(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    """Which original output channels (rows of `before`) the pruned weight's rows are."""
    return [next(i for i in range(len(before)) if torch.equal(before[i], row)) for row in after]


def test_slim_removes_exactly_the_channels_with_the_smallest_gammas():
    net = _net([0.5, 0.01, 0.9, 0.02, 0.7, 0.03, 0.8, 0.6], [0.05, 0.4, 0.3, 0.04, 0.2, 0.35, 0.25, 0.45])
    c1, c2 = net.c1.weight.detach().clone(), net.c2.weight.detach().clone()
    x = torch.randn(2, 3, 16, 16)
    pruned = _slim(net, ratio=0.25)  # 4 of 16 channels: gammas 0.01, 0.02, 0.03 (layer 1) and 0.04 (layer 2)
    assert _surviving(c1, pruned.c1.weight) == [0, 2, 4, 6, 7]
    kept2 = _surviving(c2[:, [0, 2, 4, 6, 7]], pruned.c2.weight)  # c2's inputs shrank with c1's outputs
    assert kept2 == [0, 1, 2, 4, 5, 6, 7]
    assert pruned.b2.weight.tolist() == pytest.approx([0.05, 0.4, 0.3, 0.2, 0.35, 0.25, 0.45])
    assert pruned.fc.in_features == 7 and pruned(x).shape == (2, 2)


def test_ranking_is_global_and_capped_per_layer():
    """A layer whose gammas are all small gives up the most channels, but never more than max_layer_ratio."""
    small, large = [0.01 * (i + 1) for i in range(8)], [1.0 + 0.1 * i for i in range(8)]
    pruned = _slim(_net(small, large), ratio=0.5, max_layer_ratio=0.75)
    # 8 of 16 wanted; layer 1 stops at 6 (0.75 x 8), so layer 2 gives its 2 smallest
    assert pruned.b1.weight.tolist() == pytest.approx([0.07, 0.08])
    assert pruned.b2.weight.tolist() == pytest.approx(large[2:])
    uncapped = _slim(_net(small, large), ratio=0.5)  # default 0.9: 7 of layer 1, 1 of layer 2
    assert uncapped.b1.weight.numel() == 1 and uncapped.b2.weight.numel() == 7


def test_slim_and_depgraph_importances_end_to_end_with_reload_and_onnx(workspace: Path):
    """lenet (BatchNorm after every conv): slim in 2 steps, depgraph hessian and bn-scale as branches of one train."""
    stages = """\
  train:
    type: train
    epochs: 1
    lr: 0.05
  slim:
    type: prune
    from: train
    method: slim
    ratio: 0.4
    steps: 2
    finetune_epochs: 1
  onnx:
    type: export
    from: slim
    format: onnx
  hessian:
    type: prune
    from: train
    method: depgraph
    importance: hessian
    taylor_batches: 2
    ratio: 0.4
  bn_scale:
    type: prune
    from: train
    method: depgraph
    importance: bn-scale
    ratio: 0.4
    max_layer_ratio: 0.5
"""
    result = cli("run", write_recipe(workspace, stages))
    assert result.exit_code == 0, result.output
    uri = local_uri(workspace)
    runs = {r.data.tags[T.NODE_ID]: r for r in stage_runs(uri)}
    train = runs["train"].data.metrics
    for node in ("slim", "hessian", "bn_scale"):
        assert runs[node].info.status == "FINISHED", node
        assert runs[node].data.metrics["macs"] < 0.8 * train["macs"], node  # channels really went
    client = MlflowClient(uri)
    slim = runs["slim"]
    assert [m.step for m in client.get_metric_history(slim.info.run_id, "step/top1_before_ft")] == [1, 2]
    # the engine's checkpoint rebuilds the pruned model (plain data) with the logged size, and it runs
    path = Path(client.download_artifacts(slim.info.run_id, T.CHECKPOINT_ARTIFACT, str(workspace / "dl")))
    model = TorchvisionFamily().rebuild(load_checkpoint(path, slim.data.tags[T.CHECKPOINT_SHA])["model"])
    assert sum(p.numel() for p in model.parameters()) == slim.data.metrics["params"]
    assert model(torch.randn(2, 3, 32, 32)).shape[0] == 2
    assert runs["onnx"].data.metrics["onnx_max_abs_diff"] < 1e-3


def test_slim_prunes_yolo_end_to_end(workspace: Path):
    recipe = workspace / "yolo.yaml"
    recipe.write_text(YOLO_RECIPE.replace("method: depgraph", "method: slim"))
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    runs = {r.data.tags[T.NODE_ID]: r for r in stage_runs(local_uri(workspace))}
    assert runs["prune"].data.metrics["macs"] < 0.8 * runs["train"].data.metrics["macs"]
    assert runs["onnx"].data.metrics["onnx_max_abs_diff"] < 1e-3


@pytest.mark.parametrize(
    "stage, keys, key, words",
    [
        ("prune", "type: prune\n    method: slim", "method", "method: slim needs BatchNorm layers"),
        (
            "prune",
            "type: prune\n    method: depgraph\n    importance: bn-scale",
            "importance",
            "importance: bn-scale needs BatchNorm layers",
        ),
        # refused before the train stage before it trains for nothing
        ("sparse", "type: sparse-train\n    penalty: bn-l1", "penalty", "penalty bn-l1 needs BatchNorm layers"),
    ],
)
def test_batchnorm_methods_refuse_a_model_without_batchnorm_before_anything_runs(
    workspace: Path, stage: str, keys: str, key: str, words: str
):
    recipe = write_recipe(workspace, f"  train:\n    type: train\n  {stage}:\n    {keys}\n")
    recipe.write_text(recipe.read_text().replace("model: lenet", "model: vgg11"))  # vgg11: no BatchNorm
    line = next(n for n, text in enumerate(recipe.read_text().splitlines(), 1) if text.startswith(f"    {key}:"))
    for command in ("plan", "run"):
        result = cli(command, recipe)
        assert result.exit_code == 2, result.output
        assert f"{recipe}:{line}:" in result.stderr and f"stages.{stage}.{key}: {words}" in result.stderr, result.stderr
    assert count_runs(workspace / "mlflow.db") == 0


def test_max_layer_ratio_stays_out_of_old_depgraph_cache_keys():
    config = METHODS.get("depgraph").config
    assert "max_layer_ratio" not in config(method="depgraph").identity()
    assert config(method="depgraph", max_layer_ratio=0.8).identity()["max_layer_ratio"] == 0.8


def test_hessian_scores_read_the_mean_squared_batch_gradient_and_leave_batchnorm_alone():
    """torch-pruning 1.6.1's GroupHessianImportance.accumulate_grad keeps only its last call; we average ourselves."""
    from recipe_runner.pruning import _graph

    class TwoBatches(BareFamily):
        def accumulate_gradients(self, model, data, knobs, batches, after_backward=None):
            model.train()
            for scale in (1.0, 3.0)[:batches]:
                (scale * model.fc.weight.sum()).backward()
                model(torch.randn(4, 3, 8, 8))  # moves BatchNorm running stats, as a real loss in train mode does
                after_backward()

    net = _net([1.0] * 8, [1.0] * 8)
    mean_before = net.b1.running_mean.clone()
    _graph.squared_gradients(net, TwoBatches(), None, None, batches=2)
    assert torch.allclose(net.fc.weight.grad, torch.full_like(net.fc.weight, (1.0 + 9.0) / 2))
    assert torch.equal(net.b1.running_mean, mean_before)


def test_depgraph_global_pruning_with_max_layer_ratio_caps_each_layer_within_the_step():
    """torch-pruning 1.6's global threshold alone would take 6 of layer 1's 8 channels; the cap stops it at 4."""
    method = METHODS.get("depgraph")
    config = method.config(
        method="depgraph", importance="bn-scale", global_pruning=True, max_layer_ratio=0.5, ratio=0.5, imgsz=16
    )
    pruned = method.prune_step(
        _net([0.01] * 6 + [1.0] * 2, [1.0] * 8), BareFamily(), None, config, plan_steps(0.5, 1)[0]
    )
    assert pruned.b1.weight.tolist() == pytest.approx([0.01, 0.01, 1.0, 1.0])
    assert pruned.b2.weight.numel() == 4 and pruned(torch.randn(1, 3, 16, 16)).shape == (1, 2)


def test_the_capped_global_ranking_rounds_each_layer_to_a_multiple_of_round_to():
    """round_to with global_pruning and max_layer_ratio: each layer keeps a multiple of round_to, its own lowest
    scores go, and a layer whose rounding down would break its cap is rounded up instead."""
    from recipe_runner.pruning._global import select_channels

    low_first = [float(i) for i in range(32)]
    scores = [low_first, [100.0 + i for i in range(32)]]
    # ratio 0.3 of 64 channels: the 20 lowest are all layer 0's; its 12 kept round down to 8, so 24 go
    chosen = select_channels(scores, 0.3, 0.9, round_to=8)
    assert chosen == [list(range(24)), []]
    # a cap of 0.7 (22 of 32): keeping 8 would take 24, so layer 0 keeps 16 instead (16 go)
    chosen = select_channels(scores, 0.3, 0.7, round_to=8)
    assert chosen == [list(range(16)), []]
    # without round_to the ranking itself is unchanged
    assert select_channels(scores, 0.3, 0.9) == [list(range(20)), []]


def test_depgraph_capped_global_pruning_with_round_to_keeps_multiples():
    method = METHODS.get("depgraph")
    config = method.config(
        method="depgraph",
        importance="bn-scale",
        global_pruning=True,
        max_layer_ratio=0.9,
        round_to=4,
        ratio=0.4,
        imgsz=16,
    )
    net = _net([0.01 * (i + 1) for i in range(16)], [1.0 + i for i in range(16)])
    pruned = method.prune_step(net, BareFamily(), None, config, plan_steps(0.4, 1)[0])
    kept = [pruned.b1.weight.numel(), pruned.b2.weight.numel()]
    assert all(k % 4 == 0 for k in kept) and sum(kept) < 32, kept
    # each layer loses its own lowest-scoring channels
    gammas = [0.01 * (i + 1) for i in range(16)]
    assert pruned.b1.weight.tolist() == pytest.approx(gammas[16 - kept[0] :])
    assert pruned(torch.randn(1, 3, 16, 16)).shape == (1, 2)
