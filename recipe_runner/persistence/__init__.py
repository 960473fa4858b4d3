"""Everything the runner persists, in one place: what it writes to the tracking store and how it finds it again.

tags          every MLflow tag name the runner writes or reads
store         the connection: tracking URI, MLflow client, experiment
runs          writing runs: lifecycle, params, metrics, tags, files, dataset
lookup        finding runs: by cache key, by id, a recipe run's running children
artifacts     a run's files: their paths, and a download that stays in its folder
logged_models an exported ONNX file as an MLflow model
tracker       `Tracker`, the one object the engine holds, handing each call to the piece above that does it
leases        who trains a cache key right now (tags on the stage run, a heartbeat)
checkpoints   stage checkpoints on disk: atomic, sha256-verified, loaded as plain data (no MLflow: models use it)
records       what a person reads in MLflow: run names, the stage table, pipeline metrics, the dataset input
versions      the package versions and git commit that made a stage
local_server  a private `mlflow server` in front of a sqlite store, for parallel stages

Other packages import what they use from here (or a public module above), never a private one.
"""

from __future__ import annotations

from . import checkpoints, leases, local_server, records, tags, versions
from .artifacts import CHECKPOINT_ARTIFACT, UnsafeArtifactPath, epoch_artifact, safe_artifact_path
from .checkpoints import CheckpointError, EpochCadence, load_checkpoint, save_checkpoint, sha256_of
from .local_server import LocalServer, LocalServerError, is_file_store, needs_server
from .lookup import StageRun
from .store import TrackingError, quiet_mlflow, resolve_uri
from .tags import (
    ACTION,
    BEST_TRIAL,
    BEST_TRIAL_PARAMS,
    BEST_TRIAL_RUNS,
    BEST_TRIAL_VALUES,
    CACHE_KEY,
    CHECKPOINT_SHA,
    EPOCH,
    EPOCH_SHA,
    EPOCH_SLOT,
    ERROR,
    LEASE_HEARTBEAT,
    LEASE_HOST,
    LEASE_INTERVAL,
    LEASE_OWNER,
    LEASE_PID,
    LEASE_PID_SPACE,
    MEASURED_ON,
    NODE_ID,
    NOTE,
    OUTPUT_ARTIFACT,
    OUTPUT_SHA,
    PARENT_RUN,
    PARETO_TRIALS,
    PREFIX,
    RECIPE_NAME,
    RECIPE_SHA,
    REPRODUCTION_OF,
    RESUMED_EPOCH,
    RESUMED_FROM,
    REUSED_FROM,
    ROLE,
    RUN_NAME,
    STAGE_ID,
    STAGE_TYPE,
    VERSION_PREFIX,
    WARNING,
    done_tag,
    input_run,
    input_stage,
)
from .tracker import Tracker

__all__ = [
    # modules
    "checkpoints",
    "leases",
    "local_server",
    "records",
    "tags",
    "versions",
    # the store and its runs
    "Tracker",
    "StageRun",
    "TrackingError",
    "quiet_mlflow",
    "resolve_uri",
    "CHECKPOINT_ARTIFACT",
    "UnsafeArtifactPath",
    "epoch_artifact",
    "safe_artifact_path",
    # checkpoints, the local server
    "CheckpointError",
    "EpochCadence",
    "load_checkpoint",
    "save_checkpoint",
    "sha256_of",
    "LocalServer",
    "LocalServerError",
    "is_file_store",
    "needs_server",
    # tag names (tags.py)
    "ACTION",
    "BEST_TRIAL",
    "BEST_TRIAL_PARAMS",
    "BEST_TRIAL_RUNS",
    "BEST_TRIAL_VALUES",
    "CACHE_KEY",
    "CHECKPOINT_SHA",
    "EPOCH",
    "EPOCH_SHA",
    "EPOCH_SLOT",
    "ERROR",
    "LEASE_HEARTBEAT",
    "LEASE_HOST",
    "LEASE_INTERVAL",
    "LEASE_OWNER",
    "LEASE_PID",
    "LEASE_PID_SPACE",
    "MEASURED_ON",
    "NODE_ID",
    "NOTE",
    "OUTPUT_ARTIFACT",
    "OUTPUT_SHA",
    "PARENT_RUN",
    "PARETO_TRIALS",
    "PREFIX",
    "RECIPE_NAME",
    "RECIPE_SHA",
    "REPRODUCTION_OF",
    "RESUMED_EPOCH",
    "RESUMED_FROM",
    "REUSED_FROM",
    "ROLE",
    "RUN_NAME",
    "STAGE_ID",
    "STAGE_TYPE",
    "VERSION_PREFIX",
    "WARNING",
    "done_tag",
    "input_run",
    "input_stage",
]
