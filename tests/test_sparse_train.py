"""sparse-train: penalties move BatchNorm gammas toward zero (both families), once per optimizer step, on unscaled
gradients, resumable; the stage's output is the last epoch's model and stays a valid model for the next stages.

Tiny sizes: lenet at 32 px, YOLOv8n at 64 px on 64 generated images. The strengths and learning rates are far above
useful ones so that a few epochs show the effect.
"""

from __future__ import annotations

import copy
import types
from pathlib import Path

import pytest
import torch
from conftest import RecordingContext, cli, local_uri, stage_runs, write_recipe
from mlflow.tracking import MlflowClient
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from recipe_runner import persistence as T
from recipe_runner.models.hooks import HookChain, TrainHook
from recipe_runner.persistence import load_checkpoint
from recipe_runner.pruning.regularizers import (
    BatchNormL1,
    gamma_magnitudes,
    gamma_stats,
    make_penalty,
    prunable_batchnorms,
)

YOLO_DATA = "builtin:shapes?train=64&val=8&imgsz=64"


def _runs(workspace: Path) -> dict:
    return {r.data.tags[T.NODE_ID]: r for r in stage_runs(local_uri(workspace))}


def _output_gammas(workspace: Path, run, family) -> dict[str, float]:
    """gamma_stats of a stage's output model, rebuilt from its MLflow checkpoint."""
    client = MlflowClient(local_uri(workspace))
    path = Path(client.download_artifacts(run.info.run_id, T.CHECKPOINT_ARTIFACT, str(workspace / run.info.run_id)))
    model = family.rebuild(load_checkpoint(path, run.data.tags[T.CHECKPOINT_SHA])["model"])
    return gamma_stats(gamma_magnitudes(prunable_batchnorms(model, family)))


def _history(workspace: Path, run, name: str) -> list[tuple[int, float]]:
    client = MlflowClient(local_uri(workspace))
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))


# two root stages (from: null): the same seed builds the same initial model for both
CLS_BRANCHES = """\
  plain:
    type: train
    from: null
    epochs: 3
    batch: 8
    lr: 0.1
  sparse:
    type: sparse-train
    from: null
    epochs: 3
    batch: 8
    lr: 0.1
    strength: 0.5
    strength_decay: linear
"""


def test_bn_l1_moves_classifier_gammas_toward_zero(workspace: Path):
    from recipe_runner.models.torchvision import TorchvisionFamily

    result = cli("run", write_recipe(workspace, CLS_BRANCHES))
    assert result.exit_code == 0, result.output
    runs = _runs(workspace)
    family = TorchvisionFamily()
    plain, sparse = _output_gammas(workspace, runs["plain"], family), _output_gammas(workspace, runs["sparse"], family)
    assert sparse["bn_gamma_below_1e-2"] > plain["bn_gamma_below_1e-2"]
    assert sparse["bn_gamma_mean_abs"] < 0.5 * plain["bn_gamma_mean_abs"]
    metrics = runs["sparse"].data.metrics
    # the final metrics describe the output model; the per-epoch ones show the schedule and the steps
    assert metrics["bn_gamma_below_1e-2"] == pytest.approx(sparse["bn_gamma_below_1e-2"])
    assert [s for s, _ in _history(workspace, runs["sparse"], "bn_gamma_below_1e-3")][:3] == [1, 2, 3]
    assert dict(_history(workspace, runs["sparse"], "penalty_strength")) == pytest.approx(
        {1: 0.5, 2: 0.5 * 2 / 3, 3: 0.5 / 3}
    )
    assert _history(workspace, runs["sparse"], "penalty_steps") == [(1, 8.0), (2, 16.0), (3, 24.0)]  # 64 images / 8
    client = MlflowClient(local_uri(workspace))
    assert "bn_gamma_hist.png" in [a.path for a in client.list_artifacts(runs["sparse"].info.run_id)]
    params = runs["sparse"].data.params
    assert (params["penalty"], params["strength"], params["strength_decay"]) == ("bn-l1", "0.5", "linear")


