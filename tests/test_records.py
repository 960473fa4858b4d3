"""What MLflow shows a person: run names, the parent's stage table and pipeline chart, dataset inputs, ONNX models.

Real MLflow (sqlite store in a temp dir), the tiny classifier recipe with a sweep and an export stage.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.artifacts
import mlflow.onnx
import onnx
import yaml
from conftest import cli, local_uri, write_recipe
from mlflow.tracking import MlflowClient

from recipe_runner import persistence as T
from recipe_runner.data import fingerprint_data
from recipe_runner.persistence import records as R

SPEC = "builtin:shapes-cls?train=64&val=32&imgsz=32"
SWEEP_EXPORT = """\
  train:
    type: train
    epochs: 1
  prune:
    type: prune
    method: depgraph
    ratio: {sweep: [0.3, 0.5]}
  onnx:
    type: export
"""
NAMES = ["train", "prune[ratio=0.3]", "prune[ratio=0.5]", "onnx[ratio=0.3]", "onnx[ratio=0.5]"]


def recipe_runs(client: MlflowClient) -> list:
    """Parent runs, oldest first, each with its children in start order."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(experiments, f"tags.`{T.ROLE}` = 'recipe'", order_by=["attributes.start_time ASC"])
    return [
        (
            p,
            client.search_runs(
                experiments, f"tags.`mlflow.parentRunId` = '{p.info.run_id}'", order_by=["attributes.start_time ASC"]
            ),
        )
        for p in parents
    ]


def test_records_of_a_sweep_with_export(workspace: Path):
    path = write_recipe(workspace, SWEEP_EXPORT)
    path.write_text(path.read_text().replace("seed: 0\n", "seed: 0\ndescription: Tiny LeNet, two ratios, ONNX.\n"))
    assert cli("run", path).exit_code == 0
    assert cli("run", path).exit_code == 0  # everything reused: the records are written for reused stages too
    client = MlflowClient(local_uri(workspace))
    (first, children), (second, reused) = recipe_runs(client)
    fingerprint = fingerprint_data(SPEC)

    # run names: short sweep values for people; node ids in the tags keep the full form the runner looks up
    assert [r.info.run_name for r in children] == NAMES == [r.info.run_name for r in reused]
    assert children[1].data.tags[T.NODE_ID] == "prune[prune.ratio=0.3]"
    assert first.info.run_name.startswith("tiny @ ") and second.info.run_name != first.info.run_name

    # the parent's description: the recipe's text, then one table row per stage in run order
    note = first.data.tags[T.NOTE]
    assert note.startswith("Tiny LeNet, two ratios, ONNX.")
    header, _, *rows = [line for line in note.splitlines() if line.startswith("| ")]
    assert header == "| stage | type | action | top1 | MACs | params | size |"
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == NAMES
    assert [row.split(" | ")[2] for row in rows] == ["run"] * 5
    assert f"| {children[1].data.metrics['top1']:.4g} |" in rows[1]
    assert [row.split(" | ")[2] for row in second.data.tags[T.NOTE].splitlines()[-5:]] == ["reuse"] * 5

    # pipeline metrics on the parent: one step per stage, in run order, the stage's own values
    for name in ("top1", "macs", "params", "size_mb"):
        history = sorted(client.get_metric_history(first.info.run_id, R.PIPELINE_PREFIX + name), key=lambda m: m.step)
        assert [m.step for m in history] == [0, 1, 2, 3, 4], name
        assert [m.value for m in history] == [c.data.metrics[name] for c in children], name

    # the dataset: name, digest = the data fingerprint, the builtin spec as source; on the parent and every stage
    for run in [first, *children, second, *reused]:
        inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
        assert len(inputs) == 1, run.info.run_name
        dataset = inputs[0].dataset
        assert (dataset.name, dataset.digest, dataset.source_type) == ("shapes-cls", fingerprint, "code")
        assert SPEC in dataset.source
    assert {t.key: t.value for t in client.get_run(children[1].info.run_id).inputs.dataset_inputs[0].tags} == {
        "mlflow.data.context": "prune"
    }

    # each exported .onnx is also an MLflow model (ONNX flavour) of its export run, loadable by MLflow, the same graph
    for export in children[3:]:
        outputs = client.get_run(export.info.run_id).outputs.model_outputs
        assert len(outputs) == 1
        model = client.get_logged_model(outputs[0].model_id)
        assert (model.name, model.source_run_id, str(model.status)) == ("onnx", export.info.run_id, "READY")
        assert {m.key for m in model.metrics} >= {"top1", "onnx_top1", "size_mb"}
        local = Path(client.download_artifacts(export.info.run_id, "output/model.onnx", str(workspace / "out")))
        dest = workspace / "model" / export.info.run_id
        dest.mkdir(parents=True)
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location, dst_path=str(dest)))
        mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
        assert "onnx" in mlmodel["flavors"] and mlmodel["run_id"] == export.info.run_id
        assert (folder / "requirements.txt").read_text().count("onnx") >= 2  # pinned onnx and onnxruntime
        loaded = mlflow.onnx.load_model(str(folder))
        assert loaded.graph.SerializeToString() == onnx.load(str(local)).graph.SerializeToString()


