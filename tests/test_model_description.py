"""The model-description envelope (models/base.py ModelDescription): what describe() writes into stage and epoch
checkpoints and rebuild() checks before building anything."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from recipe_runner.models import DescriptionError, ModelDescription
from recipe_runner.models.torchvision import TorchvisionFamily

DATA = SimpleNamespace(num_classes=3, names=["a", "b", "c"])


@pytest.fixture(scope="module")
def lenet():
    family = TorchvisionFamily()
    return family, family.build("lenet", DATA, seed=0).eval()


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        first, second = a(x), b(x)
    return torch.equal(
        first[0] if isinstance(first, (list, tuple)) else first,
        second[0] if isinstance(second, (list, tuple)) else second,
    )


def test_a_torchvision_description_in_the_pre_envelope_shape_rebuilds(lenet):
    """What describe() wrote before the envelope: no "format" key at all."""
    from recipe_runner.models._shapes import module_attributes

    family, model = lenet
    old = {
        "family": "torchvision",
        "source": "lenet",
        "num_classes": 3,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "attributes": module_attributes(model),
    }
    rebuilt = family.rebuild(old)
    assert _same_outputs(model, rebuilt, torch.randn(2, 3, 32, 32))


def test_the_envelope_round_trips_and_keeps_the_flat_on_disk_keys(lenet):
    family, model = lenet
    description = family.describe(model)
    assert {"family", "format", "source", "num_classes", "state_dict", "attributes"} == set(description)
    assert description["family"] == "torchvision" and description["format"] == 1
    envelope = ModelDescription.from_dict(description, "torchvision")
    assert envelope.fields == {"source": "lenet", "num_classes": 3} and envelope.transforms == {}
    assert envelope.to_dict() == description


@pytest.mark.parametrize("version", [2, 0, "1", True, None])
def test_an_unknown_format_version_is_a_one_line_error(lenet, version):
    family, model = lenet
    description = {**family.describe(model), "format": version}
    with pytest.raises(DescriptionError, match="format") as info:
        family.rebuild(description)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_another_familys_description_is_refused_before_anything_is_built(lenet, family):
    torchvision_family, model = lenet
    with pytest.raises(DescriptionError, match="of family 'torchvision', not 'yolo'") as info:
        family.rebuild(torchvision_family.describe(model))  # `family`: conftest's YoloFamily
    assert "\n" not in str(info.value)
    yolo = family.build("yolov8n.yaml", SimpleNamespace(num_classes=2, names=["a", "b"]), seed=0)
    with pytest.raises(DescriptionError, match="of family 'yolo', not 'torchvision'"):
        torchvision_family.rebuild(family.describe(yolo))
    with pytest.raises(DescriptionError, match="not a mapping"):
        torchvision_family.rebuild([1, 2])


def test_a_pruned_yolo_description_in_the_pre_envelope_shape_rebuilds(family):
    """What yolo's describe() wrote before the envelope, key for key, with the C2f split to replay."""
    from recipe_runner.models._shapes import module_attributes

    model = family.prepare_for_pruning(
        family.build("yolov8n.yaml", SimpleNamespace(num_classes=2, names=["a", "b"]), seed=0)
    ).eval()
    old = {
        "family": "yolo",
        "format": 1,
        "yaml": copy.deepcopy(model.yaml),
        "nc": 2,
        "names": ["a", "b"],
        "split_c2f": True,
        "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        "attributes": module_attributes(model),
    }
    rebuilt = family.rebuild(old)
    assert any(type(m).__name__ == "SplitC2f" for m in rebuilt.modules())
    assert rebuilt.names == {0: "a", 1: "b"}
    assert _same_outputs(model, rebuilt, family.example_inputs(model, 64))
    envelope = ModelDescription.from_dict(family.describe(rebuilt), "yolo")
    assert envelope.transforms == {"split_c2f": True} and set(envelope.fields) == {"yaml", "nc", "names"}