def test_strength_defaults_by_penalty_and_train_keys_are_unchanged():
    from recipe_runner.stages.sparse_train import SparseTrainConfig
    from recipe_runner.stages.train import TrainConfig

    assert SparseTrainConfig().strength == 1e-5
    assert SparseTrainConfig(penalty="group-l2").strength == 5e-4
    # the default is resolved before the cache key: writing it out is the same stage
    assert SparseTrainConfig().identity() == SparseTrainConfig(strength=1e-5).identity()
    assert "penalty" not in TrainConfig.model_fields  # train's cache keys do not move


def test_bn_l1_on_a_model_without_batchnorm_says_what_to_use():
    from recipe_runner.models.torchvision import TorchvisionFamily

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 3))
    with pytest.raises(ValueError, match="needs BatchNorm layers.*use penalty: group-l2"):
        BatchNormL1(TorchvisionFamily(), 1e-3, "none", 32).on_start(model, 0, 1)


def test_group_l2_shrinks_classifier_groups(workspace: Path):
    """group-l2 on a BN classifier, at the family level: smaller gammas than plain training from the same start."""
    from recipe_runner.data import resolve_data
    from recipe_runner.models.torchvision import TorchvisionFamily
    from recipe_runner.stages.sparse_train import SparseTrainConfig

    family = TorchvisionFamily()
    data = resolve_data("builtin:shapes-cls?train=64&val=32&imgsz=32", "classify")
    # building the dependency graph traces a forward pass: it must not move BatchNorm statistics
    model = family.build("lenet", data, seed=0).train()
    buffers = copy.deepcopy(dict(model.named_buffers()))
    make_penalty("group-l2", family, 0.5, "none", 32).on_start(model, 0, 1)
    assert model.training and all(torch.equal(b, buffers[k]) for k, b in model.named_buffers())
    config = SparseTrainConfig(penalty="group-l2", strength=0.5, imgsz=32, batch=16, lr=0.1, epochs=1)
    stats = {}
    for name, hooks in (("plain", []), ("group", [make_penalty("group-l2", family, 0.5, "none", 32)])):
        result = family.train(
            family.build("lenet", data, seed=0), data, config, 1, RecordingContext(workspace), hooks=hooks
        )
        stats[name] = gamma_stats(gamma_magnitudes(prunable_batchnorms(result.model, family)))
    assert stats["group"]["bn_gamma_mean_abs"] < stats["plain"]["bn_gamma_mean_abs"]


class _CountingL1(BatchNormL1):
    """bn-l1 that also counts its gradient calls and the training batches (Detect head forwards in train mode)."""

    def on_start(self, model, start_epoch, epochs):
        super().on_start(model, start_epoch, epochs)
        self.calls, self.batches = 0, 0

        def count(module, inputs, output):
            self.batches += int(module.training)

        model.model[-1].register_forward_hook(count)

    def on_gradients(self, model):
        self.calls += 1
        super().on_gradients(model)


def test_yolo_penalty_runs_once_per_optimizer_step_and_the_last_ema_is_returned(workspace: Path):
    from recipe_runner.data import resolve_data
    from recipe_runner.models.yolo import YoloFamily
    from recipe_runner.stages.sparse_train import SparseTrainConfig

    family = YoloFamily()
    data = resolve_data(YOLO_DATA, "detect")
    # nbs 32 at batch 8: Ultralytics accumulates 4 batches per optimizer step; 64 images = 8 batches = 2 steps
    config = SparseTrainConfig(imgsz=64, batch=8, epochs=1, strength=1e-3, args={"nbs": 32, "warmup_epochs": 0})
    hook = _CountingL1(family, 1e-3, "none", 64)
    steps = []
    # every optimizer step in the process, counted by torch itself (independent of the runner's override)
    handle = register_optimizer_step_post_hook(lambda *a: steps.append(1))
    ctx = RecordingContext(workspace)
    try:
        model = family.build("yolov8n.yaml", data, seed=0)
        result = family.train(model, data, config, 1, ctx, hooks=[hook], keep="last")
    finally:
        handle.remove()
    assert hook.batches == 8
    assert hook.calls == len(steps) == hook.steps == 2
    assert ctx.logged[-1][1]["penalty_steps"] == 2
    last_ema = ctx.states[-1]["ema"]
    assert all(torch.equal(v.float(), last_ema[k].float()) for k, v in result.model.state_dict().items())


