"""Pruning methods, registered by name in METHODS (importing this stays torch-free)."""

from ._base import METHODS, PruneConfigBase, PruningMethod, StepPlan, plan_steps
from ._graph import has_batchnorm
from .targets import CostTarget, TargetUnreachable, cost_target, reach_target

# registration order is the order `known:` lists and the schema show; low-rank last, as users met them
# isort: off
from . import depgraph, slim, unstructured  # noqa: F401, E402
from . import lowrank  # noqa: F401, E402
# isort: on

__all__ = [
    "METHODS",
    "CostTarget",
    "PruneConfigBase",
    "PruningMethod",
    "StepPlan",
    "TargetUnreachable",
    "cost_target",
    "has_batchnorm",
    "plan_steps",
    "reach_target",
]
