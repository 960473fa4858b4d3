"""--keep-going on the default (sequential) executor, and the executor's command-line errors. Real MLflow (sqlite), real
stages; the failure is genuine: a parent checkpoint corrupted in the store, which its child refuses (sha256)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import cli, local_uri, stage_runs, write_recipe
from mlflow.tracking import MlflowClient

from recipe_runner import persistence as T

SWEEP = """\
  train:
    type: train
    epochs: 1
  prune:
    type: prune
    method: depgraph
    ratio: {sweep: [0.3, 0.5]}
  finetune:
    type: finetune
    epochs: 1
  check:
    type: evaluate
"""


def by_node(runs) -> dict:
    return {r.data.tags[T.NODE_ID]: r for r in runs}


def corrupt_checkpoint(run) -> None:
    """Flip one byte of a finished run's checkpoint artifact: its recorded sha256 no longer matches."""
    artifact = Path(run.info.artifact_uri.replace("file://", "")) / T.CHECKPOINT_ARTIFACT
    data = bytearray(artifact.read_bytes())
    data[-10] ^= 0xFF
    artifact.write_bytes(bytes(data))


def test_keep_going_finishes_the_other_branch_and_skips_the_failed_ones_descendants(workspace: Path):
    recipe = write_recipe(workspace, SWEEP, name="kg")
    assert cli("run", recipe, "--only", "prune").exit_code == 0
    uri = local_uri(workspace)
    corrupt_checkpoint(by_node(stage_runs(uri))["prune[prune.ratio=0.5]"])

    # default policy: the first failure stops the run; check[0.3] comes after finetune[0.5] in plan order
    stop = cli("run", recipe)
    assert stop.exit_code == 1 and "finetune[prune.ratio=0.5]' failed: CheckpointError" in stop.output
    stopped = by_node(stage_runs(uri))
    assert "check[prune.ratio=0.3]" not in stopped and "check[prune.ratio=0.5]" not in stopped

    going = cli("run", recipe, "--keep-going")
    assert going.exit_code == 1, going.output
    runs = by_node(stage_runs(uri))
    # the healthy branch finished (finetune[0.3] reused from the stopped run, its check ran now)
    assert runs["check[prune.ratio=0.3]"].info.status == "FINISHED"
    assert runs["check[prune.ratio=0.3]"].data.tags[T.ROLE] == "stage"
    assert runs["finetune[prune.ratio=0.3]"].info.status == "FINISHED"
    # the failed stage has a FAILED run that says why; its descendant started no run at all
    failed = runs["finetune[prune.ratio=0.5]"]
    assert failed.info.status == "FAILED" and "sha256" in failed.data.tags[T.ERROR]
    assert "check[prune.ratio=0.5]" not in runs
    client = MlflowClient(uri)
    parent = client.get_run(failed.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED"
    note = parent.data.tags[T.NOTE]
    assert "| failed |" in note and "| skipped |" in note
    # the summary names what failed and what was skipped
    assert "error: stage 'finetune[prune.ratio=0.5]' failed: CheckpointError" in going.output
    assert "skipped (an ancestor failed): check[prune.ratio=0.5]" in going.output
    summary = going.output[going.output.index("kg: FAILED") :]
    assert "│ skipped " in summary and "│ failed " in summary

    # the failed stage was the last to run and only its descendant is left: skipped, and the run ends
    last = cli("run", recipe, "--keep-going", "--only", "check[prune.ratio=0.5]")
    assert last.exit_code == 1, last.output
    assert "skipped (an ancestor failed): check[prune.ratio=0.5]" in last.output


def test_ray_executor_without_ray_is_one_clear_line_and_starts_nothing(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed: `import ray` fails
    recipe = write_recipe(workspace, SWEEP)
    result = cli("run", recipe, "--executor", "ray")
    assert result.exit_code == 2
    assert result.stderr.strip() == 'error: --executor ray needs Ray: pip install "recipe-runner[ray]"'
    assert not (workspace / "mlflow.db").exists()


def test_unknown_executor_and_address_without_ray_are_usage_errors(workspace: Path):
    recipe = write_recipe(workspace, SWEEP)
    unknown = cli("run", recipe, "--executor", "dask")
    assert unknown.exit_code == 2 and "unknown executor 'dask' (choose from: sequential, ray)" in unknown.stderr
    address = cli("run", recipe, "--address", "auto")
    assert address.exit_code == 2 and "--address needs --executor ray" in address.stderr
    assert not (workspace / "mlflow.db").exists()


def test_resources_key_sets_what_a_ray_task_reserves_and_stays_out_of_the_cache_key(workspace: Path):
    from recipe_runner.executors.ray_executor import resources
    from recipe_runner.graph import compile_graph
    from recipe_runner.recipe import load_recipe

    recipe = write_recipe(workspace, SWEEP)
    plain = compile_graph(load_recipe(recipe, []))
    overrides = ["stages.finetune.resources={cpus: 2, gpus: 0.5}", "stages.train.device=0"]
    sized = compile_graph(load_recipe(recipe, overrides))
    assert {n: node.cache_key for n, node in sized.nodes.items()} == {
        n: node.cache_key for n, node in plain.nodes.items()
    }
    assert resources(plain.nodes["train"].config) == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert resources(sized.nodes["train"].config) == {"num_cpus": 1.0, "num_gpus": 1.0}  # a GPU stage: one GPU
    assert resources(sized.nodes["finetune[prune.ratio=0.3]"].config) == {"num_cpus": 2.0, "num_gpus": 0.5}
    bad = cli("validate", recipe, "--set", "stages.finetune.resources={cpus: 0}")
    assert bad.exit_code == 2 and "resources.cpus" in bad.output