def test_yolo_keep_last_ignores_the_best_fitness_weights():
    """finished_model: keep="best" is Ultralytics' best.pt (the best epoch's EMA), keep="last" the last epoch's EMA."""
    from recipe_runner.models.yolo.training import finished_model

    ema = nn.Linear(2, 2)
    best = {k: torch.zeros_like(v) for k, v in ema.state_dict().items()}
    assert torch.equal(finished_model(ema, best, "best").weight, best["weight"])
    assert torch.equal(finished_model(ema, best, "last").weight, ema.weight)


class _Recorder(TrainHook):
    name = "recorder"

    def __init__(self, batchnorms):
        self.batchnorms, self.grads = batchnorms, []

    def on_gradients(self, model):
        self.grads.append([bn.weight.grad.clone() for bn in self.batchnorms])


def test_yolo_optimizer_step_penalises_unscaled_gradients_under_a_grad_scaler():
    """RunnerTrainer.optimizer_step with a real GradScaler (CPU, scale 1024): the penalty sees and adds to the same
    gradients as without scaling, and the updated weights agree."""
    from recipe_runner.models.torchvision import TorchvisionFamily
    from recipe_runner.models.torchvision.small_cnn import LeNet
    from recipe_runner.models.yolo.training import make_trainer_class

    family, strength = TorchvisionFamily(), 0.05
    torch.manual_seed(0)
    start = LeNet(num_classes=3)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    step = make_trainer_class(HookChain([]), None).optimizer_step

    def one_step(scaled: bool, penalty: bool):
        model = copy.deepcopy(start).train()
        batchnorms = prunable_batchnorms(model, family)
        hooks = [BatchNormL1(family, strength, "none", 32)] if penalty else []
        recorder = _Recorder(batchnorms)
        chain = HookChain([*hooks, recorder])
        chain.on_start(model, 0, 1)
        chain.on_epoch_start(model, 0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024, enabled=scaled)
        scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
        if scaled:
            assert batchnorms[0].weight.grad.abs().max() > 10 * strength  # really scaled before the step
        trainer = types.SimpleNamespace(
            scaler=scaler, optimizer=optimizer, model=model, rr_hooks=chain, ema=None, unwrapped=lambda: model
        )
        step(trainer)
        return recorder.grads[0], model.state_dict(), [torch.sign(bn.weight.detach()) for bn in batchnorms]

    plain_grads, _, _ = one_step(scaled=False, penalty=False)
    grads, weights, signs = one_step(scaled=False, penalty=True)
    scaled_grads, scaled_weights, _ = one_step(scaled=True, penalty=True)
    for g, s in zip(grads, scaled_grads):
        assert torch.allclose(s, g, rtol=1e-5, atol=1e-7)
    # the penalty added strength * sign(gamma) (signs do not flip in one small step)
    for g, p, sign in zip(grads, plain_grads, signs):
        assert torch.allclose(g - p, strength * sign, atol=1e-6)
    assert all(torch.allclose(scaled_weights[k], v, atol=1e-6) for k, v in weights.items())


YOLO_BRANCHES = f"""\
version: 1
name: tiny-yolo-sparse
seed: 0
model: yolov8n.yaml
data: {YOLO_DATA}
defaults:
  imgsz: 64
  batch: 8
  args: {{nbs: 8, warmup_epochs: 0}}
stages:
  train:
    type: train
    epochs: 1
  plain:
    type: train
    from: train
    epochs: 2
    optimizer: adamw
    lr: 0.15
  sparse:
    type: sparse-train
    from: train
    epochs: 2
    optimizer: adamw
    lr: 0.15
    strength: 1.0
  group:
    type: sparse-train
    from: train
    epochs: 1
    penalty: group-l2
    strength: 0.01
  finetune:
    type: finetune
    epochs: 1
  onnx:
    type: export
    format: onnx
"""


