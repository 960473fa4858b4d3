"""The yolo family: split-C2f equivalence, plain-data reload of pruned models, the recipe end to end, offline.

Tiny sizes throughout (16 train / 8 val images at 64 px, 1 epoch per stage), so each test takes seconds to a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TINY_DATA, RecordingContext, cli, local_uri, stage_runs
from mlflow.tracking import MlflowClient

from recipe_runner import persistence as T
from recipe_runner.persistence import load_checkpoint

YOLO_RECIPE = f"""\
version: 1
name: tiny-yolo
seed: 0
model: yolov8n.yaml
data: {TINY_DATA}
defaults:
  imgsz: 64
  batch: 8
stages:
  train:
    type: train
    epochs: 2
  prune:
    type: prune
    method: depgraph
    ratio: 0.5
    steps: 2
    finetune_epochs: 1
  finetune:
    type: finetune
    epochs: 1
  onnx:
    type: export
    format: onnx
"""


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    """Trained-looking BN statistics, so the equivalence test cannot pass by accident on identity BN."""
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)


@pytest.mark.parametrize("source", ["yolov8n.yaml", "yolo11n.yaml"])
def test_split_c2f_is_numerically_equivalent(family, tiny_data, source: str):
    import copy

    from ultralytics.nn.modules.block import C2f

    from recipe_runner.models.yolo.blocks import SplitC2f

    model = family.build(source, tiny_data, seed=0)
    _randomise_batchnorm(model)
    model.eval()
    eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert eps == {1e-3}  # Ultralytics' eps, which the replacement must keep
    x = family.example_inputs(model, 64)
    with torch.no_grad():
        before = model(x)[0]
    replaced = family.prepare_for_pruning(copy.deepcopy(model))
    assert not any(isinstance(m, C2f) for m in replaced.modules())
    assert any(isinstance(m, SplitC2f) for m in replaced.modules())
    assert not issubclass(SplitC2f, C2f)  # the exporter's forward_split trap
    assert not any(m.training for m in replaced.modules())
    with torch.no_grad():
        after = replaced(x)[0]
    assert (before - after).abs().max().item() < 1e-5


@pytest.mark.parametrize("source", ["yolov8n.yaml", "yolo11n.yaml"])  # YOLO11: attention blocks are kept whole
def test_pruned_model_reloads_from_plain_data(family, tiny_data, tmp_path: Path, source: str):
    from recipe_runner.pruning import METHODS, plan_steps

    method = METHODS.get("depgraph")
    config = method.config(method="depgraph", imgsz=64, ratio=0.5)
    model = family.build(source, tiny_data, seed=0)
    _randomise_batchnorm(model)
    before = family.cost(model, 64)
    model = method.prune_step(model, family, tiny_data, config, plan_steps(0.5, 1)[0])
    after = family.cost(model, 64)
    assert after["macs"] < 0.55 * before["macs"]  # yolo11n: ~0.50 (its attention blocks stay whole)
    path = tmp_path / "pruned.pt"
    torch.save(family.describe(model), path)
    reloaded = family.rebuild(torch.load(path, weights_only=True))  # no code is unpickled
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in reloaded.state_dict().items()} == shapes
    assert family.cost(reloaded, 64) == after
    model.eval()
    x = family.example_inputs(model, 64)
    with torch.no_grad():
        assert torch.equal(model(x)[0], reloaded(x)[0])


def test_check_source_rejects_missing_checkpoint_and_unknown_yaml(family):
    with pytest.raises(ValueError, match="does not exist"):
        family.check_source("missing-weights.pt")
    with pytest.raises(ValueError, match="unknown Ultralytics model yaml"):
        family.check_source("yolov99q.yaml")
    with pytest.raises(ValueError, match="not a detection model"):
        family.check_source("yolov8n-seg.yaml")
    with pytest.raises(ValueError, match="neither an Ultralytics model yaml nor a .pt"):
        family.check_source("resnet18")  # once an AssertionError from deep inside Ultralytics


def test_args_must_be_ultralytics_train_arguments_the_runner_does_not_own(family):
    family.check_args({"nbs": 16, "mosaic": 0.0, "warmup_epochs": 0})
    for args, message in [
        ({"mosiac": 0}, "did you mean 'mosaic'"),
        ({"epochs": 3}, "set by recipe-runner itself"),
        ({"data": "x.yaml"}, "set by recipe-runner itself"),
        ({"lr0": 0.1}, "use the recipe key 'lr'"),
    ]:
        with pytest.raises(ValueError, match=message):
            family.check_args(args)


def _by_node(runs) -> dict:
    return {r.data.tags[T.NODE_ID]: r for r in runs}


def test_yolo_recipe_end_to_end_and_rerun_reuses(workspace: Path, family):
    recipe = workspace / "yolo.yaml"
    recipe.write_text(YOLO_RECIPE)
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    uri = local_uri(workspace)
    runs = _by_node(stage_runs(uri))
    assert list(runs) == ["train", "prune", "finetune", "onnx"]
    for node_id, run in runs.items():
        assert run.info.status == "FINISHED", node_id
        # the export stage's output is a file: its own accuracy and size, the parent's MACs, no PyTorch latency
        names = ("latency_ms",) if node_id != "onnx" else ("onnx_latency_ms", "parent_mAP50-95")
        for metric in ("mAP50", "mAP50-95", "precision", "recall", "macs", "params", "size_mb") + names:
            assert metric in run.data.metrics, (node_id, metric)
    train, prune, finetune, onnx = runs["train"], runs["prune"], runs["finetune"], runs["onnx"]
    assert train.data.metrics["epochs_trained"] == 2
    client = MlflowClient(uri)
    # per-epoch learning curve in the stage's own run, step = epoch
    assert sorted(m.step for m in client.get_metric_history(train.info.run_id, "train/box_loss")) == [1, 2]
    assert sorted(m.step for m in client.get_metric_history(train.info.run_id, "mAP50-95"))[:2] == [1, 2]
    # channel ratio 0.5 leaves about (1-0.5)^2 of the prunable MACs: well under half of the total
    assert prune.data.metrics["macs"] < 0.5 * train.data.metrics["macs"]
    assert finetune.data.metrics["macs"] == prune.data.metrics["macs"]
    assert [m.step for m in client.get_metric_history(prune.info.run_id, "step/macs")] == [0, 1, 2]
    # the ONNX file matches PyTorch and was evaluated itself
    assert onnx.data.metrics["onnx_max_abs_diff"] < 1e-3
    assert "onnx_mAP50-95" in onnx.data.metrics and onnx.data.metrics["onnx_size_mb"] > 0
    assert [a.path for a in client.list_artifacts(onnx.info.run_id, "output")] == ["output/model.onnx"]
    # the pruned checkpoint reloads (plain data only) with the pruned shapes and the same outputs
    path = Path(client.download_artifacts(finetune.info.run_id, T.CHECKPOINT_ARTIFACT, str(workspace / "dl")))
    model = family.rebuild(load_checkpoint(path, finetune.data.tags[T.CHECKPOINT_SHA])["model"])
    assert sum(p.numel() for p in model.parameters()) == finetune.data.metrics["params"]
    assert family.cost(model, 64)["macs"] == finetune.data.metrics["macs"]
    onnx_path = Path(client.download_artifacts(onnx.info.run_id, "output/model.onnx", str(workspace / "dl-onnx")))
    import onnxruntime as ort

    x = family.example_inputs(model, 64)
    with torch.no_grad():
        ours = model(x)[0].numpy()
    theirs = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[
        0
    ]
    assert abs(ours - theirs).max() < 1e-3
    # second run: every stage reused, nothing trained
    again = cli("run", recipe)
    assert again.exit_code == 0, again.output
    second = _by_node(stage_runs(uri))
    assert {r.data.tags[T.ROLE] for r in second.values()} == {"reused"}
    assert all(r.data.metrics["epochs_trained"] == 0 for r in second.values())
    # exporting a model rebuilt from its MLflow checkpoint (not the in-memory one) works too
    forced = cli("run", recipe, "--force", "onnx")
    assert forced.exit_code == 0, forced.output
    third = _by_node(stage_runs(uri))
    assert third["onnx"].data.tags[T.ROLE] == "stage" and third["onnx"].data.metrics["onnx_max_abs_diff"] < 1e-3


BLOCKED_RUN = """\
import json, socket, sys
attempts = []
_connect = socket.socket.connect

