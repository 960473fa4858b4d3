"""`recipe compare` on a real MLflow store: a two-branch sweep recipe run twice (the second run reuses)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from conftest import cli, local_uri, stage_runs, write_recipe
from mlflow.tracking import MlflowClient

from recipe_runner import compare as C
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
"""
NODES = [
    "train",
    "prune[prune.ratio=0.3]",
    "prune[prune.ratio=0.5]",
    "finetune[prune.ratio=0.3]",
    "finetune[prune.ratio=0.5]",
]


def test_compare_sweep_runs_side_by_side(workspace: Path):
    recipe = write_recipe(workspace, SWEEP, name="cmp")
    assert cli("run", recipe).exit_code == 0
    first = stage_runs(local_uri(workspace))[0].data.tags["mlflow.parentRunId"]
    assert cli("run", recipe, "--force", "finetune").exit_code == 0  # train and prune reused, finetune ran again
    second = stage_runs(local_uri(workspace))[0].data.tags["mlflow.parentRunId"]

    result = cli("compare", recipe, "--all-runs", "--format", "csv", "--plot", "out/cmp.png", "--metric", "sparsity")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    header = result.stdout.splitlines()[0].split(",")
    assert header == C.HEAD + ["sweep.prune.ratio"] + C.TAIL + ["sparsity"]
    by_run: dict[str, list[dict]] = {}
    for row in rows:
        by_run.setdefault(row["recipe_run"], []).append(row)
    assert set(by_run) == {first, second}
    for run_rows in by_run.values():
        assert sorted(r["node_id"] for r in run_rows) == sorted(NODES)  # every stage once per run
    for row in rows:
        assert row["metric"] == "top1" and 0 <= float(row["value"]) <= 1 and float(row["macs"]) > 0
        assert float(row["seconds"]) > 0
        expected = "" if row["node_id"] == "train" else row["node_id"].split("=")[1].rstrip("]")
        assert row["sweep.prune.ratio"] == expected  # also on reused runs, which log no sweep params themselves
    actions = {(r["recipe_run"], r["node_id"]): r["action"] for r in rows}
    assert actions[(second, "train")] == "reused" and actions[(second, "finetune[prune.ratio=0.5]")] == "ran"
    assert actions[(first, "train")] == "ran"
    # a reused stage's seconds are its source run's: the same number in both recipe runs
    seconds = {(r["recipe_run"], r["node_id"]): r["seconds"] for r in rows}
    assert seconds[(first, "train")] == seconds[(second, "train")]

    plot = workspace / "out" / "cmp.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = MlflowClient(local_uri(workspace))
    for run_id in (first, second):
        assert [a.path for a in client.list_artifacts(run_id, "compare")] == ["compare/cmp.png"]

    # json by run id (and runs:/ URI), newest run only by default for a recipe file
    as_json = cli("compare", f"runs:/{first}", "--format", "json", "--no-plot")
    assert as_json.exit_code == 0, as_json.output
    parsed = json.loads(as_json.stdout)
    assert [list(r) for r in parsed] == [header[:-1]] * len(NODES)  # no --metric: the fixed columns only
    assert [r["node_id"] for r in parsed] == NODES  # plan order
    newest = json.loads(cli("compare", recipe, "--format", "json", "--no-plot").stdout)
    assert {r["recipe_run"] for r in newest} == {second}

    markdown = cli("compare", "cmp", "--format", "markdown", "--no-plot")  # the experiment name
    assert markdown.exit_code == 0 and markdown.stdout.splitlines()[0] == "| " + " | ".join(header[:-1]) + " |"
    table = cli("compare", "--no-plot")  # no argument: the newest recipe run, as a rich table
    assert table.exit_code == 0 and "finetune[prune.ratio=0.5]" in table.stdout


def test_compare_unknown_run_or_experiment_exits_2(workspace: Path):
    recipe = write_recipe(workspace, "  train:\n    type: train\n    epochs: 1\n", name="known")
    assert cli("run", recipe).exit_code == 0
    for target in ["0123456789abcdef0123456789abcdef", "runs:/0123456789abcdef0123456789abcdef", "knwon"]:
        result = cli("compare", target, "--no-plot")
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "did you mean 'known'" in cli("compare", "knwon").stderr
    stage = stage_runs(local_uri(workspace))[0]
    assert stage.data.tags[T.ROLE] == "stage"
    # a stage run id stands for its recipe run
    assert cli("compare", stage.info.run_id, "--no-plot").exit_code == 0

    # a --metric no stage logged (a typo) is named, with the logged name it is close to; still exit 0
    typo = cli("compare", "known", "--no-plot", "--format", "csv", "--metric", "sparsty", "--metric", "sparsity")
    assert typo.exit_code == 0, typo.output
    assert "--metric 'sparsty' (did you mean 'sparsity'?)" in typo.stderr and "'sparsity':" not in typo.stderr


def test_pareto_front_keeps_what_nothing_beats():
    from recipe_runner.pareto import pareto_front

    points = [(1, 0.5), (2, 0.9), (2, 0.8), (3, 0.9), (0.5, 0.1), (1, 0.5)]
    # (3, 0.9) costs more for the same metric, (2, 0.8) is beaten at equal cost; equal points both stay
    assert pareto_front(points) == [4, 0, 5, 1]
