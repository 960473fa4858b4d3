"""A YOLO train stage that crashes after an epoch checkpoint resumes there through the engine."""

from __future__ import annotations

from pathlib import Path

from conftest import cli, local_uri, stage_runs
from mlflow.tracking import MlflowClient

from recipe_runner import persistence as T
from recipe_runner.engine import RunningStage

RECIPE = """\
version: 1
name: yolo-crash
model: yolov8n.yaml
data: builtin:shapes?train=16&val=8&imgsz=64
defaults: {imgsz: 64, batch: 8, checkpoint_every: 1}  # these tests kill at chosen epochs
stages:
  train:
    type: train
    epochs: 3
"""


def test_crashed_yolo_training_resumes_from_its_epoch_checkpoint(workspace: Path, monkeypatch):
    recipe = workspace / "recipe.yaml"
    recipe.write_text(RECIPE)
    real_save = RunningStage.save_epoch_state

    def save_then_crash(self, state, epoch):
        real_save(self, state, epoch)
        if epoch == 2:
            raise RuntimeError("simulated crash after epoch 2")

    with monkeypatch.context() as patch:
        patch.setattr(RunningStage, "save_epoch_state", save_then_crash)
        failed = cli("run", recipe)
    assert failed.exit_code == 1 and "simulated crash" in failed.output

    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert "[resume] train  from epoch 2" in result.output
    uri = local_uri(workspace)
    train = stage_runs(uri)[0]
    assert train.data.tags[T.RESUMED_EPOCH] == "2"
    assert train.data.metrics["epochs_trained"] == 1
    steps = sorted({m.step for m in MlflowClient(uri).get_metric_history(train.info.run_id, "mAP50-95")})
    assert steps[0] == 3 and steps[-1] == 3  # only the last epoch ran here; the final evaluation is logged at step 3
    assert train.data.metrics["macs"] > 0