def _local(address):
    host = address[0] if isinstance(address, tuple) else address
    return isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/"))

def connect(self, address):
    if self.family == socket.AF_UNIX or _local(address):
        return _connect(self, address)
    attempts.append(repr(address))
    raise OSError("network blocked by test")

def connect_ex(self, address):
    try:
        connect(self, address)
        return 0
    except OSError:
        return 111

_getaddrinfo = socket.getaddrinfo

def getaddrinfo(host, *args, **kwargs):
    if host is None or _local((host,)):
        return _getaddrinfo(host, *args, **kwargs)
    attempts.append(f"dns:{host}")
    raise socket.gaierror("network blocked by test")

socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
from recipe_runner.cli import app
try:
    app(sys.argv[1:])
finally:
    open("attempts.json", "w").write(json.dumps(attempts))
"""


def test_yolo_recipe_runs_with_network_blocked(tmp_path: Path):
    """A fresh process (fresh Ultralytics settings, fonts, dataset) with every non-loopback connection refused."""
    (tmp_path / "blocked.py").write_text(BLOCKED_RUN)
    (tmp_path / "yolo.yaml").write_text(
        textwrap.dedent(f"""\
        version: 1
        name: offline-yolo
        model: yolov8n.yaml
        data: {TINY_DATA}
        defaults: {{imgsz: 64, batch: 8}}
        stages:
          train: {{type: train, epochs: 1}}
          onnx: {{type: export, format: onnx}}
        """)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "MLFLOW_", "RECIPE_RUNNER_"))}
    env.update(RECIPE_RUNNER_CACHE=str(tmp_path / "cache"), HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [sys.executable, "blocked.py", "run", "yolo.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((tmp_path / "attempts.json").read_text()) == []
    assert (tmp_path / "cache" / "ultralytics-config" / "Ultralytics" / "Arial.ttf").is_file()
    assert not (tmp_path / "home" / ".config" / "Ultralytics").exists()  # settings stay in the runner's folder


def test_user_data_yaml_with_relative_path_txt_lists_and_name_list(workspace: Path, family, tiny_data):
    """A user's data.yaml: relative `path:` (relative to the yaml's folder), names as a list, train/val as txt lists."""
    from recipe_runner.data import resolve_data
    from recipe_runner.models.yolo.export import validation_images

    root = workspace / "mydata"
    source = Path(tiny_data.path).parent
    import shutil

    shutil.copytree(source / "images", root / "images")
    shutil.copytree(source / "labels", root / "labels")
    for split in ("train", "val"):
        files = sorted((root / "images" / split).glob("*.png"))
        (root / f"{split}.txt").write_text("\n".join(f"./images/{split}/{f.name}" for f in files) + "\n")
    (workspace / "cfg").mkdir()
    (workspace / "cfg" / "data.yaml").write_text(
        "path: ../mydata\ntrain: train.txt\nval: val.txt\nnames: [circle, square, triangle]\n"
    )
    data = resolve_data("cfg/data.yaml", "detect", workspace)
    assert data.names == ["circle", "square", "triangle"]
    model = family.build("yolov8n.yaml", data, seed=0)
    assert model.nc == 3
    knobs = type("Knobs", (), {"imgsz": 64, "batch": 8, "workers": 0, "device": "cpu"})()
    metrics = family.evaluate(model, data, knobs)  # Ultralytics found the images and labels
    assert set(metrics) == {"mAP50", "mAP50-95", "precision", "recall"}
    assert validation_images(data, 64, 2).shape == (2, 3, 64, 64)


def test_data_yaml_mistakes_are_caught_before_training(workspace: Path, tiny_data):
    """What Ultralytics would only report mid-run (or drop silently) is a clear error while planning."""
    import shutil

    from recipe_runner.data import DataError, resolve_data

    root = workspace / "ds"
    shutil.copytree(Path(tiny_data.path).parent / "images", root / "images")
    shutil.copytree(Path(tiny_data.path).parent / "labels", root / "labels")
    good = "path: .\ntrain: images/train\nval: images/val\nnames: {0: circle, 1: square, 2: triangle}\n"
    (root / "data.yaml").write_text(good)
    assert resolve_data("ds/data.yaml", "detect", workspace).names == ["circle", "square", "triangle"]
    cases = {
        good.replace("images/val", "images/nope"): "neither a folder nor a .txt list",
        good.replace("\nval:", "\nvalid:"): "missing 'val'",
        good.replace("2: triangle", "3: triangle"): "keys must be the class ids",
        good + "nc: 4\n": "nc is 4 but 'names' lists 3",
        good.replace("images/val", "val.txt"): "neither a folder nor a .txt list",
    }
    for text, message in cases.items():
        (root / "data.yaml").write_text(text)
        with pytest.raises(DataError, match=message):
            resolve_data("ds/data.yaml", "detect", workspace)
    (root / "data.yaml").write_text(good.replace("images/val", "val.txt"))
    (root / "val.txt").write_text("./images/val/missing.png\n")
    with pytest.raises(DataError, match="missing.png', which does not exist"):
        resolve_data("ds/data.yaml", "detect", workspace)
    (root / "data.yaml").write_text(good)
    label = sorted((root / "labels" / "train").glob("*.txt"))[0]
    label.write_text(label.read_text() + "5 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=r"class id 5 is outside 0..2"):
        resolve_data("ds/data.yaml", "detect", workspace)
    for bad in ("nan", "inf", "-inf"):  # floats, but no class ids: a planning error, not a traceback
        label.write_text(f"{bad} 0.5 0.5 0.2 0.2\n")
        with pytest.raises(DataError, match=rf"class id {bad} is outside 0..2"):
            resolve_data("ds/data.yaml", "detect", workspace)


def test_training_keeps_pruned_shapes_and_resumes_from_plain_state(family, tiny_data, tmp_path: Path, monkeypatch):
    from ultralytics.models.yolo.detect import DetectionTrainer

    from recipe_runner.pruning import METHODS, plan_steps
    from recipe_runner.stages.train import TrainConfig

    # which epoch (0-based) closed mosaic: a run resumed past epochs - close_mosaic must close it as an
    # uninterrupted one does, or the two differ under one cache key
    closed: list[int] = []
    original_close = DetectionTrainer._close_dataloader_mosaic

    def close(self):
        closed.append(self.epoch)
        return original_close(self)

    monkeypatch.setattr(DetectionTrainer, "_close_dataloader_mosaic", close)

    method = METHODS.get("depgraph")
    model = family.build("yolov8n.yaml", tiny_data, seed=0)
    model = method.prune_step(
        model, family, tiny_data, method.config(method="depgraph", imgsz=64, ratio=0.5), plan_steps(0.5, 1)[0]
    )
    pruned = family.cost(model, 64)
    knobs = TrainConfig(epochs=2, imgsz=64, batch=8, args={"close_mosaic": 1})
    first = RecordingContext(tmp_path)
    result = family.train(model, tiny_data, knobs, 2, first)
    assert (result.epochs_trained, result.last_epoch) == (2, 2)
    assert family.cost(result.model, 64) == pruned  # Ultralytics' trainer did not rebuild the yaml
    assert [step for step, _ in first.logged] == [1, 2] and "mAP50-95" in first.logged[0][1]
    assert [s["epoch"] for s in first.states] == [1, 2]
    assert closed == [1]
    resumed = family.train(
        family.build("yolov8n.yaml", tiny_data, seed=0),
        tiny_data,
        knobs,
        2,
        RecordingContext(tmp_path, resume_state=first.states[0]),
    )
    assert (resumed.epochs_trained, resumed.last_epoch) == (1, 2)
    assert family.cost(resumed.model, 64) == pruned
    assert closed == [1, 1]  # the resumed run closed mosaic at its first epoch, 1, as the uninterrupted one


def test_unstructured_pruning_of_yolo_keeps_its_zeros_through_finetuning(workspace: Path):
    recipe = workspace / "recipe.yaml"
    recipe.write_text(YOLO_RECIPE.split("  onnx:")[0].replace("method: depgraph", "method: l1-unstructured"))
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    runs = {r.data.tags[T.NODE_ID]: r for r in stage_runs(local_uri(workspace))}
    assert runs["train"].data.metrics["sparsity"] < 0.01
    assert abs(runs["prune"].data.metrics["sparsity"] - 0.5) < 0.02
    assert runs["finetune"].data.metrics["sparsity"] >= 0.48  # Ultralytics' trainer did not regrow the pruned weights
    assert runs["finetune"].data.metrics["macs"] == runs["train"].data.metrics["macs"]


def test_a_local_model_yaml_is_keyed_by_content_not_by_path(workspace: Path):
    """Editing a user's model yaml must rerun (never reuse a stale model); `./net.yaml` and `net.yaml` are the same."""
    import shutil

    from ultralytics.utils import ROOT

    from recipe_runner.planner import RunOptions, prepare

    shutil.copy(ROOT / "cfg/models/v8/yolov8.yaml", workspace / "mynet.yaml")
    recipe = workspace / "recipe.yaml"

    def train_key(model: str) -> str:
        recipe.write_text(
            f"version: 1\nname: keyed\nmodel: {model}\ndata: builtin:shapes?train=8&val=4&imgsz=64\n"
            "stages:\n  train: {type: train, epochs: 1, imgsz: 64}\n"
        )
        return prepare(recipe, RunOptions()).graph.nodes["train"].cache_key

    before = train_key("mynet.yaml")
    assert train_key("./mynet.yaml") == before == train_key(str(workspace / "mynet.yaml"))
    text = (workspace / "mynet.yaml").read_text()
    (workspace / "mynet.yaml").write_text(text.replace("n: [0.33, 0.25, 1024]", "n: [0.33, 0.5, 1024]"))
    assert train_key("mynet.yaml") != before
