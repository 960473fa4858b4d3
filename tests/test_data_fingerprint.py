"""The data fingerprint of a user dataset counts exactly its files: images and labels by content, nothing else."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import cli

from recipe_runner.data import fingerprint_data


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.utime(path, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))  # old: the manifest may cache it
    return path


@pytest.fixture
def detect_data(workspace: Path) -> Path:
    """A data.yaml in the working directory (beside the sqlite store) whose `path:` is an absolute folder elsewhere."""
    root = workspace.parent / f"{workspace.name}-images"
    for split in ("train", "val"):
        for i in range(3):
            _write(root / "images" / split / f"{i}.png", f"png-{split}-{i}")
            _write(root / "labels" / split / f"{i}.txt", f"0 0.5 0.5 0.{i + 1} 0.2\n")
    _write(workspace / "data.yaml", f"path: {root}\ntrain: images/train\nval: images/val\nnames: [a, b]\n")
    return workspace / "data.yaml"


def _key(spec: Path) -> str:
    return fingerprint_data(str(spec))


def test_suffixes_match_the_libraries_that_read_the_images():
    from torchvision.datasets.folder import IMG_EXTENSIONS
    from ultralytics.data.utils import IMG_FORMATS

    from recipe_runner.data import CLASSIFY_IMAGE_SUFFIXES, DETECT_IMAGE_SUFFIXES

    assert DETECT_IMAGE_SUFFIXES == {f".{s}" for s in IMG_FORMATS}
    assert CLASSIFY_IMAGE_SUFFIXES == set(IMG_EXTENSIONS)


def test_files_beside_the_data_yaml_do_not_change_the_key(detect_data: Path):
    key = _key(detect_data)
    _write(detect_data.parent / "mlflow.db", b"SQLite format 3\0")
    _write(detect_data.parent / "notes.txt", "my notes")
    (detect_data.parent / "mlruns").mkdir()
    root = Path(detect_data.read_text().split("\n")[0].split(": ")[1])
    _write(root / "labels" / "train.cache", b"ultralytics label cache")  # Ultralytics writes this itself
    _write(root / "images" / "train" / ".DS_Store", b"x")  # hidden: Ultralytics' glob skips it
    _write(root / "README.md", "about the data")
    assert _key(detect_data) == key


@pytest.mark.parametrize("change", ["label", "image", "new_image", "removed_label", "yaml"])
def test_a_changed_image_or_label_under_path_changes_the_key(detect_data: Path, change: str):
    root = Path(detect_data.read_text().split("\n")[0].split(": ")[1])
    key = _key(detect_data)
    if change == "label":  # same size, same mtime: only the content tells
        label = root / "labels" / "val" / "1.txt"
        _write(label, label.read_text().replace("0 0.5", "1 0.5"))
    elif change == "image":
        _write(root / "images" / "train" / "2.png", "png-train-X")
    elif change == "new_image":
        _write(root / "images" / "train" / "sub" / "9.jpg", "another")
    elif change == "removed_label":
        (root / "labels" / "train" / "0.txt").unlink()
    else:
        detect_data.write_text(detect_data.read_text().replace("[a, b]", "[a, c]"))
    assert _key(detect_data) != key


def test_touching_files_keeps_the_key_and_a_rerun_reads_no_file(detect_data: Path):
    from recipe_runner.data import cache_root
    from recipe_runner.data._fingerprint import fingerprint_path

    key, count, read = fingerprint_path(detect_data, cache_root())
    assert count == 7 and read == 12  # the yaml + 6 images; 6 images and 6 labels hashed
    assert fingerprint_path(detect_data, cache_root()) == (key, 7, 0)  # the manifest answered
    root = Path(detect_data.read_text().split("\n")[0].split(": ")[1])
    os.utime(root / "images" / "val" / "0.png")  # same content, new mtime: read again, same key
    assert fingerprint_path(detect_data, cache_root()) == (key, 7, 1)


def test_txt_lists_count_their_listed_images(workspace: Path, detect_data: Path):
    root = Path(detect_data.read_text().split("\n")[0].split(": ")[1])
    _write(root / "train.txt", "./images/train/0.png\n./images/train/1.png\n")
    detect_data.write_text(detect_data.read_text().replace("train: images/train", "train: train.txt"))
    key = _key(detect_data)
    _write(root / "images" / "train" / "2.png", "not listed: not read")
    assert _key(detect_data) == key
    _write(root / "labels" / "train" / "1.txt", "1 0.1 0.1 0.1 0.1\n")
    assert _key(detect_data) != key


def test_image_folder_counts_class_images_only(workspace: Path):
    root = workspace / "cls"
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            _write(root / split / c / "0.png", f"{split}{c}")
    key = _key(root)
    _write(root / "notes.txt", "n")
    _write(root / "train" / ".ipynb_checkpoints" / "x.png", "hidden folder: not a class")
    _write(root / "train" / "cat" / "readme.md", "not an image")
    _write(workspace / "mlflow.db", b"x")
    assert _key(root) == key
    _write(root / "val" / "dog" / "0.png", "changed")
    assert _key(root) != key


RECIPE = """\
version: 1
name: fp-yolo
seed: 0
model: yolov8n.yaml
data: data.yaml
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


def test_a_recipe_beside_its_sqlite_store_reuses_every_stage(workspace: Path):
    """The store grows beside the data.yaml on every run; it must not change a cache key."""
    from recipe_runner.data import resolve_data

    builtin = Path(resolve_data("builtin:shapes?train=16&val=8&imgsz=64", "detect").path).parent
    shutil.copytree(builtin / "images", workspace / "images")
    shutil.copytree(builtin / "labels", workspace / "labels")
    (workspace / "data.yaml").write_text(
        "path: .\ntrain: images/train\nval: images/val\nnames: [circle, square, triangle]\n"
    )
    (workspace / "recipe.yaml").write_text(RECIPE)
    first = cli("run", "recipe.yaml")
    assert first.exit_code == 0, first.output
    assert (workspace / "mlflow.db").exists()
    second = cli("run", "recipe.yaml")
    assert second.exit_code == 0, second.output
    assert "[reuse]  train" in second.output and "[reuse]  check" in second.output
    assert "[run]" not in second.output
