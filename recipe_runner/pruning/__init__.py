"""Pruning methods, registered by name in METHODS (importing this stays torch-free)."""
from ._base import METHODS, PruneConfigBase, PruningMethod, StepPlan, plan_steps
from . import depgraph, slim, unstructured  # noqa: F401  (registration)

__all__ = ["METHODS", "PruneConfigBase", "PruningMethod", "StepPlan", "plan_steps"]
