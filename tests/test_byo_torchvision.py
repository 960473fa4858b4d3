"""Bring your own torchvision weights: a state-dict file or checkpoint dict (weights_only), or a weights name found
in the local torch hub cache (never downloaded); the head kept when it fits the data, replaced (seeded, with a
[note]) when it does not; a recipe may start with `evaluate`."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import cli, local_uri, stage_runs

from recipe_runner.models import ModelRef
from recipe_runner.models.torchvision import TorchvisionFamily

DATA = "builtin:shapes-cls?train=64&val=32&imgsz=32"  # 4 classes


def _recipe(folder: Path, weights: str, stages: str = "eval: {type: evaluate}") -> Path:
    path = folder / "recipe.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        version: 1
        name: byo-tv
        model:
          family: torchvision
          source: resnet18
          weights: {weights}
        data: {DATA}
        defaults: {{imgsz: 32, batch: 16}}
        stages:
          {stages}
        """)
    )
    return path


def _family(weights: str) -> TorchvisionFamily:
    family = TorchvisionFamily()
    family.bind(ModelRef("torchvision", "resnet18", weights))
    return family


@pytest.fixture
def data(workspace: Path):
    from recipe_runner.data import resolve_data

    return resolve_data(DATA, "classify")


def test_a_state_dict_whose_head_fits_is_loaded_whole(workspace: Path, data):
    torch.manual_seed(1)
    trained = torchvision.models.resnet18(num_classes=4).state_dict()
    torch.save(trained, workspace / "mine.pth")
    family = _family(str(workspace / "mine.pth"))
    assert family.model_notes(data) == []
    built = family.build("resnet18", data, seed=0).state_dict()
    assert all(torch.equal(built[k], trained[k]) for k in trained)


def test_a_checkpoint_dict_holds_the_state_dict_under_a_usual_key(workspace: Path, data):
    torch.manual_seed(2)
    trained = torchvision.models.resnet18(num_classes=4).state_dict()
    torch.save({"epoch": 7, "model_state_dict": trained, "optimizer": {"lr": 0.1}}, workspace / "ckpt.pt")
    built = _family(str(workspace / "ckpt.pt")).build("resnet18", data, seed=0).state_dict()
    assert torch.equal(built["fc.weight"], trained["fc.weight"])
    assert torch.equal(built["layer4.1.conv2.weight"], trained["layer4.1.conv2.weight"])


def test_a_head_of_another_class_count_is_replaced_seeded_and_the_rest_kept(workspace: Path, data):
    imagenet_like = torchvision.models.resnet18().state_dict()  # 1000 classes
    torch.save(imagenet_like, workspace / "big.pth")
    family = _family(str(workspace / "big.pth"))
    [note] = family.model_notes(data)
    assert "1000 classes" in note and "4" in note and "fc" in note
    built = family.build("resnet18", data, seed=3)
    torch.manual_seed(3)
    fresh = torch.nn.Linear(512, 4)
    assert torch.equal(built.fc.weight, fresh.weight) and torch.equal(built.fc.bias, fresh.bias)
    assert torch.equal(built.state_dict()["conv1.weight"], imagenet_like["conv1.weight"])
    # the replaced head rebuilds from a stage checkpoint like any model
    again = family.rebuild(family.describe(built))
    assert torch.equal(again.fc.weight, built.fc.weight)


def test_bad_weights_are_located_errors_before_anything_runs(workspace: Path):
    # a whole pickled module needs its class unpickled: refused, with how to save the weights instead
    torch.save(torchvision.models.resnet18(num_classes=4), workspace / "whole.pt")
    torch.save(torchvision.models.resnet34(num_classes=4).state_dict(), workspace / "other_arch.pth")
    cases = {
        "whole.pt": "refused: save the weights alone",
        "nowhere.pth": "weights file 'nowhere.pth' not found",
        "other_arch.pth": "the weights do not fit resnet18",
    }
    for weights, words in cases.items():
        result = cli("plan", _recipe(workspace, weights))
        assert result.exit_code == 2, result.output
        assert "recipe.yaml:6:" in result.stderr and words in result.stderr, result.stderr
    assert not (workspace / "mlflow.db").exists()


def test_a_weights_name_comes_from_the_local_hub_cache_only(workspace: Path, monkeypatch: pytest.MonkeyPatch):
    home = workspace / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    recipe = _recipe(workspace, "IMAGENET1K_V1")
    absent = cli("plan", recipe)
    assert absent.exit_code == 2
    assert "recipe.yaml:6:" in absent.stderr and "resnet18-f37072fd.pth" in absent.stderr
    assert str(home / "hub" / "checkpoints") in absent.stderr and "nothing is downloaded" in absent.stderr
    # a file of our own under the expected name stands in for torchvision's
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(4)
    hub = torchvision.models.resnet18().state_dict()
    torch.save(hub, home / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    result = cli("run", recipe)  # `evaluate` first: the baseline of the given weights
    assert result.exit_code == 0, result.output
    assert "[note]" in result.output and "1000 classes" in result.output
    [run] = stage_runs(local_uri(workspace))
    assert run.info.status == "FINISHED" and "top1" in run.data.metrics
    from mlflow.tracking import MlflowClient

    client = MlflowClient(local_uri(workspace))
    parent = run.data.tags["mlflow.parentRunId"]
    lock = json.loads(
        Path(client.download_artifacts(parent, "recipe/recipe.lock.json", str(workspace / "dl"))).read_text()
    )
    # the weights' own preprocessing (256/224 resize, centre crop, its mean and std), recorded with the run
    assert lock["preprocessing"]["from"] == "ResNet18_Weights.IMAGENET1K_V1.transforms()"
    assert "centre crop" in lock["preprocessing"]["resize"] and lock["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert lock["model_notes"] and lock["model_identity"]["weights"] == "IMAGENET1K_V1"
    steps = TorchvisionFamily()
    steps.bind(ModelRef("torchvision", "resnet18", "IMAGENET1K_V1"))
    names = [type(t).__name__ for t in steps.preprocess().transform(32, train=False).transforms]
    assert names == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