def test_run_names_and_stage_table_alone():
    assert R.run_name("train", {}) == "train"
    assert R.run_name("finetune", {"prune.ratio": 0.3, "finetune.lr": 0.01}) == "finetune[ratio=0.3,lr=0.01]"
    # two swept stages with the same key: both keep their stage, or the name would not say whose value it is
    assert R.run_name("ft", {"prune.ratio": 0.3, "ft.ratio": 0.5}) == "ft[prune.ratio=0.3,ft.ratio=0.5]"
    row = R.StageRow("a|b", "train", "run", {"top1": 0.5, "macs": 4.68e6, "params": 861, "size_mb": 0.35})
    table = R.stage_table([row, R.StageRow("c", "export", "reuse", {})], "top1")
    assert table.splitlines()[2] == "| a\\|b | train | run | 0.5 | 4.68 M | 861 | 0.35 MB |"
    assert table.splitlines()[3] == "| c | export | reuse | - | - | - | - |"
    assert "KILLED" in R.description("", table, "KILLED") and R.description("x", table).startswith("x\n\n### Stages")


def test_two_recipe_runs_started_within_one_second_get_distinct_names(workspace: Path):
    tracker = T.Tracker(local_uri(workspace), "names")
    name = R.parent_run_name("tiny")
    assert R.unique_name(name, tracker.recipe_run_names(name)) == name
    tracker.start_run(name, {T.ROLE: "recipe"})
    # a stage run whose name starts alike is not a recipe run: it takes no name from the next recipe run
    tracker.start_run(name + " #2", {T.ROLE: "stage"})
    second = R.unique_name(name, tracker.recipe_run_names(name))
    assert second == name + " #2"
    tracker.start_run(second, {T.ROLE: "recipe"})
    assert R.unique_name(name, tracker.recipe_run_names(name)) == name + " #3"


def test_a_description_too_long_for_mlflow_keeps_whole_rows_and_says_how_many_it_left_out():
    """A 20-trial search has 80+ stage rows: MLflow would cut the note mid-row (and only warn on the console)."""
    rows = [R.StageRow(f"prune[trial={k},ratio=0.{k:03d}]", "prune", "run", {"top1": 0.5}) for k in range(400)]
    table = R.stage_table(rows, "top1")
    text = R.description("my recipe", table, limit=3000)
    assert len(text) <= 3000 and text.startswith("my recipe\n\n### Stages")
    listed = [line for line in text.splitlines() if line.startswith("| prune[")]
    assert 0 < len(listed) < 400 and all(line.endswith(" |") for line in listed)
    assert f"{400 - len(listed)} more stage(s) not listed here" in text
    assert R.description("my recipe", R.stage_table(rows[:2], "top1"), limit=3000).count("| prune[") == 2
