"""A pickle written before models/ became a package per family still loads.

Ultralytics pickles the whole module tree into its trainer checkpoints (last.pt/best.pt hold the `ema` model), and a
pickle names each class by its module path. tests/data/pre_move_split_c2f.pt was written with the code before the
move (SplitC2f then lived in recipe_runner/models/_yolo_blocks.py), as Ultralytics' trainer writes it: yolov8n.yaml
at width 1/16 with nc=1, every C2f swapped for SplitC2f, the EMA in fp16, plus a seeded input and the fp32 output
it gave then. The fixture is trusted test data, so it is unpickled here (the runner itself never unpickles a
downloaded file).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

FIXTURE = Path(__file__).parent / "data" / "pre_move_split_c2f.pt"
# what the fixture was when this project wrote it: it is unpickled below, so it is checked against this first
FIXTURE_SHA256 = "ddf5911bfce39affad7b536a549ebc26ea17c4cc7005d42f18db9cfb9d62116e"


def _verified_fixture() -> Path:
    from recipe_runner.persistence.checkpoints import sha256_of

    assert sha256_of(FIXTURE) == FIXTURE_SHA256, "tests/data/pre_move_split_c2f.pt is not the file this project wrote"
    return FIXTURE


def test_the_fixture_names_the_old_module_path():
    archive = zipfile.ZipFile(FIXTURE)
    pickle_bytes = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert b"recipe_runner.models._yolo_blocks" in pickle_bytes
    assert b"recipe_runner.models.yolo" not in pickle_bytes


def test_a_trainer_checkpoint_written_before_the_move_loads_and_computes_the_same():
    from recipe_runner.models.yolo import SplitC2f

    checkpoint = torch.load(_verified_fixture(), map_location="cpu", weights_only=False)
    model = checkpoint["ema"].float().eval()
    blocks = [m for m in model.modules() if type(m).__name__ == "SplitC2f"]
    assert blocks and all(isinstance(m, SplitC2f) for m in blocks)  # the old path resolves to today's class
    expected = checkpoint["recipe_runner_test"]
    with torch.no_grad():
        out = model(expected["input"])[0]
    torch.testing.assert_close(out, expected["output"])


def test_ultralytics_own_loader_reads_it(monkeypatch):
    """What a user's `YOLO('best.pt')` does; it would try to pip-install a module it cannot import."""
    from recipe_runner.models.yolo.environment import ultralytics_ready

    ultralytics_ready()
    from ultralytics.nn import tasks

    monkeypatch.setattr(tasks, "check_requirements", lambda *a, **k: pytest.fail(f"Ultralytics wanted {a}"))
    model, _ = tasks.load_checkpoint(str(_verified_fixture()))
    assert any(type(m).__name__ == "SplitC2f" for m in model.modules())
