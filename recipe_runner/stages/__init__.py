"""Stage types, registered by name in STAGES. Importing this stays torch-free.

To add a stage type: write a module with a pydantic config (subclass StageConfig)
and a `run(ctx, config) -> StageOutput`, register it, and import it here.
"""

from ..config_base import StageConfig
from . import benchmark, evaluate, export, prune, quantize, sparse_train, train  # noqa: F401  (registration)
from ._base import STAGES, StageContext, StageOutput, StageType, output_kind

__all__ = ["STAGES", "StageConfig", "StageContext", "StageOutput", "StageType", "output_kind"]
