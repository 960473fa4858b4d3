"""Bring your own YOLO model: a best.pt from the user's own Ultralytics training starts a recipe whose first stage
is `prune` (the root stage's parent is the model as given), offline, with the user's data.yaml."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import cli, local_uri, stage_runs

from recipe_runner import persistence as T


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every non-loopback connection or name lookup is refused and recorded."""
    attempts: list[str] = []
    connect, lookup = socket.socket.connect, socket.getaddrinfo

    def local(host) -> bool:
        return host is None or (
            isinstance(host, str) and (host.startswith(("127.", "/")) or host in ("localhost", "::1"))
        )

    def guarded_connect(self, address):
        if self.family == socket.AF_UNIX or local(address[0] if isinstance(address, tuple) else address):
            return connect(self, address)
        attempts.append(repr(address))
        raise OSError("network blocked by test")

    def guarded_lookup(host, *args, **kwargs):
        if local(host):
            return lookup(host, *args, **kwargs)
        attempts.append(f"dns:{host}")
        raise socket.gaierror("network blocked by test")

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_lookup)
    return attempts


def _ultralytics_best_pt(data_yaml: str, folder: Path) -> Path:
    """What a user has: Ultralytics' own training (not the runner's), tiny: 1 epoch at 64 px."""
    from recipe_runner.models.yolo.environment import ultralytics_ready

    ultralytics_ready()  # offline settings, the font Ultralytics' dataset check wants, integrations off
    from ultralytics import YOLO

    YOLO("yolov8n.yaml").train(
        data=data_yaml,
        imgsz=64,
        epochs=1,
        batch=8,
        workers=0,
        device="cpu",
        plots=False,
        project=str(folder),
        name="t",
        exist_ok=True,
        verbose=False,
        amp=False,
        seed=0,
    )
    best = folder / "t" / "weights" / "best.pt"
    assert best.is_file()
    return best


def test_a_users_best_pt_is_pruned_by_a_recipe_that_starts_with_prune(workspace: Path, tiny_data, no_network):
    from mlflow.tracking import MlflowClient

    from recipe_runner.models.yolo.environment import resolved_data_yaml

    data_yaml = resolved_data_yaml(tiny_data)  # an ordinary Ultralytics data.yaml with an absolute path
    best = _ultralytics_best_pt(data_yaml, workspace / "runs")
    # what the user's own Ultralytics training reached for is not the runner's doing (seen once in CI: a font
    # download from github.com); from here on every attempt is the runner's
    no_network.clear()
    recipe = workspace / "byo.yaml"
    recipe.write_text(
        textwrap.dedent(f"""\
        version: 1
        name: byo-yolo
        model: {best}
        data: {data_yaml}
        defaults: {{imgsz: 64, batch: 8}}
        stages:
          prune: {{type: prune, method: depgraph, ratio: 0.3}}
          onnx: {{type: export, format: onnx}}
        """)
    )
    assert cli("validate", recipe).exit_code == 0
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    runs = {r.data.tags["recipe_runner.node_id"]: r for r in stage_runs(local_uri(workspace))}
    assert list(runs) == ["prune", "onnx"]
    assert all(r.info.status == "FINISHED" for r in runs.values())
    client = MlflowClient(local_uri(workspace))
    before = [m.value for m in client.get_metric_history(runs["prune"].info.run_id, "step/macs") if m.step == 0]
    assert before and runs["prune"].data.metrics["macs"] < 0.9 * before[0]
    # the prune stage started from the user's trained weights, not a fresh network: the Detect head (never pruned,
    # no fine-tuning between steps) still holds best.pt's last box convolution
    from ultralytics.nn.tasks import load_checkpoint as ultralytics_load

    from recipe_runner.persistence import load_checkpoint

    path = client.download_artifacts(runs["prune"].info.run_id, "checkpoint/model.pt", str(workspace / "dl"))
    pruned = load_checkpoint(Path(path), runs["prune"].data.tags[T.CHECKPOINT_SHA])["model"]["state_dict"]
    trained = ultralytics_load(str(best))[0].float().state_dict()
    key = next(k for k in trained if k.endswith("cv2.0.2.weight"))
    assert torch.equal(pruned[key], trained[key])
    assert no_network == []
    # the .pt is keyed by its content: another file with other weights is another model
    again = cli("run", recipe)
    assert again.exit_code == 0 and again.output.count("[reuse]") == 2, again.output
