"""Recipe-level search (recipe_runner/search): real Optuna, torch-pruning and MLflow on a tiny classifier.

One workspace carries the end-to-end story (each step reuses the trials before it, so the whole file stays fast):
4 trials, a re-run that runs nothing, trials: 6 that runs 2 more, a constraint no trial meets, a metric never
logged, and NSGA-II with two objectives.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import cli, local_uri, stage_runs
from mlflow.tracking import MlflowClient

from recipe_runner.engine import Engine
from recipe_runner.planner import RunOptions, prepare
from recipe_runner.recipe import parse_recipe
from recipe_runner.search import SearchFailed
from recipe_runner.search.study import Study, TrialRecord
from recipe_runner.stages import STAGES

RECIPE = """\
version: 1
name: tiny-search
seed: 0
model: lenet
data: builtin:shapes-cls?train=64&val=32&imgsz=32
defaults:
  imgsz: 32
  batch: 16
search:
  trials: 4
  seed: 3
  maximize: prune.top1
  constraints:
    - prune.macs <= 4e6
stages:
  train:
    type: train
    epochs: 1
    lr: 0.05
  prune:
    type: prune
    method: depgraph
    ratio: {search: {low: 0.2, high: 0.7}}
"""


def _trials(runs: list, stage: str = "prune") -> list:
    return [r for r in runs if r.data.tags.get("recipe_runner.stage_id") == stage]


def _parent(uri: str):
    client = MlflowClient(uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "tags.`recipe_runner.role` = 'recipe'",
        order_by=["attributes.start_time DESC"],
    )
    return client, runs[0]


def _table(client: MlflowClient, run_id: str) -> list[dict]:
    path = client.download_artifacts(run_id, "search/trials.json")
    data = json.loads(Path(path).read_text())
    return [dict(zip(data["columns"], row)) for row in data["data"]]


def test_search_runs_trials_as_cached_branches_and_records_the_best(workspace: Path):
    recipe = workspace / "recipe.yaml"
    recipe.write_text(RECIPE)
    uri = local_uri(workspace)

    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert "trial 4 of 4" in result.output and "best so far" in result.output
    runs = stage_runs(uri)
    prunes = _trials(runs)
    assert [r.data.tags["recipe_runner.node_id"] for r in prunes] == [f"prune[trial={k}]" for k in range(4)]
    assert len({r.data.tags["recipe_runner.cache_key"] for r in prunes}) == 4
    assert len(_trials(runs, "train")) == 1  # the stage above the search runs once, shared
    ratios = [float(r.data.params["sweep.prune.ratio"]) for r in prunes]
    assert all(0.2 <= x <= 0.7 for x in ratios) and len(set(ratios)) == 4
    assert [float(r.data.params["ratio"]) for r in prunes] == ratios  # the sampled value is the stage's config

    client, parent = _parent(uri)
    feasible = [r for r in prunes if r.data.metrics["macs"] <= 4e6]
    assert feasible, "the test's constraint must leave some trial feasible"
    top = max(feasible, key=lambda r: r.data.metrics["top1"])
    tags = parent.data.tags
    # ties on top1 are possible on 32 validation images: the recorded best must be one of the best
    assert prunes[int(tags["recipe_runner.best_trial"])].data.metrics["top1"] == top.data.metrics["top1"]
    best_runs = json.loads(tags["recipe_runner.best_trial_runs"])
    assert best_runs[f"prune[trial={tags['recipe_runner.best_trial']}]"] in {r.info.run_id for r in prunes}
    table = _table(client, parent.info.run_id)
    assert [row["trial"] for row in table] == [0, 1, 2, 3]
    assert [row["prune.ratio"] for row in table] == pytest.approx(ratios)
    assert [row["feasible"] for row in table] == [r.data.metrics["macs"] <= 4e6 for r in prunes]
    assert "search/search.png" in [a.path for a in client.list_artifacts(parent.info.run_id, "search")]

    # the same seed asks the same values: every trial is found by its cache key, nothing runs
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    again = stage_runs(uri)
    assert {r.data.tags["recipe_runner.action"] for r in again} == {"reuse"}
    assert [float(r.data.params["sweep.prune.ratio"]) for r in _trials(again)] == ratios

    plan = cli("plan", recipe, "--set", "search.trials=6")
    assert plan.exit_code == 0, plan.output
    assert "4 of 6 trials finished, 1 asked next" in plan.output

    result = cli("run", recipe, "--set", "search.trials=6")
    assert result.exit_code == 0, result.output
    six = _trials(stage_runs(uri))
    assert [r.data.tags["recipe_runner.action"] for r in six] == ["reuse"] * 4 + ["run"] * 2
    assert [float(r.data.params["sweep.prune.ratio"]) for r in six[:4]] == ratios

    # --force on a searched stage reaches every trial; --only on a shared stage runs no trial
    forced = cli("plan", recipe, "--set", "search.trials=6", "--force", "prune")
    assert forced.exit_code == 0 and "0 of 6 trials finished, 1 asked next" in forced.output, forced.output
    only = cli("run", recipe, "--only", "train")
    assert only.exit_code == 0 and "no trials run" in only.output, only.output

    # a constraint no trial meets: exit 1, a clear message, every trial kept (and reused: nothing trains)
    result = cli("run", recipe, "--set", 'search.constraints=["prune.macs <= 1"]')
    assert result.exit_code == 1
    assert "no feasible trial" in result.output
    client, parent = _parent(uri)
    assert parent.info.status == "FAILED" and "recipe_runner.best_trial" not in parent.data.tags
    kept = _trials(stage_runs(uri))
    assert len(kept) == 4 and {r.info.status for r in kept} == {"FINISHED"}
    assert [row["feasible"] for row in _table(client, parent.info.run_id)] == [False] * 4
    # called as an API (bench/search_deploy.py does), the failure still carries what every trial measured
    plan = prepare(recipe, RunOptions(overrides=['search.constraints=["prune.macs <= 1"]'], tracking_uri=uri))
    with pytest.raises(SearchFailed) as failed:
        Engine(plan, lambda description, total: lambda n: None).run()
    measured = {r.node_id: r.metrics["macs"] for r in failed.value.reports if r.node_id.startswith("prune[")}
    assert measured == {f"prune[trial={k}]": r.data.metrics["macs"] for k, r in enumerate(kept)}

    # a metric the stage never logs fails each trial, naming what it did log; the search still asks every trial
    result = cli("run", recipe, "--set", "search.maximize=prune.top5")
    assert result.exit_code == 1
    assert "logged no metric 'top5'" in result.output and "top1" in result.output
    assert result.output.count("FAILED: prune[trial=") == 4

    # a trial whose stage fails is told as failed and the search goes on to a feasible best
    prune = STAGES.get("prune")
    calls = []

    def fails_once(ctx, config):
        calls.append(config.ratio)
        if len(calls) == 1:
            raise RuntimeError("injected failure")
        return prune.run(ctx, config)

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(STAGES._entries, "prune", dataclasses.replace(prune, run=fails_once))
        result = cli("run", recipe, "--set", "search.seed=11", "--set", "search.trials=2")
    assert result.exit_code == 0, result.output
    assert "FAILED: stage 'prune[trial=0]' failed" in result.output and "injected failure" in result.output
    client, parent = _parent(uri)
    assert parent.info.status == "FINISHED" and parent.data.tags["recipe_runner.best_trial"] == "1"
    assert [row["state"] for row in _table(client, parent.info.run_id)] == ["FAIL", "COMPLETE"]

    # recipe compare: the stage rows carry the sampled values, and a table has one row per trial
    shown = cli("compare", recipe, "--no-plot")
    assert shown.exit_code == 0, shown.output
    assert "2 search trial(s) of tiny-search" in shown.output and "sweep.prune.ratio" in shown.output
    markdown = cli("compare", recipe, "--no-plot", "--format", "markdown").output
    trials_part = markdown.split("search trial(s) of tiny-search")[1]
    header, _, failed, complete = [line for line in trials_part.splitlines() if line.startswith("| ")]
    assert header.startswith("| trial | state | feasible | best | prune.ratio | prune.top1 |")
    assert failed.startswith("| 0 | FAIL |") and complete.startswith("| 1 | COMPLETE |")

    # NSGA-II, two objectives: the recorded front is exactly the non-dominated feasible trials
    result = cli("run", recipe, "--set", "search.sampler=nsga2", "--set", "search.minimize=prune.macs")
    assert result.exit_code == 0, result.output
    client, parent = _parent(uri)
    rows = _table(client, parent.info.run_id)
    points = {row["trial"]: (row["prune.top1"], row["prune.macs"]) for row in rows if row["feasible"]}

    def dominated(k: int) -> bool:
        top1, macs = points[k]
        return any(t >= top1 and m <= macs and (t > top1 or m < macs) for j, (t, m) in points.items() if j != k)

    front = {int(k) for k in parent.data.tags["recipe_runner.pareto_trials"].split(",")}
    assert front == {k for k in points if not dominated(k)} and front
    assert {row["trial"] for row in rows if row["best"]} == front


SPACE = """\
version: 1
name: replay
model: lenet
data: builtin:shapes-cls
search:
  trials: 16
  sampler: {sampler}
  parallel: {parallel}
  maximize: prune.top1
  constraints: ["prune.macs <= 0.5"]
