"""YOLO distillation through Ultralytics' DistillationModel: a pruned student (other widths than its teacher) trains
with projectors, its states and output hold the student alone, a resume restores the projectors, and the result
exports without the teacher. 64 px, 16 images, 1-2 epochs."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from conftest import RecordingContext

from recipe_runner.models.distill import Distillation


def _pruned(family, data):
    from recipe_runner.pruning import METHODS, plan_steps

    method = METHODS.get("depgraph")
    model = family.build("yolov8n.yaml", data, seed=0)
    return method.prune_step(
        model, family, data, method.config(method="depgraph", imgsz=64, ratio=0.5), plan_steps(0.5, 1)[0]
    )


def _hooked(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_a_pruned_yolo_student_learns_from_its_teacher_and_exports_alone(family, tiny_data, tmp_path: Path):
    from recipe_runner.stages.export import ExportConfig
    from recipe_runner.stages.train import TrainConfig

    teacher = family.build("yolov8n.yaml", tiny_data, seed=1).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = _pruned(family, tiny_data)
    names = set(family.describe(student)["state_dict"])
    pruned_cost = family.cost(student, 64)
    knobs = TrainConfig(epochs=2, imgsz=64, batch=8)
    first = RecordingContext(tmp_path)
    # one epoch here; the resume below trains the second
    result = family.train(student, tiny_data, knobs, 1, first, distill=Distillation(teacher, 0.5, 4.0))

    assert [step for step, _ in first.logged] == [1]
    for _, metrics in first.logged:
        assert metrics["train/distill_loss"] > 0 and metrics["train/task_loss"] > 0
    assert family.cost(result.model, 64) == pruned_cost
    # the student alone, everywhere it leaves training; the projectors kept apart for a resume
    assert set(family.describe(result.model)["state_dict"]) == names
    for state in first.states:
        assert set(state["model"]["state_dict"]) == names and set(state["ema"]) == names
        assert state["distill"]["projector"] and state["distill"]["ema_projector"]
    assert _hooked(result.model) == 0 and _hooked(teacher) == 0
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())  # frozen

    # resume from epoch 1: the projectors come back as they were saved, not freshly initialised
    restored = {}
    from ultralytics.utils.torch_utils import unwrap_model

    def spy(trainer):
        projector = unwrap_model(trainer.model).projector
        restored.update({k: v.detach().cpu().clone() for k, v in projector.state_dict().items()})

    from recipe_runner.models.yolo import training as yolo_train

    original = yolo_train.EpochCallbacks.train_start

    def train_start(self, trainer):
        spy(trainer)
        original(self, trainer)

    yolo_train.EpochCallbacks.train_start = train_start
    try:
        resumed = family.train(
            family.build("yolov8n.yaml", tiny_data, seed=0),
            tiny_data,
            knobs,
            2,
            RecordingContext(tmp_path, resume_state=first.states[0]),
            distill=Distillation(teacher, 0.5, 4.0),
        )
    finally:
        yolo_train.EpochCallbacks.train_start = original
    saved = first.states[0]["distill"]["projector"]
    assert restored and all(torch.equal(restored[k], saved[k]) for k in saved)
    assert (resumed.epochs_trained, resumed.last_epoch) == (1, 2)
    assert family.cost(resumed.model, 64) == pruned_cost

    path = tmp_path / "student.onnx"
    checks = family.export_onnx(result.model, tiny_data, ExportConfig(imgsz=64, batch=8), path)
    assert checks["onnx_max_abs_diff"] >= 0
    weights = sum(int(torch.tensor(list(t.dims)).prod()) for t in onnx.load(str(path)).graph.initializer if t.dims)
    assert weights <= pruned_cost["params"] * 1.01 < sum(p.numel() for p in teacher.parameters())
