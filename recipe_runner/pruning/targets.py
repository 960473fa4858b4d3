"""Prune to a MACs or parameter target (`target_macs`, `target_params`) instead of a channel ratio.

Per step, the step ratio is bisected: the method's own prune_step runs on deep copies of the current model, and
family.cost measures each copy, until one lands just under the step's goal. That copy is the step's result, so
what was measured is exactly what is kept (also with random or global rankings). Step k of N aims at
target^(k/N) of the unpruned cost: costs fall geometrically, as plan_steps' compounding channel ratios do,
fine-tuning between steps cannot move a goal (each is measured afresh on the current model), and the last step
lands on the target. Any structured method plugs in through its prune_step: the bisection only needs a larger
step_ratio never to leave more MACs or parameters.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from ._base import PruneConfigBase, PruningMethod, StepPlan

Metric = Literal["macs", "params"]
# stop bisecting once a copy is this close (relative) under the goal; well inside the promised 2%
CLOSE_ENOUGH = 0.005
# a copy this far (relative) under the target is reported: the widths (or round_to) allow nothing closer
REPORT_BELOW = 0.02
# the step ratios tried first, upward, to bracket the goal: cost may stop falling near ratio 1 (a layer's last
# channels, or with round_to the one multiple every layer keeps: _graph.rounded_prune_count), so bracket from below
GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MAX_PROBES = 20
# a step ratio interval this narrow moves less than one channel of a 1024-wide layer: stop there
RESOLUTION = 1e-3


class TargetUnreachable(ValueError):
    """No step ratio of the grid reaches the goal (layers capped by max_layer_ratio, or ignored)."""


@dataclass(frozen=True)
class CostTarget:
    metric: Metric
    fraction: float  # of the unpruned model's cost

    @property
    def key(self) -> str:
        return f"target_{self.metric}"

    def goal(self, base_cost: float, plan: StepPlan) -> float:
        return base_cost * self.fraction ** (plan.step / plan.steps)


def cost_target(config: PruneConfigBase) -> CostTarget | None:
    """The config's target, or None when it prunes to `ratio`."""
    if config.target_macs is not None:
        return CostTarget("macs", config.target_macs)
    if config.target_params is not None:
        return CostTarget("params", config.target_params)
    return None


@dataclass(frozen=True)
class Reached:
    model: Any
    step_ratio: float  # 0 when the model was already under the goal
    cost: float  # the target's metric of `model`


# (a copy of the model, step ratio) -> that copy pruned
PruneCopy = Callable[[Any, float], Any]


def bisect_ratio(model: Any, goal: float, measure: Callable[[Any], float], prune: PruneCopy) -> Reached:
    """The pruned copy with the largest cost not above `goal`: the first GRID ratio that meets it brackets the
    step ratio from above, then bisection closes in from there."""
    current = measure(model)
    if current <= goal:
        return Reached(model, 0.0, current)

    def attempt(ratio: float) -> Reached:
        pruned = prune(copy.deepcopy(model), ratio)
        return Reached(pruned, ratio, measure(pruned))

    low = 0.0
    best = None
    probes = 0
    least = current
    for ratio in GRID:
        tried, probes = attempt(ratio), probes + 1
        least = min(least, tried.cost)
        if tried.cost <= goal:
            best = tried
            break
        low = ratio
    if best is None:
        raise TargetUnreachable(
            f"{least / current:.3f} of the current cost is the least any step ratio up to "
            f"{GRID[-1]} leaves, and this step needs {goal / current:.3f}"
        )
    high = best.step_ratio
    while probes < MAX_PROBES and high - low > RESOLUTION and best.cost < goal * (1 - CLOSE_ENOUGH):
        middle = (low + high) / 2
        tried, probes = attempt(middle), probes + 1
        if tried.cost <= goal:
            high = middle
            # keep the closest copy under the goal (a ranking may be noisy: random importance)
            best = tried if tried.cost > best.cost else best
        else:
            low = middle
    return best


def reach_target(
    model: Any,
    family: Any,
    data: Any,
    config: PruneConfigBase,
    method: PruningMethod,
    plan: StepPlan,
    target: CostTarget,
    base_cost: float,
    done: float,
) -> tuple[Any, StepPlan]:
    """One prune step toward `target` -> (model, the plan it applied). `base_cost` is the unpruned
    model's cost in the target's metric; `done` the channel ratio removed by the earlier steps."""

    def prune(model_copy: Any, ratio: float) -> Any:
        return method.prune_step(model_copy, family, data, config, replace(plan, step_ratio=ratio))

    def measure(candidate: Any) -> float:
        return family.cost(candidate, config.imgsz)[target.metric]

    try:
        reached = bisect_ratio(model, target.goal(base_cost, plan), measure, prune)
    except TargetUnreachable as exc:
        raise TargetUnreachable(
            f"{target.key} {target.fraction:g}: step {plan.step} of {plan.steps} cannot reach "
            f"its goal: {exc}; raise {target.key}, or loosen max_layer_ratio / ignored"
        ) from None
    cumulative = 1.0 - (1.0 - done) * (1.0 - reached.step_ratio)
    return reached.model, replace(plan, step_ratio=reached.step_ratio, cumulative=cumulative)
