"""A YOLO stage checkpoint from a shared store cannot run code through Ultralytics' model builder.

Ultralytics' parse_model evals `activation` and looks layer names up in its module globals; the runner
rebuilds only architectures on its allow-list (recipe_runner/models/yolo/architecture.py). Real Ultralytics
throughout; the crafted descriptions carry a payload that would create a marker file.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import cli, local_uri, stage_runs
from mlflow.tracking import MlflowClient

from recipe_runner import persistence as T
from recipe_runner.persistence import CheckpointError, save_checkpoint, sha256_of

SHIPPED = Path(__import__("ultralytics").__file__).parent / "cfg" / "models"


@pytest.fixture(scope="module")
def description(family):
    """A real stage-checkpoint description of yolov8n (2 classes)."""
    from recipe_runner.models.yolo.environment import ultralytics_ready

    ultralytics_ready()
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(family._yaml_dict("yolov8n.yaml"), nc=2, verbose=False)
    model.nc, model.names = 2, {0: "a", 1: "b"}
    return family.describe(model)


def _payload(marker: Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def _detection_yamls(family) -> list[str]:
    """Every detection yaml Ultralytics ships that the yolo family accepts as a model."""
    found = []
    for path in sorted(SHIPPED.glob("*/*.yaml")):
        try:
            family._yaml_dict(str(path))
        except ValueError as exc:
            assert "not a detection model" in str(exc), (path, exc)  # refused only as non-detection
            continue
        found.append(path.name)
    return found


def test_every_shipped_detection_yaml_is_on_the_allow_list(family):
    from recipe_runner.models.yolo.architecture import check_architecture

    names = _detection_yamls(family)
    assert {"yolov8.yaml", "yolo11.yaml", "yolov10n.yaml", "yolov9t.yaml", "yolo26.yaml"} <= set(names)
    assert len(names) >= 25
    for source in ("yolov8n.yaml", "yolo11n.yaml", "yolov8s.yaml", "yolov6n.yaml"):  # scaled names, as users write them
        check_architecture(family._yaml_dict(source), source)


@pytest.mark.parametrize("source", ["yolov8n.yaml", "yolo11n.yaml"])
def test_built_models_round_trip_through_the_check(family, source: str):
    from recipe_runner.data import DataSource
    from recipe_runner.models.yolo.architecture import check_description

    data = DataSource("x", "detect", Path("."), "f", ["a", "b"])
    model = family.build(source, data, seed=0)
    description = family.describe(model)
    check_description(description)  # what build() made, rebuild() accepts
    assert set(description["yaml"]) >= {"backbone", "head", "nc", "channels", "yaml_file"}


def test_unpatched_ultralytics_would_run_the_payload(description, tmp_path: Path):
    """The hole is real: handed straight to Ultralytics, the crafted activation runs."""
    from ultralytics.nn.tasks import DetectionModel

    marker = tmp_path / "PWNED"
    cfg = copy.deepcopy(description["yaml"])
    cfg["activation"] = _payload(marker)
    with pytest.raises(Exception):  # noqa: B017  the payload returns None, which is no activation module
        DetectionModel(cfg, nc=2, verbose=False)
    assert marker.exists()


def _crafted(description: dict, marker: Path) -> dict[str, dict]:
    activation = copy.deepcopy(description)
    activation["yaml"]["activation"] = _payload(marker)
    # a function from ultralytics.nn.tasks' globals, called by parse_model with the row's args
    loader = copy.deepcopy(description)
    loader["yaml"]["backbone"][0] = [-1, 1, "torch_safe_load", [str(marker.with_suffix(".pt"))]]
    # a string parse_model resolves through its locals() or literal_eval: only plain literals pass
    local_name = copy.deepcopy(description)
    local_name["yaml"]["head"][0][3] = ["d", 2, "nearest"]
    code_arg = copy.deepcopy(description)
    code_arg["yaml"]["head"][0][3] = [_payload(marker), 2, "nearest"]
    yaml_file = copy.deepcopy(description)
    yaml_file["yaml"]["yaml_file"] = "https://example.invalid/weights.pt"  # the trainer's `model`: would be fetched
    # the DDP launcher writes the trainer's `model` into a Python script: quotes must not get there
    yaml_quotes = copy.deepcopy(description)
    yaml_quotes["yaml"]["yaml_file"] = f"x.yaml'); open('{marker}', 'w'); ('.yaml"
    extra_key = copy.deepcopy(description)
    extra_key["yaml"]["kpt_shape"] = [17, 3]
    huge = copy.deepcopy(description)
    huge["nc"] = 10**9
    return {
        "activation": activation,
        "loader": loader,
        "local_name": local_name,
        "code_arg": code_arg,
        "yaml_file": yaml_file,
        "yaml_file_quotes": yaml_quotes,
        "extra_key": extra_key,
        "huge_nc": huge,
    }


CASES = ["activation", "loader", "local_name", "code_arg", "yaml_file", "yaml_file_quotes", "extra_key", "huge_nc"]


@pytest.mark.parametrize("case", CASES)
def test_crafted_descriptions_are_refused_and_run_nothing(family, description, tmp_path: Path, case: str):
    from recipe_runner.models.yolo.architecture import ArchitectureError

    marker = tmp_path / "PWNED"
    crafted = _crafted(description, marker)[case]
    with pytest.raises(CheckpointError, match="refused|not a sane") as info:
        family.rebuild(crafted)
    assert isinstance(info.value, ArchitectureError)
    assert not marker.exists() and not marker.with_suffix(".pt").exists()


def test_a_plain_attribute_cannot_replace_the_yaml_or_a_method(family, description):
    crafted = copy.deepcopy(description)
    crafted["attributes"][""] = {"yaml": {"activation": "print('x')"}}
    with pytest.raises(ValueError, match="not a plain attribute"):
        family.rebuild(crafted)
    crafted = copy.deepcopy(description)
    crafted["attributes"]["model.0"] = {"forward": "x"}
    with pytest.raises(ValueError, match="not a plain attribute"):
        family.rebuild(crafted)


RECIPE = """\
version: 1
name: tiny-yolo-arch
seed: 0
model: yolov8n.yaml
data: builtin:shapes?train=16&val=8&imgsz=64
defaults:
  imgsz: 64
  batch: 8
stages:
  train:
    type: train
    epochs: 1
  check:
    type: evaluate
"""


def test_a_store_checkpoint_with_crafted_architecture_is_refused_on_reuse(workspace: Path):
    """An attacker with write access to the store replaces the payload and updates its sha tag."""
    recipe = workspace / "yolo.yaml"
    recipe.write_text(RECIPE)
    result = cli("run", recipe, "--only", "train")
    assert result.exit_code == 0, result.output
    uri = local_uri(workspace)
    train = stage_runs(uri)[0]
    artifact = Path(train.info.artifact_uri.replace("file://", "")) / T.CHECKPOINT_ARTIFACT
    payload = torch.load(artifact, weights_only=True)
    marker = workspace / "PWNED"
    payload["model"]["yaml"]["activation"] = _payload(marker)
    payload.pop("format")
    save_checkpoint(payload, artifact)
    MlflowClient(uri).set_tag(train.info.run_id, T.CHECKPOINT_SHA, sha256_of(artifact))

    result = cli("run", recipe)
    assert result.exit_code == 1
    assert "[reuse]  train" in result.output
    assert "YOLO architecture refused" in result.output and "activation" in result.output, result.output
    assert not marker.exists()
