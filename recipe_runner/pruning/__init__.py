"""Pruning methods, registered by name in METHODS (importing this stays torch-free)."""
from ._base import METHODS, PruneConfigBase, PruningMethod, StepPlan, plan_steps
from ._graph import has_batchnorm
from .targets import CostTarget, TargetUnreachable, cost_target, reach_target
from . import depgraph, slim, unstructured  # noqa: F401  (registration)
from . import lowrank  # noqa: F401,E402  (registered last: `known:` lists stay in the order users met them)

__all__ = ["METHODS", "CostTarget", "PruneConfigBase", "PruningMethod", "StepPlan", "TargetUnreachable", "cost_target",
           "has_batchnorm", "plan_steps", "reach_target"]