stages:
  train: {{type: train}}
  prune:
    type: prune
    method: depgraph
    ratio: {{search: {{low: 0.1, high: 0.9, step: 0.05}}}}
    importance: {{search: [group-l2, lamp, random]}}
    round_to: {{search: {{low: 1, high: 16, step: 1}}}}
"""


def _replay(sampler: str, parallel: int) -> list[dict]:
    """Run a study the way the driver does (ask a batch, tell its results) on a made-up objective."""
    study = Study(parse_recipe(SPACE.format(sampler=sampler, parallel=parallel), "replay.yaml"))
    asked: list[dict] = []
    while len(asked) < study.total:
        batch = [study.ask() for _ in range(min(parallel, study.total - len(asked)))]
        for record in batch:
            ratio = record.params["prune.ratio"]
            study.judge(record, {"prune": {"top1": 1 - (ratio - 0.4) ** 2, "macs": ratio}}, {"prune": "prune"})
            study.tell(record)
            asked.append(record.params)
    return asked


@pytest.mark.parametrize("sampler,parallel", [("tpe", 1), ("tpe", 3), ("nsga2", 1), ("random", 2), ("grid", 1)])
def test_the_same_seed_replays_the_same_suggestions(sampler: str, parallel: int):
    """What a re-run relies on to find its finished trials by cache key; 16 trials take TPE past its 10 random
    start-up trials, so its model of the results is replayed too."""
    first, second = _replay(sampler, parallel), _replay(sampler, parallel)
    assert first == second
    assert len({json.dumps(p, sort_keys=True) for p in first}) > 10  # it did search, not repeat one point


def test_a_grid_runs_each_point_once_and_no_more_than_its_points():
    text = SPACE.format(sampler="grid", parallel=2).replace("{search: {low: 0.1, high: 0.9, step: 0.05}}", "0.5")
    study = Study(parse_recipe(text.replace("{search: {low: 1, high: 16, step: 1}}", "{search: [1, 8]}"), "grid.yaml"))
    assert study.total == 6  # 3 importances x 2 round_to, not the 16 trials asked
    seen = []
    for _ in range(study.total):
        record = study.ask()
        study.judge(record, {"prune": {"top1": 0.5, "macs": 0.1}}, {"prune": "prune"})
        study.tell(record)  # the last point too: Optuna's GridSampler would stop the study here (optimize() only)
        seen.append(tuple(record.params.values()))
    assert len(set(seen)) == 6


def test_a_failed_trial_is_told_as_failed():
    study = Study(parse_recipe(SPACE.format(sampler="tpe", parallel=1), "replay.yaml"))
    record = study.ask()
    study.judge(record, {"prune": {"top1": 0.5}}, {"prune": "prune"})
    assert record.state == "FAIL" and "logged no metric 'macs' (it logged: top1)" in record.error
    study.tell(record)
    assert study.study.trials[0].state.name == "FAIL"
    assert isinstance(study.ask(), TrialRecord)


BAD = [
    (
        "defaults:\n  imgsz: 32\n",
        "defaults:\n  imgsz: 32\n  lr: {search: [0.1, 0.01]}\n",
        "defaults.lr: a {search: ...} value in defaults",
    ),
    (
        "    - prune.macs <= 4e6",
        "    - prnue.macs <= 4e6",
        "search.constraints.0: no stage 'prnue' in the recipe; did you mean 'prune'?",
    ),
    ("    - prune.macs <= 4e6", "    - prune.macs < 4e6", "unknown operator '<' (use <= or >=)"),
    # located at the list item, not at the constraints: key
    (
        "    - prune.macs <= 4e6",
        "    - prune.macs <= 4e6\n    - prune.top1 => 0.5",
        ":15:7: search.constraints.1: 'prune.top1 => 0.5': unknown operator '=>'",
    ),
    (
        "    - prune.macs <= 4e6",
        "    - train.top1 >= 0.5",
        "search.constraints.0: 'train' is neither searched nor below a searched stage",
    ),
    (
        "    ratio: {search: {low: 0.2, high: 0.7}}\n",
        "    ratio: {search: {low: 0.2, high: 0.7}}\n    device: {search: [cpu, auto]}\n",
        "stages.prune.device: 'device' is not part of a stage's cache key: its search trials would share one key",
    ),
    (
        "    - prune.macs <= 4e6",
        "    - prune.top1 >= 0.9 * trian.top1",
        "search.constraints.0: no stage 'trian' in the recipe; did you mean 'train'?",
    ),
    ("    - prune.macs <= 4e6", "    - prune.top1 >= 0.9 x train.top1", "'0.9 x train.top1' is not a number"),
    ("maximize: prune.top1", "maximize: [prune.top1, top1]", "search.maximize.1: 'top1' is not <stage>.<metric>"),
    ("maximize: prune.top1", "maximize: [prune.top1, prune.top1]", "prune.top1 is listed twice as an objective"),
    (
        "maximize: prune.top1",
        "maximize: train.top1",
        "search.maximize: 'train' is neither searched nor below a searched stage",
    ),
    ("{low: 0.2, high: 0.7}", "{low: 0.7, high: 0.2}", "stages.prune.ratio.search: low 0.7 is above high 0.2"),
    ("{low: 0.2, high: 0.7}", "[]", "stages.prune.ratio: search: an empty choice list"),
    ("{low: 0.2, high: 0.7}", "{low: 0.2, high: 1.5}", "stages.prune.ratio: Input should be less than 1 (got 1.5)"),
    (
        "    epochs: 1\n",
        "    epochs: {sweep: [1, 2]}\n",
        "stages.train.epochs: a recipe with search: cannot also sweep",
    ),
]


@pytest.mark.parametrize("old,new,message", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_search_input_is_a_located_error_and_starts_nothing(workspace: Path, old: str, new: str, message: str):
    assert old in RECIPE
    recipe = workspace / "recipe.yaml"
    recipe.write_text(RECIPE.replace(old, new, 1))
    result = cli("run", recipe)
    assert result.exit_code == 2, result.output
    line = next(line for line in result.output.splitlines() if message in line)
    assert line.startswith(f"{recipe}:") and line.split(":")[1].isdigit()
    assert not (workspace / "mlflow.db").exists()


CUT = """\
version: 1
name: cut-search
seed: 0
model: lenet
data: builtin:shapes-cls?train=64&val=32&imgsz=32
defaults:
  imgsz: 32
  batch: 16
