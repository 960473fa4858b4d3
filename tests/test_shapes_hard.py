"""builtin:shapes-hard: deterministic, its own fingerprint, valid YOLO labels, classes told by shape and colour."""

from __future__ import annotations

from pathlib import Path

import pytest

from recipe_runner.data import BUILTINS, DataError, fingerprint_data, resolve_data

SMALL = {"train": 12, "val": 4, "imgsz": 96, "classes": 8, "objects": 8, "distractors": 3, "seed": 0}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_generations_are_identical_and_the_seed_matters(tmp_path: Path):
    generate = BUILTINS.get("shapes-hard").generate
    for name, options in (("a", SMALL), ("b", SMALL), ("c", {**SMALL, "seed": 1})):
        (tmp_path / name).mkdir()
        generate(tmp_path / name, options)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert len(a) == 2 * (12 + 4) + 1 and a == b
    assert {k for k in a if k.endswith(".png") and a[k] != c[k]}, "another seed must draw other images"


def test_its_own_fingerprint():
    hard = fingerprint_data("builtin:shapes-hard")
    assert hard != fingerprint_data("builtin:shapes")
    assert hard != fingerprint_data("builtin:shapes-hard?seed=1")
    assert hard == fingerprint_data("builtin:shapes-hard?classes=8")  # the default, written out


def test_labels_are_valid_yolo_boxes_of_small_to_large_objects(workspace: Path):
    data = resolve_data("builtin:shapes-hard?train=24&val=8&imgsz=96", "detect")
    assert data.names == [
        "red-circle",
        "blue-circle",
        "red-square",
        "blue-square",
        "red-triangle",
        "blue-triangle",
        "red-cross",
        "blue-cross",
    ]
    assert "names:\n  0: red-circle\n" in data.path.read_text()
    labels = sorted((data.path.parent / "labels").rglob("*.txt"))
    assert len(labels) == 32
    rows = [[float(v) for v in line.split()] for p in labels for line in p.read_text().splitlines()]
    assert all(len(r) == 5 and r[0] == int(r[0]) and 0 <= r[0] < 8 for r in rows)
    for _, x, y, w, h in rows:
        assert 0 < w <= 1 and 0 < h <= 1 and 0 <= x - w / 2 and x + w / 2 <= 1 and 0 <= y - h / 2 and y + h / 2 <= 1
    assert {int(r[0]) for r in rows} == set(range(8))
    widths = [r[3] for r in rows]
    assert min(widths) < 0.1 and max(widths) > 0.3  # small to large
    assert len(rows) > 2 * len(labels)  # several objects per image


def test_class_count_is_an_option_within_bounds(workspace: Path):
    assert len(resolve_data("builtin:shapes-hard?train=2&val=1&imgsz=64&classes=12", "detect").names) == 12
    with pytest.raises(DataError, match="classes must be between 2 and 12"):
        resolve_data("builtin:shapes-hard?train=2&val=1&classes=13", "detect")
    with pytest.raises(DataError, match="builtin:shapes-hard is a detect dataset"):
        resolve_data("builtin:shapes-hard?train=2&val=1", "classify")
