"""Inputs that reach the cache key or the dataset: one resolution everywhere, the same one the library uses."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import TINY_DATA

RECIPE = """\
version: 1
name: key
model: {model}
data: builtin:shapes
stages:
  train: {{type: train}}
"""


def test_a_local_yolo_yaml_is_keyed_by_what_ultralytics_builds_from_it(workspace: Path):
    """Ultralytics takes the scale from the file name: byte-identical yolov8n-custom.yaml and yolov8s-custom.yaml
    are different models, so different keys; the name alone (same bytes, same scale) is not."""
    import ultralytics

    from recipe_runner.planner import model_identity
    from recipe_runner.recipe import parse_recipe

    text = (Path(ultralytics.__file__).parent / "cfg" / "models" / "v8" / "yolov8.yaml").read_text()
    for name in ("yolov8n-custom.yaml", "yolov8s-custom.yaml", "yolov8s-other.yaml"):
        (workspace / name).write_text(text)

    def key(model: str) -> str:
        return model_identity(parse_recipe(RECIPE.format(model=model), "recipe.yaml"))["source"]

    n, s = key("yolov8n-custom.yaml"), key("yolov8s-custom.yaml")
    assert n != s
    assert key("yolov8s-other.yaml") == s
    (workspace / "yolov8s-custom.yaml").write_text(text.replace("nc: 80", "nc: 81"))
    assert key("yolov8s-custom.yaml") != s  # an edit of the file Ultralytics reads is a new key


@pytest.fixture
def user_data(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny detection set copied to ~/ds (HOME is the workspace), with txt lists in ds/lists/."""
    from recipe_runner.data import resolve_data

    monkeypatch.setenv("HOME", str(workspace))
    source = Path(resolve_data(TINY_DATA, "detect").path).parent
    root = workspace / "ds"
    for part in ("images", "labels"):
        shutil.copytree(source / part, root / part)
    (root / "lists").mkdir()
    for split in ("train", "val"):
        # relative to the working directory, not to the list (Ultralytics' rule for lines without './')
        lines = [f"ds/images/{split}/{f.name}" for f in sorted((root / "images" / split).glob("*.png"))]
        (root / "lists" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_tilde_in_a_data_yaml_and_txt_lists_resolve_as_ultralytics_reads_them(workspace: Path, user_data: Path):
    import yaml

    from recipe_runner.data import resolve_data
    from recipe_runner.models.yolo.environment import resolved_data_yaml
    from recipe_runner.models.yolo.export import split_files

    (workspace / "data.yaml").write_text("path: ~/ds\ntrain: images/train\nval: lists/val.txt\nnames: [a, b, c]\n")
    data = resolve_data("data.yaml", "detect", workspace)
    handed = yaml.safe_load(Path(resolved_data_yaml(data)).read_text())
    assert handed["path"] == str(user_data.resolve())  # not <yaml folder>/~/ds
    files = split_files(data, "val")  # calibration images: the list's lines as training reads them
    assert files and all(f.is_file() for f in files)
    assert sorted(f.name for f in files) == sorted(f.name for f in (user_data / "images" / "val").glob("*.png"))


@pytest.mark.parametrize(
    "spec",
    [
        "builtin:shapes?train=99999999999999999",
        "builtin:shapes?imgsz=1",
        "builtin:shapes-cls?imgsz=100000",
        "builtin:shapes?objects=0",
    ],
)
def test_builtin_options_out_of_bounds_are_refused_before_generating(spec: str, workspace: Path):
    """A few extra digits would otherwise generate images for hours (or fail deep in the generator)."""
    from recipe_runner.data import DataError, resolve_data

    with pytest.raises(DataError, match="must be between"):
        resolve_data(spec, "classify" if "cls" in spec else "detect")
