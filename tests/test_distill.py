"""Distillation from any stage: the teacher is a graph input (ordered before, in the cache key), loaded and frozen
by the engine, never part of the student's checkpoint; classifiers learn by Hinton KD on the logits.

Tiny sizes: lenet at 32 px on 64 generated images, 1-2 epochs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_CLS, cli, local_uri, stage_runs, write_recipe
from mlflow.tracking import MlflowClient

from recipe_runner import persistence as T
from recipe_runner.graph import compile_graph
from recipe_runner.models.distill import kd_loss
from recipe_runner.persistence import load_checkpoint
from recipe_runner.recipe import RecipeError, parse_recipe


def test_kd_loss_matches_a_hand_computation():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    t = 4.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p = [math.exp(v / t) for v in t_row]
        q = [math.exp(v / t) for v in s_row]
        p = [v / sum(p) for v in p]
        q = [v / sum(q) for v in q]
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = expected / 2 * t * t  # batch mean, times T^2
    assert float(kd_loss(student, teacher, t)) == pytest.approx(expected, rel=1e-5)
    assert float(kd_loss(teacher, teacher, t)) == pytest.approx(0.0, abs=1e-7)


def _recipe(stages: str):
    return parse_recipe(TINY_CLS.format(name="kd", stages=stages), "recipe.yaml")


KD_STAGES = """\
  train:
    type: train
    epochs: 1
  prune:
    type: prune
    method: depgraph
    ratio: 0.5
  finetune:
    type: finetune
    epochs: 2
    distill: {teacher: train, weight: 0.5, temperature: 4}
"""


def test_the_teacher_is_an_input_in_the_cache_key_and_follows_its_sweep_copy():
    plain = compile_graph(
        _recipe(KD_STAGES.replace("    distill: {teacher: train, weight: 0.5, temperature: 4}\n", ""))
    )
    taught = compile_graph(_recipe(KD_STAGES))
    assert taught.nodes["finetune"].inputs == {"teacher": "train"}
    assert taught.nodes["finetune"].identity["inputs"] == {"teacher": taught.nodes["train"].cache_key}
    assert "inputs" not in plain.nodes["finetune"].identity  # existing keys unchanged
    assert plain.nodes["finetune"].cache_key != taught.nodes["finetune"].cache_key
    assert plain.nodes["prune"].cache_key == taught.nodes["prune"].cache_key
    # another teacher weight is another result
    other = compile_graph(_recipe(KD_STAGES.replace("weight: 0.5", "weight: 0.7")))
    assert other.nodes["finetune"].cache_key != taught.nodes["finetune"].cache_key
    # a teacher stage of its own branch, ordered before the student although it comes later in the file
    late = compile_graph(
        _recipe("""\
  train:
    type: train
    epochs: {sweep: [1, 2]}
  finetune:
    type: finetune
    distill: {teacher: big}
  big:
    type: train
    from: train
""")
    )
    order = list(late.nodes)
    for epochs in (1, 2):
        student, teacher = f"finetune[train.epochs={epochs}]", f"big[train.epochs={epochs}]"
        assert late.nodes[student].inputs == {"teacher": teacher}
        assert order.index(teacher) < order.index(student)
        assert student in late.descendants(teacher) and teacher in late.requires(student)  # --force / --only


def test_a_teacher_with_copies_off_the_students_branch_is_a_located_error(workspace: Path):
    path = write_recipe(
        workspace,
        """\
  big:
    type: train
    epochs: {sweep: [1, 2]}
  small:
    type: train
    from: null
    distill: {teacher: big}
""",
    )
    result = cli("validate", path)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "distill:" in text)
    assert result.exit_code == 2 and f"recipe.yaml:{line}:" in result.output, result.output
    assert "'big' has 2 copies" in result.output


@pytest.mark.parametrize(
    "teacher, words",
    [
        ("trian", "no stage named 'trian'; did you mean 'train'?"),
        ("finetune", "is this stage itself"),
        ("later", "'later' descends from 'finetune'"),
        ("int8", "'int8' (quantize) gives a model file"),
        ("onnx", "'onnx' (export) gives a model file"),
    ],
)
def test_a_bad_teacher_is_a_located_error(workspace: Path, teacher: str, words: str):
    stages = f"""\
  train:
    type: train
    epochs: 1
  int8:
    type: quantize
  onnx:
    type: export
    from: train
  finetune:
    type: finetune
    from: train
    distill: {{teacher: {teacher}}}
  later:
    type: finetune
"""
    path = write_recipe(workspace, stages)
    result = cli("validate", path)
    assert result.exit_code == 2
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "distill:" in text)
    assert f"recipe.yaml:{line}:" in result.output and words in result.output, result.output
    assert "stages.finetune.distill.teacher" in result.output


def test_prune_distils_only_when_it_fine_tunes():
    with pytest.raises(RecipeError, match="set finetune_epochs >= 1"):
        _recipe(KD_STAGES.replace("    ratio: 0.5\n", "    ratio: 0.5\n    distill: {teacher: train}\n"))


def test_a_distilled_lenet_finetune_logs_both_losses_and_keeps_the_teacher_out(workspace: Path):
    path = write_recipe(workspace, KD_STAGES)
    shown = cli("plan", path)
    assert shown.exit_code == 0 and "teacher: train" in shown.output, shown.output
    result = cli("run", path)
    assert result.exit_code == 0, result.output
    runs = {r.data.tags[T.NODE_ID]: r for r in stage_runs(local_uri(workspace))}
    student, teacher = runs["finetune"], runs["train"]
    assert student.data.tags[T.input_stage("teacher")] == "train"
    assert student.data.tags[T.input_run("teacher")] == teacher.info.run_id
    client = MlflowClient(local_uri(workspace))
    for name in ("train_distill_loss", "train_task_loss"):
        history = client.get_metric_history(student.info.run_id, name)
        assert sorted(m.step for m in history) == [1, 2]
        assert all(m.value > 0 for m in history)
    # the checkpoint holds the pruned student only: no teacher tensors, fewer weights than the unpruned teacher
    checkpoint = Path(client.download_artifacts(student.info.run_id, T.CHECKPOINT_ARTIFACT, str(workspace / "ft")))
    state = load_checkpoint(checkpoint, student.data.tags[T.CHECKPOINT_SHA])["model"]["state_dict"]
    teacher_path = Path(client.download_artifacts(teacher.info.run_id, T.CHECKPOINT_ARTIFACT, str(workspace / "tr")))
    teacher_state = load_checkpoint(teacher_path, teacher.data.tags[T.CHECKPOINT_SHA])["model"]["state_dict"]
    assert set(state) == set(teacher_state)  # same architecture's names, nothing added
    assert sum(v.numel() for v in state.values()) < sum(v.numel() for v in teacher_state.values())
    # a re-run reuses the student (the teacher's key is unchanged)
    again = cli("run", path)
    assert again.exit_code == 0 and "[reuse]  finetune" in again.output, again.output
