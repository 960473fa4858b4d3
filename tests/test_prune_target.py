"""prune to target_macs / target_params: the step ratio is searched on copies with the method's own prune_step.

Real torch-pruning on resnet18 (a whole recipe, fine-tuning between steps) and yolov8n (global ranking); the
bracketing and bisection on a cost curve that turns up again near ratio 1, as torch-pruning's does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import cli, local_uri, stage_runs, write_recipe
from mlflow.tracking import MlflowClient

from recipe_runner import persistence as T
from recipe_runner.pruning import METHODS, TargetUnreachable, cost_target, plan_steps, reach_target
from recipe_runner.pruning.targets import bisect_ratio


def _curve(ratio: float) -> float:
    """MACs after a step: (1-r)^2, until round_to makes torch-pruning keep layers whole (cost rises again)."""
    return (1 - ratio) ** 2 if ratio < 0.85 else 0.5


def test_bisection_lands_just_under_the_goal_and_ignores_the_rising_tail():
    reached = bisect_ratio(1.0, 0.3, measure=lambda m: m, prune=lambda m, r: m * _curve(r))
    assert 0.3 * 0.995 <= reached.cost <= 0.3
    assert reached.step_ratio == pytest.approx(1 - 0.3**0.5, abs=2e-3)
    # already under the goal: nothing pruned
    assert bisect_ratio(0.2, 0.3, measure=lambda m: m, prune=lambda m, r: m * _curve(r)).step_ratio == 0.0
    with pytest.raises(TargetUnreachable, match="0.040 of the current cost is the least"):
        bisect_ratio(1.0, 0.01, measure=lambda m: m, prune=lambda m, r: m * _curve(r))


def test_target_keys_stay_out_of_existing_cache_keys_and_exclude_ratio():
    depgraph, unstructured = METHODS.get("depgraph").config, METHODS.get("l1-unstructured").config
    assert "target_macs" not in depgraph(method="depgraph").identity()
    assert "max_layer_ratio" not in depgraph(method="depgraph").identity()  # still kept out when unset
    assert depgraph(method="depgraph", target_macs=0.4).identity()["target_macs"] == 0.4
    assert depgraph(method="depgraph").ratio == 0.5
    with pytest.raises(ValueError, match="give one of ratio, target_macs and target_params"):
        depgraph(method="depgraph", ratio=0.3, target_params=0.4)
    with pytest.raises(ValueError, match="target_macs needs a method that removes channels"):
        unstructured(method="l1-unstructured", target_macs=0.4)


def test_target_macs_on_resnet18_through_a_recipe(workspace: Path):
    """Two steps with fine-tuning between them: each step's goal is measured on the fine-tuned model, and the
    last lands within 2% under the target; the chosen ratio and the reached fraction are logged."""
    stages = """\
  train:
    type: train
    epochs: 1
  prune:
    type: prune
    method: depgraph
    target_macs: 0.4
    steps: 2
    finetune_epochs: 1
