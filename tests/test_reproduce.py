"""`recipe reproduce` against a real `mlflow server`, from a second working directory."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TINY_CLS, cli, stage_runs, write_recipe
from mlflow.tracking import MlflowClient
from test_server import STAGES, mlflow_server  # noqa: F401  (the server fixture, started once for this module)

from recipe_runner import persistence as T

TRAINED = ("train", "finetune")


def _reproductions(client: MlflowClient, original: str) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, f"tags.`{T.REPRODUCTION_OF}` = '{original}' and tags.`{T.ROLE}` = 'recipe'")


def _copy_run(
    client: MlflowClient,
    original: str,
    edit_lock: Callable[[dict], None] = lambda lock: None,
    shift: dict[str, float] | None = None,
    recipe_text: str | None = None,
) -> str:
    """A new recipe run holding the original's recipe (or `recipe_text`, with a matching sha256) and an edited
    copy of its lock, plus copies of its stage runs' metrics (top1 moved by `shift[node id]`)."""
    run = client.get_run(original)
    folder = Path(client.download_artifacts(original, "recipe", str(Path.cwd() / f"dl-{original[:8]}")))
    recipe_file = next(folder.glob("*.yaml"))
    text = recipe_text if recipe_text is not None else recipe_file.read_text()
    lock = json.loads((folder / "recipe.lock.json").read_text())
    sha = hashlib.sha256(text.encode()).hexdigest()
    lock["recipe_sha256"] = sha
    edit_lock(lock)
    tags = {k: v for k, v in run.data.tags.items() if k.startswith(T.PREFIX)}
    copy = client.create_run(run.info.experiment_id, tags={**tags, T.RECIPE_SHA: sha}).info.run_id
    client.log_text(copy, text, f"recipe/{recipe_file.name}")
    client.log_text(copy, json.dumps(lock), "recipe/recipe.lock.json")
    for child in client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{original}'"):
        node = child.data.tags[T.NODE_ID]
        # not role 'stage': a copy without artifacts must never be found by a cache lookup
        twin_tags = {**child.data.tags, "mlflow.parentRunId": copy, T.ROLE: "test-copy"}
        twin = client.create_run(run.info.experiment_id, tags=twin_tags).info.run_id
        for key, value in child.data.metrics.items():
            client.log_metric(twin, key, value + ((shift or {}).get(node, 0.0) if key == "top1" else 0.0))
        client.set_terminated(twin)
    client.set_terminated(copy)
    return copy


def test_reproduce_from_second_directory(
    mlflow_server: str,
    workspace: Path,
    tmp_path_factory,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
):
    recipe = write_recipe(workspace, STAGES, name="repro")
    assert cli("run", recipe, "--tracking-uri", mlflow_server).exit_code == 0
    originals = {r.data.tags[T.NODE_ID]: r for r in stage_runs(mlflow_server)}
    original = originals["train"].data.tags["mlflow.parentRunId"]
    client = MlflowClient(mlflow_server)

    elsewhere = tmp_path_factory.mktemp("reproducer")  # another person's folder: no recipe, no mlflow.db
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("RECIPE_RUNNER_CACHE", str(elsewhere / "cache"))  # nor the dataset: builtin data is regenerated
    result = cli("reproduce", original, "--tracking-uri", mlflow_server, "--workdir", "kept")
    assert result.exit_code == 0, result.output
    assert "package versions: as recorded" in result.output and "reproduced within 0.02" in result.output
    assert not (elsewhere / "mlflow.db").exists()
    assert list((elsewhere / "cache" / "datasets").glob("shapes-cls-*"))
    [parent] = _reproductions(client, original)
    assert parent.info.status == "FINISHED"
    children = {
        r.data.tags[T.NODE_ID]: r
        for r in client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    }
    assert set(children) == set(originals)
    for node, run in children.items():
        assert run.data.tags[T.ROLE] == "stage" and run.data.tags[T.REPRODUCTION_OF] == original  # ran, not reused
        assert run.data.tags[T.CACHE_KEY] != originals[node].data.tags[T.CACHE_KEY]  # salted: never shared
        if node in TRAINED:
            assert run.data.metrics["epochs_trained"] > 0
    report = json.loads((elsewhere / "kept" / "reproduction.json").read_text())
    assert report["ok"] and report["reproduction_run"] == parent.info.run_id
    assert {r["node_id"] for r in report["rows"] if r["judged"]} == set(originals)
    assert (elsewhere / "kept" / "recipe.lock.json").is_file() and (elsewhere / "kept" / "recipe.yaml").is_file()

    # a normal run of the recipe still reuses the original stages, never the reproduction's
    again = cli("run", recipe, "--tracking-uri", mlflow_server)
    assert again.exit_code == 0
    reused = {r.data.tags[T.NODE_ID]: r.data.tags.get(T.REUSED_FROM) for r in stage_runs(mlflow_server)}
    assert reused == {node: run.info.run_id for node, run in originals.items()}

    # a recorded metric off by 0.5 and a planted version difference: reported, exit 1
    planted = _copy_run(client, original, lambda lock: lock["versions"].update(torch="0.0.1-planted"), {"train": 0.5})
    result = cli("reproduce", f"runs:/{planted}", "--tracking-uri", mlflow_server)
    assert result.exit_code == 1, result.output
    assert "0.0.1-planted" in result.output and "NOT reproduced within 0.02: train" in result.output
    assert len(_reproductions(client, planted)) == 1


def test_reproduce_refuses_what_it_cannot_reproduce(
    mlflow_server: str,
    workspace: Path,
    tmp_path_factory,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
):
    recipe = write_recipe(workspace, "  train:\n    type: train\n    epochs: 1\n", name="refuse")
    assert cli("run", recipe, "--tracking-uri", mlflow_server).exit_code == 0
    original = stage_runs(mlflow_server)[0].data.tags["mlflow.parentRunId"]
    client = MlflowClient(mlflow_server)
    monkeypatch.chdir(tmp_path_factory.mktemp("reproducer"))

    def refused(run_id: str, *expected: str) -> None:
        result = cli("reproduce", run_id, "--tracking-uri", mlflow_server)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("error: ") or result.stderr.count("\n") == 1, result.stderr
        for text in expected:
            assert text in result.stderr, result.stderr
        assert not _reproductions(client, run_id)  # refused before anything ran

    refused("0123456789abcdef0123456789abcdef", "no run '0123456789abcdef0123456789abcdef'")
    tampered = _copy_run(client, original, lambda lock: lock.update(recipe_sha256="0" * 64))
    refused(tampered, "does not match", "refusing")
    refused(
        _copy_run(
            client, original, lambda lock: lock.update(model={"family": "torchvision", "source": "nets/mine.pt"})
        ),
        "model file 'nets/mine.pt' is missing",
    )
    # a user dataset: missing here, then present but not the same files as recorded
    missing = TINY_CLS.format(name="refuse", stages="  train:\n    type: train\n    epochs: 1\n").replace(
        "builtin:shapes-cls?train=64&val=32&imgsz=32", "mydata"
    )

    def user_data(lock: dict) -> None:
        lock["data"]["spec"] = "mydata"

    refused(_copy_run(client, original, user_data, recipe_text=missing), "dataset path 'mydata' does not exist here")
    builtin = next((Path(workspace.parent / "rr-cache") / "datasets").glob("shapes-cls-*"))
    shutil.copytree(builtin, Path.cwd() / "mydata")
    refused(
        _copy_run(client, original, user_data, recipe_text=missing),
        "data 'mydata'",
        "is not the data of the original run",
    )