def test_yolo_sparse_train_moves_gammas_and_group_l2_output_trains_and_exports(workspace: Path):
    from recipe_runner.models.yolo import YoloFamily

    recipe = workspace / "yolo.yaml"
    recipe.write_text(YOLO_BRANCHES)
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    runs = _runs(workspace)
    assert all(r.info.status == "FINISHED" for r in runs.values())
    family = YoloFamily()
    plain, sparse = _output_gammas(workspace, runs["plain"], family), _output_gammas(workspace, runs["sparse"], family)
    assert sparse["bn_gamma_below_1e-2"] > plain["bn_gamma_below_1e-2"]
    assert sparse["bn_gamma_mean_abs"] < 0.5 * plain["bn_gamma_mean_abs"]
    # group-l2 split the C2f blocks for torch-pruning: same architecture cost, a valid model for the next stages
    assert runs["group"].data.metrics["macs"] == runs["train"].data.metrics["macs"]
    assert runs["finetune"].data.metrics["macs"] == runs["group"].data.metrics["macs"]
    assert runs["onnx"].data.metrics["onnx_max_abs_diff"] < 1e-3
    # its checkpoint rebuilds with the split blocks (plain data) and holds the model the final metrics describe
    group = _output_gammas(workspace, runs["group"], family)
    assert group["bn_gamma_mean_abs"] == pytest.approx(runs["group"].data.metrics["bn_gamma_mean_abs"])


RESUME = """\
  sparse:
    type: sparse-train
    epochs: 4
    batch: 8
    lr: 0.1
    strength: 0.5
    strength_decay: linear
    checkpoint_every: 1  # the test kills it after a chosen epoch
"""


def _crash_at_epoch(monkeypatch, epoch: int) -> None:
    """Make training raise after `epoch` epochs were checkpointed (a crash, in-process)."""
    from recipe_runner.models.torchvision import TorchvisionFamily

    original, calls = TorchvisionFamily.evaluate, {"n": 0}

    def evaluate(self, model, data, knobs):
        calls["n"] += 1
        if calls["n"] > epoch:
            raise RuntimeError("simulated crash")
        return original(self, model, data, knobs)

    monkeypatch.setattr(TorchvisionFamily, "evaluate", evaluate)


def test_crashed_sparse_train_resumes_with_its_schedule_and_matches_an_uninterrupted_run(
    workspace: Path, monkeypatch, tmp_path_factory
):
    recipe = write_recipe(workspace, RESUME)
    with monkeypatch.context() as patch:
        _crash_at_epoch(patch, 2)
        assert cli("run", recipe).exit_code == 1
    assert cli("run", recipe).exit_code == 0
    resumed = _runs(workspace)["sparse"]
    assert resumed.data.tags[T.RESUMED_EPOCH] == "2"
    assert resumed.data.metrics["epochs_trained"] == 2
    clean_dir = tmp_path_factory.mktemp("clean")
    monkeypatch.chdir(clean_dir)
    assert cli("run", write_recipe(clean_dir, RESUME)).exit_code == 0
    clean = _runs(clean_dir)["sparse"]
    # the schedule continued at epochs 3 and 4, the step count from where the killed run stopped
    assert dict(_history(workspace, resumed, "penalty_strength")) == pytest.approx({3: 0.25, 4: 0.125})
    assert _history(workspace, resumed, "penalty_steps") == _history(clean_dir, clean, "penalty_steps")[2:]
    for name in ("bn_gamma_mean_abs", "bn_gamma_below_1e-2", "val_loss"):
        assert resumed.data.metrics[name] == pytest.approx(clean.data.metrics[name], abs=1e-5), name
    assert resumed.data.metrics["top1"] == clean.data.metrics["top1"]
