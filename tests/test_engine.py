"""The engine end to end on a tiny classifier: real torch-pruning, real MLflow (sqlite store in a temp dir)."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import cli, local_uri, stage_runs, write_recipe
from mlflow.tracking import MlflowClient

from recipe_runner import persistence as T
from recipe_runner.models.torchvision import TorchvisionFamily
from recipe_runner.persistence import load_checkpoint

THREE_STAGES = """\
  train:
    type: train
    epochs: 2
    lr: 0.05
  prune:
    type: prune
    method: depgraph
    importance: group-l2
    ratio: 0.5
  finetune:
    type: finetune
    epochs: 1
"""


def by_node(runs) -> dict:
    return {r.data.tags[T.NODE_ID]: r for r in runs}


def test_three_stage_recipe_runs_logs_and_prunes(workspace: Path):
    recipe = write_recipe(workspace, THREE_STAGES)
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    uri = local_uri(workspace)
    runs = by_node(stage_runs(uri))
    assert list(runs) == ["train", "prune", "finetune"]
    for node_id, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags[T.ROLE] == "stage"
        assert run.data.tags[T.STAGE_ID] == node_id
        assert len(run.data.tags[T.CACHE_KEY]) == 32
        for metric in ("top1", "macs", "params", "size_mb", "latency_ms", "epochs_trained"):
            assert metric in run.data.metrics, (node_id, metric)
    train, prune, finetune = runs["train"], runs["prune"], runs["finetune"]
    assert train.data.params["epochs"] == "2" and prune.data.params["ratio"] == "0.5"
    assert train.data.metrics["epochs_trained"] == 2 and finetune.data.metrics["epochs_trained"] == 1
    # per-epoch metrics with step = epoch
    client = MlflowClient(uri)
    history = client.get_metric_history(train.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2]
    # pruning at channel ratio 0.5 removes roughly 1-(1-0.5)^2 = 75% of prunable MACs/params
    assert prune.data.metrics["macs"] < 0.5 * train.data.metrics["macs"]
    assert prune.data.metrics["params"] < 0.6 * train.data.metrics["params"]
    assert finetune.data.metrics["macs"] == prune.data.metrics["macs"]
    # the parent run carries the recipe and the lock file
    parent_id = train.data.tags["mlflow.parentRunId"]
    names = {a.path for a in client.list_artifacts(parent_id, "recipe")}
    assert names == {"recipe/recipe.yaml", "recipe/recipe.lock.json"}
    # the pruned checkpoint is verified, loads without unpickling code and rebuilds the pruned shapes
    path = Path(client.download_artifacts(prune.info.run_id, T.CHECKPOINT_ARTIFACT, str(workspace / "dl")))
    payload = load_checkpoint(path, prune.data.tags[T.CHECKPOINT_SHA])
    model = TorchvisionFamily().rebuild(payload["model"])
    first_conv = model.features[0][0]
    assert first_conv.out_channels == 8 and first_conv.weight.shape[0] == 8  # 16 -> 8 channels
    assert model.classifier[-1].out_features == 4  # the classifier head is never pruned
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 4)
    assert sum(p.numel() for p in model.parameters()) == prune.data.metrics["params"]


def test_rerun_reuses_everything_and_set_reruns_only_downstream(workspace: Path):
    recipe = write_recipe(workspace, THREE_STAGES)
    assert cli("run", recipe).exit_code == 0
    uri = local_uri(workspace)
    first = by_node(stage_runs(uri))

    assert cli("run", recipe).exit_code == 0
    second = by_node(stage_runs(uri))
    assert list(second) == ["train", "prune", "finetune"]  # the new parent run still shows every stage
    for node_id, run in second.items():
        assert run.data.tags[T.ROLE] == "reused"
        assert run.data.tags[T.REUSED_FROM] == first[node_id].info.run_id
        assert run.data.metrics["epochs_trained"] == 0
        assert run.data.metrics["top1"] == first[node_id].data.metrics["top1"]

    result = cli("run", recipe, "--set", "stages.prune.ratio=0.3")
    assert result.exit_code == 0, result.output
    third = by_node(stage_runs(uri))
    assert third["train"].data.tags[T.ROLE] == "reused"
    assert third["prune"].data.tags[T.ROLE] == "stage" and third["finetune"].data.tags[T.ROLE] == "stage"
    assert third["prune"].data.params["ratio"] == "0.3"
    assert third["finetune"].data.metrics["epochs_trained"] == 1
    assert third["prune"].data.tags[T.CACHE_KEY] != first["prune"].data.tags[T.CACHE_KEY]
    assert third["train"].data.tags[T.CACHE_KEY] == first["train"].data.tags[T.CACHE_KEY]

    plan = cli("plan", recipe, "--set", "stages.prune.ratio=0.3")
    assert plan.exit_code == 0 and plan.output.count("│ reuse ") == 3


def test_force_and_only(workspace: Path):
    recipe = write_recipe(workspace, THREE_STAGES)
    unknown = cli("run", recipe, "--force", "fintune")
    assert unknown.exit_code == 2 and "did you mean 'finetune'" in unknown.stderr
    assert not (workspace / "mlflow.db").exists()  # a wrong name starts nothing
    assert cli("run", recipe, "--only", "prune").exit_code == 0
    uri = local_uri(workspace)
    assert list(by_node(stage_runs(uri))) == ["train", "prune"]
    assert cli("run", recipe, "--force", "finetune").exit_code == 0
    runs = by_node(stage_runs(uri))
    assert [r.data.tags[T.ROLE] for r in runs.values()] == ["reused", "reused", "stage"]
    bad = cli("run", recipe, "--only", "prnue")
    assert bad.exit_code == 2 and "did you mean 'prune'" in bad.output


def test_sweep_makes_branches_with_distinct_keys(workspace: Path):
    recipe = write_recipe(workspace, THREE_STAGES.replace("ratio: 0.5", "ratio: {sweep: [0.3, 0.5]}"))
    plan = cli("plan", recipe)
    assert plan.exit_code == 0, plan.output
    assert cli("run", recipe).exit_code == 0
    runs = by_node(stage_runs(local_uri(workspace)))
    assert set(runs) == {
        "train",
        "prune[prune.ratio=0.3]",
        "prune[prune.ratio=0.5]",
        "finetune[prune.ratio=0.3]",
        "finetune[prune.ratio=0.5]",
    }
    keys = {r.data.tags[T.CACHE_KEY] for r in runs.values()}
    assert len(keys) == 5
    assert (
        runs["finetune[prune.ratio=0.3]"].data.tags["mlflow.parentRunId"]
        == runs["train"].data.tags["mlflow.parentRunId"]
    )
    assert runs["prune[prune.ratio=0.3]"].data.metrics["macs"] > runs["prune[prune.ratio=0.5]"].data.metrics["macs"]


def test_unstructured_pruning_reports_real_sparsity_and_keeps_it_through_finetune(workspace: Path):
    stages = THREE_STAGES.replace(
        "method: depgraph\n    importance: group-l2\n    ratio: 0.5",
        "method: l1-unstructured\n    ratio: 0.6\n    steps: 2\n    finetune_epochs: 1",
    )
    recipe = write_recipe(workspace, stages)
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    runs = by_node(stage_runs(local_uri(workspace)))
    assert abs(runs["prune"].data.metrics["sparsity"] - 0.6) < 0.01
    assert runs["finetune"].data.metrics["sparsity"] >= 0.6 - 0.01
    assert runs["train"].data.metrics["sparsity"] < 0.01
    assert runs["prune"].data.metrics["macs"] == runs["train"].data.metrics["macs"]  # zeros, not removed channels


def test_export_checks_onnx_against_pytorch(workspace: Path):
    recipe = write_recipe(workspace, THREE_STAGES + "  onnx:\n    type: export\n    dynamic: true\n")
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    runs = by_node(stage_runs(local_uri(workspace)))
    onnx = runs["onnx"]
    assert onnx.data.metrics["onnx_max_abs_diff"] < 1e-3
    assert abs(onnx.data.metrics["onnx_top1"] - onnx.data.metrics["parent_top1"]) < 0.05
    assert onnx.data.metrics["top1"] == onnx.data.metrics["onnx_top1"]  # the file's accuracy, under the usual name
    # the output is the .onnx file itself, recorded with its sha256; no PyTorch checkpoint for it
    client = MlflowClient(local_uri(workspace))
    assert {a.path for a in client.list_artifacts(onnx.info.run_id, "output")} == {"output/model.onnx"}
    assert not client.list_artifacts(onnx.info.run_id, "checkpoint")
    assert onnx.data.tags[T.OUTPUT_ARTIFACT] == "output/model.onnx" and len(onnx.data.tags[T.OUTPUT_SHA]) == 64


def test_tampered_checkpoint_is_refused(workspace: Path):
    recipe = write_recipe(workspace, THREE_STAGES)
    assert cli("run", recipe, "--only", "train").exit_code == 0
    train = by_node(stage_runs(local_uri(workspace)))["train"]
    artifact = Path(train.info.artifact_uri.replace("file://", "")) / T.CHECKPOINT_ARTIFACT
    data = bytearray(artifact.read_bytes())
    data[-10] ^= 0xFF
    artifact.write_bytes(bytes(data))
    result = cli("run", recipe)
    assert result.exit_code == 1
    assert "corrupt" in result.output and "sha256" in result.output


def test_unknown_model_or_missing_data_is_a_located_error_that_starts_nothing(workspace: Path):
    recipe = write_recipe(workspace, THREE_STAGES)
    recipe.write_text(recipe.read_text().replace("model: lenet", "model: resnet81"))
    result = cli("run", recipe)
    assert result.exit_code == 2
    assert (
        f"{recipe}:4:1: model: unknown torchvision classification model 'resnet81'; did you mean 'resnet18'?"
        in result.output
    )
    recipe.write_text(recipe.read_text().replace("model: resnet81", "model: yolov8n"))
    result = cli("plan", recipe)
    assert result.exit_code == 2 and "write 'yolov8n.yaml'" in result.output
    recipe.write_text(
        recipe.read_text()
        .replace("model: yolov8n", "model: lenet")
        .replace("epochs: 2\n", "epochs: 2\n    args: {foo: 1}\n")
    )
    result = cli("plan", recipe)
    assert (
        result.exit_code == 2
        and "stages.train.args: the torchvision family takes no extra trainer arguments" in result.output
    )
    recipe.write_text(
        recipe.read_text()
        .replace("    args: {foo: 1}\n", "")
        .replace("data: builtin:shapes-cls?train=64&val=32&imgsz=32", "data: no/such/folder")
    )
    result = cli("run", recipe)
    assert result.exit_code == 2
    assert f"{recipe}:5:1: data: dataset path 'no/such/folder' does not exist" in result.output
    assert not (workspace / "mlflow.db").exists()


def test_committed_json_schema_is_current():
    import json

    from recipe_runner.recipe import recipe_json_schema

    committed = json.loads((Path(__file__).parent.parent / "recipe.schema.json").read_text())
    assert committed == recipe_json_schema(), "regenerate it: recipe schema > recipe.schema.json"


def test_the_schema_promises_a_list_of_gpus_only_where_a_family_takes_one():
    """Editors show this description: a GPU list trains yolo with DDP, torchvision refuses it."""
    import pytest

    from recipe_runner.models import FAMILIES
    from recipe_runner.recipe import recipe_json_schema

    device = recipe_json_schema()["$defs"]["TrainConfig"]["properties"]["device"]
    description = device["anyOf"][0]["description"]
    assert "yolo family trains on all of them with DDP" in description
    assert "torchvision family takes one device" in description
    with pytest.raises(ValueError, match="trains on one device; got a list of 2"):
        FAMILIES.get("torchvision").load().check_device([0, 1])
    # past the count, yolo checks each GPU exists
    import torch

    if torch.cuda.device_count() < 2:
        with pytest.raises(ValueError, match="needs a CUDA GPU|this machine has"):
            FAMILIES.get("yolo").load().check_device([0, 1])


def test_a_device_this_machine_lacks_is_a_located_error_before_anything_runs(workspace: Path):
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("this machine has a GPU")
    recipe = write_recipe(workspace, THREE_STAGES.replace("    epochs: 1\n", "    epochs: 1\n    device: 0\n"))
    result = cli("run", recipe)
    assert result.exit_code == 2
    assert (
        "stages.finetune.device: device 0 needs a CUDA GPU and this machine has none; use device: cpu" in result.stderr
    )
    assert f"{recipe}:" in result.stderr
    assert not (workspace / "mlflow.db").exists()


def test_lone_last_batch_trains_and_onnx_check_covers_every_val_image(workspace: Path):
    """33 train images at batch 16 leave a batch of one (BatchNorm cannot train on it); 12 val images at a dynamic
    batch of 16 were once skipped by the ONNX check, which then compared nothing and passed."""
    recipe = workspace / "recipe.yaml"
    recipe.write_text(
        "version: 1\nname: lone\nmodel: resnet18\ndata: builtin:shapes-cls?train=33&val=12&imgsz=32\n"
        "defaults: {imgsz: 32, batch: 16}\nstages:\n  train: {type: train, epochs: 1}\n"
        "  onnx: {type: export, format: onnx, dynamic: true}\n"
    )
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    runs = {r.data.tags[T.NODE_ID]: r for r in stage_runs(local_uri(workspace))}
    onnx = runs["onnx"].data.metrics
    assert onnx["onnx_images"] == 12
    assert abs(onnx["onnx_top1"] - onnx["parent_top1"]) <= 1 / 12


def test_max_map_drop_keeps_the_last_model_within_the_bound_and_says_so(workspace: Path):
    """A step whose accuracy falls too far is rejected: the stage keeps the model before it and warns."""
    stages = THREE_STAGES.replace("group-l2", "random").replace(
        "ratio: 0.5", "ratio: 0.95\n    steps: 2\n    max_map_drop: 0.0"
    )
    result = cli("run", write_recipe(workspace, stages))
    assert result.exit_code == 0, result.output
    runs = by_node(stage_runs(local_uri(workspace)))
    prune, train = runs["prune"].data, runs["train"].data
    assert prune.metrics["stopped_early"] == 1.0
    steps_done = int(prune.metrics["steps_done"])
    assert steps_done < 2 and f"keeping step {steps_done}" in prune.tags[T.WARNING]
    assert "[warn]   prune: stopped at step" in result.output
    if steps_done == 0:  # the unpruned model was kept
        assert prune.metrics["macs"] == train.metrics["macs"]
    assert prune.metrics["top1"] >= prune.metrics["baseline_top1"]  # within the (zero) bound


def test_googlenet_trains_on_its_main_head(workspace: Path):
    """googlenet returned GoogLeNetOutputs (with auxiliary heads) in train mode, which the loss cannot take."""
    from recipe_runner.data import resolve_data

    data = resolve_data("builtin:shapes-cls?train=16&val=8&imgsz=32", "classify")
    model = TorchvisionFamily().build("googlenet", data, seed=0).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, data.num_classes)


def test_user_image_folder_skips_hidden_folders_and_names_an_unreadable_image(workspace: Path):
    import shutil

    from recipe_runner.data import resolve_data

    source = resolve_data("builtin:shapes-cls?train=24&val=8&imgsz=32", "classify").path
    shutil.copytree(source, workspace / "mydata", ignore=shutil.ignore_patterns("names.txt"))
    for split in ("train", "val"):
        (workspace / "mydata" / split / ".ipynb_checkpoints").mkdir()  # what Jupyter leaves behind: not a class
    recipe = workspace / "recipe.yaml"
    recipe.write_text(
        "version: 1\nname: folder\nmodel: lenet\ndata: mydata\ndefaults: {imgsz: 32, batch: 8}\n"
        "stages:\n  train: {type: train, epochs: 1}\n"
    )
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert "." not in "".join(resolve_data("mydata", "classify", workspace).names)
    broken = sorted((workspace / "mydata" / "train").rglob("*.png"))[0]
    broken.write_bytes(broken.read_bytes()[:60])  # a truncated file, same name
    result = cli("run", recipe, "--force", "train")
    assert result.exit_code == 1
    assert f"cannot read image {broken}" in result.output.replace("\n", "")


def test_user_image_folder_whose_splits_differ_names_the_classes(workspace: Path):
    """A missing or extra class shifts every class index; the error says which folders to fix."""
    import pytest

    from recipe_runner.data import DataError, resolve_data

    for split, classes in (("train", ["circle", "cross"]), ("val", ["circle", "square"])):
        for c in classes:
            folder = workspace / "mydata" / split / c
            folder.mkdir(parents=True)
            (folder / "a.png").write_bytes(b"png")
    with pytest.raises(DataError, match=r"different classes \(only in train/: cross; only in val/: square\)"):
        resolve_data("mydata", "classify", workspace)


def test_a_key_added_later_stays_out_of_the_cache_key_at_its_default():
    from typing import ClassVar

    from pydantic import Field

    from recipe_runner.stages.train import TrainConfig

    class Grown(TrainConfig):
        KEY_ONLY_WHEN_SET: ClassVar[frozenset[str]] = frozenset({"new_knob"})
        new_knob: float = Field(0.0)

    assert Grown().identity() == TrainConfig().identity()  # stages recorded before the key existed are still reused
    assert Grown(new_knob=0.5).identity() == {**TrainConfig().identity(), "new_knob": 0.5}