"""
    path = write_recipe(workspace, stages)
    path.write_text(path.read_text().replace("model: lenet", "model: resnet18"))
    result = cli("run", path)
    assert result.exit_code == 0, result.output
    uri = local_uri(workspace)
    runs = {r.data.tags[T.NODE_ID]: r.data.metrics for r in stage_runs(uri)}
    prune, train = runs["prune"], runs["train"]
    assert 0.4 * 0.98 <= prune["target_reached"] <= 0.4
    assert prune["macs"] / train["macs"] == pytest.approx(prune["target_reached"], rel=1e-9)
    run_id = next(r.info.run_id for r in stage_runs(uri) if r.data.tags[T.NODE_ID] == "prune")
    ratios = MlflowClient(uri).get_metric_history(run_id, "step/ratio")
    assert [m.step for m in ratios] == [1, 2]
    assert ratios[-1].value == pytest.approx(prune["chosen_ratio"]) and 0.25 < prune["chosen_ratio"] < 0.5
    assert "[warn]" not in result.output


@pytest.mark.parametrize(
    "name,target,keys",
    [
        ("depgraph", "target_params", {"global_pruning": True}),
        ("depgraph", "target_macs", {}),
        ("depgraph", "target_macs", {"global_pruning": True, "max_layer_ratio": 0.8, "round_to": 8}),
        ("slim", "target_macs", {}),
    ],
    ids=["params-global", "macs-per-layer", "macs-global-capped-round8", "macs-slim"],
)
def test_a_target_on_yolov8n_is_reached_within_2_percent(family, tiny_data, name: str, target: str, keys: dict):
    method = METHODS.get(name)
    config = method.config(method=name, imgsz=64, **{target: 0.4}, **keys)
    goal = cost_target(config)
    model = family.build("yolov8n.yaml", tiny_data, seed=0)
    base = family.cost(model, 64)[goal.metric]
    model, plan = reach_target(
        model, family, tiny_data, config, method, plan_steps(config.ratio, 1)[0], goal, base_cost=base, done=0.0
    )
    reached = family.cost(model, 64)[goal.metric] / base
    assert 0.4 * 0.98 <= reached <= 0.4
    # one step: the step's ratio is the whole ratio, and some channels stay (a slim or capped ranking cuts more)
    assert plan.cumulative == pytest.approx(plan.step_ratio) and 0.2 < plan.step_ratio < 0.9


def test_round_to_keeps_one_multiple_so_cost_falls_with_the_ratio(family, tiny_data):
    """torch-pruning 1.6 rounds the kept width down to 0 and then leaves such a layer whole: with round_to: 16,
    ratio 0.9 kept more of YOLOv8n's MACs than ratio 0.5. The runner keeps at least one multiple instead."""
    import copy

    import torch

    from recipe_runner.pruning import StepPlan
    from recipe_runner.pruning._graph import rounded_prune_count

    assert rounded_prune_count(58, 64, 16) == 48  # 6 would stay: one multiple (16) does, not 0
    assert rounded_prune_count(20, 64, 16) == 32 and rounded_prune_count(3, 8, 16) == 0
    method = METHODS.get("depgraph")
    model = family.build("yolov8n.yaml", tiny_data, seed=0)
    macs = {}
    for ratio in (0.5, 0.9):
        config = method.config(method="depgraph", imgsz=64, ratio=ratio, round_to=16)
        pruned = method.prune_step(copy.deepcopy(model), family, tiny_data, config, StepPlan(1, 1, ratio, ratio))
        macs[ratio] = family.cost(pruned, 64)["macs"]
        head = {id(m) for layer in family.output_layers(pruned) for m in layer.modules()}
        widths = [m.out_channels for m in pruned.modules() if isinstance(m, torch.nn.Conv2d) and id(m) not in head]
        assert all(w % 16 == 0 for w in widths), widths
    assert macs[0.9] < macs[0.5]


def test_round_to_above_one_changes_the_key_of_runs_made_before_the_one_multiple_rule():
    """Runs recorded before round_to kept one multiple per layer pruned differently: their keys must not match."""
    from recipe_runner.pruning.depgraph import DepgraphConfig

    assert "round_to_rule" not in DepgraphConfig(method="depgraph").identity()
    assert "round_to_rule" not in DepgraphConfig(method="depgraph", round_to=1).identity()
    assert DepgraphConfig(method="depgraph", round_to=8).identity()["round_to_rule"] == 2


def test_prune_head_prunes_detect_branches_and_the_model_still_rebuilds_and_exports(family, tiny_data, tmp_path):
    """YOLOv8n's Detect branches are a third of its MACs: kept whole they put a floor under what pruning can
    remove. With prune_head only each branch's last convolution and the DFL keep their width; the pruned model
    rebuilds from its description, computes the same outputs, and exports to ONNX."""
    import copy

    import torch
    from ultralytics.nn.modules.head import Detect

    from recipe_runner.pruning import StepPlan

    method = METHODS.get("depgraph")
    assert "prune_head" not in method.config(method="depgraph").identity()
    model = family.build("yolov8n.yaml", tiny_data, seed=0)
    pruned = {}
    for prune_head in (False, True):
        config = method.config(method="depgraph", imgsz=64, ratio=0.5, prune_head=prune_head)
        assert ("prune_head" in config.identity()) is prune_head
        pruned[prune_head] = method.prune_step(
            copy.deepcopy(model), family, tiny_data, config, StepPlan(1, 1, 0.5, 0.5)
        )
    whole = next(m for m in model.modules() if isinstance(m, Detect))
    head = next(m for m in pruned[True].modules() if isinstance(m, Detect))
    assert head.cv2[0][1].conv.out_channels < whole.cv2[0][1].conv.out_channels
    assert [b[-1].out_channels for b in head.cv3] == [b[-1].out_channels for b in whole.cv3]
    assert family.cost(pruned[True], 64)["macs"] < 0.9 * family.cost(pruned[False], 64)["macs"]
    rebuilt = family.rebuild(family.describe(pruned[True])).eval()
    example = family.example_inputs(model, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(example)[0], pruned[True].eval()(example)[0])
    assert family.write_onnx(rebuilt, tmp_path / "m.onnx", 64, 17).stat().st_size > 0


def test_prune_head_with_an_unstructured_method_is_a_located_error(workspace: Path):
    stages = """\
  train:
    type: train
    epochs: 1
  prune:
    type: prune
    method: l1-unstructured
    prune_head: true
"""
    path = write_recipe(workspace, stages)
    result = cli("validate", path)
    assert result.exit_code == 2
    line = path.read_text().splitlines().index("  prune:") + 1
    assert f"recipe.yaml:{line}:" in result.output, result.output
    assert "prune_head: method l1-unstructured" in result.output
