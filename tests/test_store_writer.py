"""What a writer of a shared tracking store can do to a reader: point a finished run's tags at a file of its own.

The sha256 tag is the writer's too, so it proves nothing about origin. A reader must still run no code: the file
a runtime sees is named by the runner from the stage type (Ultralytics unpickles anything named *.pt), and an
artifact path that could leave the download folder is refused before MLflow joins it to a local path.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import torch
from conftest import TINY_DATA, cli, local_uri, stage_runs, write_recipe
from mlflow.tracking import MlflowClient

from recipe_runner import persistence as T
from recipe_runner.persistence import sha256_of

RECIPE = f"""\
version: 1
name: store-writer
seed: 0
model: yolov8n.yaml
data: {TINY_DATA}
defaults:
  imgsz: 64
  batch: 8
stages:
  train:
    type: train
    epochs: 1
  onnx:
    type: export
  check:
    type: evaluate
"""


class _Payload:
    """Unpickling this creates `marker`: proof that a loader ran the file's code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _tamper(client: MlflowClient, run_id: str, file: Path, artifact: str) -> None:
    """What a store writer does: upload its own file to a finished export run and point the tags at it."""
    client.log_artifact(run_id, str(file), artifact.rsplit("/", 1)[0] if "/" in artifact else None)
    client.set_tag(run_id, T.OUTPUT_ARTIFACT, artifact)
    client.set_tag(run_id, T.OUTPUT_SHA, sha256_of(file))


def test_a_pickle_behind_a_yolo_export_runs_no_code_on_a_reader(workspace: Path):
    recipe = workspace / "recipe.yaml"
    recipe.write_text(RECIPE)
    assert cli("run", recipe).exit_code == 0
    uri = local_uri(workspace)
    client = MlflowClient(uri)
    onnx = next(r for r in stage_runs(uri) if r.data.tags[T.NODE_ID] == "onnx")
    marker = workspace / "PWNED"
    crafted = workspace / "crafted" / "m.pt"
    crafted.parent.mkdir()
    torch.save(_Payload(marker), crafted)

    _tamper(client, onnx.info.run_id, crafted, "output/m.pt")
    result = cli("run", recipe, "--force", "check")
    assert result.exit_code == 1, result.output
    assert not marker.exists(), "a file from the store was unpickled"
    assert "records its output as 'output/m.pt'" in result.output and "output/<name>.onnx" in result.output

    # the right suffix on a pickle: the runner names the copy model.onnx, which ONNX Runtime refuses to parse
    disguised = crafted.with_name("m_openvino_model.onnx")
    crafted.rename(disguised)
    _tamper(client, onnx.info.run_id, disguised, "output/m_openvino_model.onnx")
    result = cli("run", recipe, "--force", "check")
    assert result.exit_code == 1, result.output
    assert not marker.exists(), "a file from the store was unpickled"

    # a path that leaves the download folder is refused before anything is fetched
    client.set_tag(onnx.info.run_id, T.OUTPUT_ARTIFACT, "output/../../../../escaped.onnx")
    result = cli("run", recipe, "--force", "check")
    assert result.exit_code == 1 and "refusing to fetch it" in result.output, result.output


@pytest.mark.parametrize(
    "path", ["../x.onnx", "/etc/passwd", "output/../../x", "output//x", "output\\..\\x", "c:x", ""]
)
def test_artifact_paths_that_could_leave_the_download_folder_are_refused(path: str, tmp_path: Path):
    tracker = T.Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "x")
    with pytest.raises(T.UnsafeArtifactPath):
        tracker.download("0" * 32, path, tmp_path / "dest")
    assert not (tmp_path / "dest").exists() and tracker._client is None  # refused before the store is asked


def test_latencies_reused_from_another_host_say_so(workspace: Path):
    """Latency is a property of a machine: a stage reused from a run another host measured is flagged in the
    console, in the reused run's tags, and in `recipe compare`'s host column."""

    recipe = write_recipe(workspace, "  train: {type: train, epochs: 1}")
    assert cli("run", recipe).exit_code == 0
    uri = local_uri(workspace)
    (train,) = stage_runs(uri)
    MlflowClient(uri).set_tag(train.info.run_id, T.LEASE_HOST, "other-host")
    again = cli("run", recipe)
    assert again.exit_code == 0 and "[reuse]  train" in again.output
    assert "latency measured on other-host, not here" in again.output
    (reused,) = stage_runs(uri)
    assert reused.data.tags[T.MEASURED_ON] == "other-host"
    table = cli("compare", recipe, "--all-runs", "--format", "csv")
    hosts = [row["host"] for row in csv.DictReader(io.StringIO(table.stdout))]
    assert hosts == ["other-host", "other-host"]  # the original run and the reuse: both measured there


@pytest.mark.parametrize(
    "text",
    ["[]", '{"model": "x"}', "[" * 100_000 + "]" * 100_000, '{"stages": {"a": 1}}', '{"overrides": [1]}', "not json"],
)
def test_a_stored_lock_that_is_not_a_lock_is_refused_by_reproduce(text: str, tmp_path: Path):
    from recipe_runner.reproduce import ReproduceError, _lock_of

    (tmp_path / "recipe.lock.json").write_text(text)
    with pytest.raises(ReproduceError, match="recipe.lock.json is not"):
        _lock_of(tmp_path / "recipe.lock.json", "0" * 32)