search:
  trials: 1
  sampler: grid
  maximize: finetune.top1
stages:
  train:
    type: train
    epochs: 1
  prune:
    type: prune
    method: depgraph
    ratio: {search: [0.3, 0.5]}
  finetune:
    type: finetune
    epochs: 2
    checkpoint_every: 1
"""


def test_a_trial_cut_off_mid_way_resumes_on_the_next_run(workspace: Path):
    from recipe_runner.engine import RunningStage

    recipe = workspace / "recipe.yaml"
    recipe.write_text(CUT)
    original = RunningStage.save_epoch_state
    cut: list[str] = []

    def save_then_cut(self, state, epoch):
        original(self, state, epoch)
        if self.node.id == "finetune[trial=0]" and not cut:
            cut.append(self.node.id)
            raise KeyboardInterrupt  # Ctrl-C right after the trial's first epoch checkpoint

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RunningStage, "save_epoch_state", save_then_cut)
        result = cli("run", recipe)
    assert result.exit_code == 130 and cut, result.output
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    runs = {r.data.tags["recipe_runner.node_id"]: r for r in stage_runs(local_uri(workspace))}
    assert [runs[n].data.tags["recipe_runner.action"] for n in ("train", "prune[trial=0]")] == ["reuse"] * 2
    resumed = runs["finetune[trial=0]"]
    assert resumed.data.tags["recipe_runner.action"] == "resume"
    assert "recipe_runner.resumed_from" in resumed.data.tags
    assert resumed.data.metrics["epochs_trained"] == 1  # only the epoch the cut-off attempt had not finished


def test_a_relative_bound_is_a_factor_of_what_another_stage_measured_in_the_same_trial():
    """`prune.top1 >= 0.95 * train.top1`: the limit is each trial's own measurement of the reference stage."""
    from recipe_runner.recipe import parse_recipe
    from recipe_runner.search.study import Study, TrialRecord

    text = RECIPE.replace("    - prune.macs <= 4e6", "    - prune.top1 >= 0.95 * train.top1\n    - prune.macs <= 4e6")
    study = Study(parse_recipe(text, "recipe.yaml"))
    relative, absolute = study.constraints
    assert (relative.stage, relative.metric, relative.op, relative.bound, relative.reference) == (
        "prune",
        "top1",
        ">=",
        0.95,
        ("train", "top1"),
    )
    assert absolute.reference is None and absolute.bound == 4e6
    node_of = {"train": "train", "prune": "prune[trial=0]"}

    def judged(top1: float, train_top1: float) -> TrialRecord:
        record = TrialRecord(0, {"prune.ratio": 0.5})
        metrics = {"train": {"top1": train_top1}, "prune[trial=0]": {"top1": top1, "macs": 1e6}}
        study.judge(record, metrics, node_of)
        return record

    kept = judged(0.9, 0.94)  # 0.9 >= 0.95 x 0.94 = 0.893
    assert kept.state == "COMPLETE" and kept.feasible
    assert kept.violations[relative.text] == pytest.approx(0.95 * 0.94 - 0.9)
    lost = judged(0.8, 0.94)
    assert not lost.feasible and lost.violations[relative.text] == pytest.approx(0.95 * 0.94 - 0.8)
    missing = TrialRecord(1, {})
    study.judge(missing, {"train": {"loss": 1.0}, "prune[trial=0]": {"top1": 0.9, "macs": 1e6}}, node_of)
    assert missing.state == "FAIL" and "train logged no metric 'top1'" in missing.error
