"""Every MLflow tag name the runner writes or reads, declared once.

A tag's name is how the runner finds its runs again (a cache key, an epoch checkpoint, a lease), in stores that
earlier versions wrote: a name here never changes. Everything else names a tag through these constants
(tests/test_tags.py checks that no other module of the package spells one out).
"""

from __future__ import annotations

PREFIX = "recipe_runner."

# -- what a run is: the recipe run (role "recipe") or one of its stage runs ("stage", or "reused")
ROLE = PREFIX + "role"
RECIPE_NAME = PREFIX + "recipe_name"
RECIPE_SHA = PREFIX + "recipe_sha256"
CACHE_KEY = PREFIX + "cache_key"
STAGE_ID = PREFIX + "stage_id"
NODE_ID = PREFIX + "node_id"
STAGE_TYPE = PREFIX + "stage_type"
# run | resume | reuse: what this attempt did with the stage
ACTION = PREFIX + "action"

# -- what a finished stage holds: the sha256 of its checkpoint, or of its output file (ONNX, INT8 model)
CHECKPOINT_SHA = PREFIX + "checkpoint_sha256"
OUTPUT_SHA = PREFIX + "output_sha256"
OUTPUT_ARTIFACT = PREFIX + "output_artifact"

# -- the latest resumable epoch checkpoint of a training stage (two slots, see artifacts.epoch_artifact)
EPOCH = PREFIX + "epoch"
EPOCH_SHA = PREFIX + "epoch_sha256"
EPOCH_SLOT = PREFIX + "epoch_slot"

# -- where a stage's model came from
REUSED_FROM = PREFIX + "reused_from"
RESUMED_FROM = PREFIX + "resumed_from"
RESUMED_EPOCH = PREFIX + "resumed_epoch"
# on a reused stage: the host that measured its metrics (latency), when it is not this one
MEASURED_ON = PREFIX + "measured_on"
# on every run `recipe reproduce` starts: the recipe run it reproduces
REPRODUCTION_OF = PREFIX + "reproduction_of"

# -- what went wrong
WARNING = PREFIX + "warning"
ERROR = PREFIX + "error"

# -- a lease (leases.py): who trains this stage run right now
LEASE_OWNER = PREFIX + "lease.owner"
LEASE_HOST = PREFIX + "lease.host"
LEASE_PID = PREFIX + "lease.pid"
LEASE_PID_SPACE = PREFIX + "lease.pid_space"
LEASE_HEARTBEAT = PREFIX + "lease.heartbeat"
LEASE_INTERVAL = PREFIX + "lease.interval_s"

# -- a search's outcome, on its recipe run (search/report.py)
BEST_TRIAL = PREFIX + "best_trial"
BEST_TRIAL_RUNS = PREFIX + "best_trial_runs"
BEST_TRIAL_VALUES = PREFIX + "best_trial_values"
BEST_TRIAL_PARAMS = PREFIX + "best_trial_params"
PARETO_TRIALS = PREFIX + "pareto_trials"

# -- the versions that made a stage (versions.py): VERSION_PREFIX + a package name ("torch") or "git_commit"
VERSION_PREFIX = PREFIX + "version."

# -- MLflow's own tags: the run's display name, its description (markdown on the run page), its parent run
RUN_NAME = "mlflow.runName"
NOTE = "mlflow.note.content"
PARENT_RUN = "mlflow.parentRunId"


def input_stage(role: str) -> str:
    """The node id a stage read as its `role` input (StageNode.inputs: "teacher")."""
    return f"{PREFIX}{role}_stage"


def input_run(role: str) -> str:
    """The run that held the `role` input's model when the stage ran."""
    return f"{PREFIX}{role}_run_id"


def done_tag(gives: str) -> str:
    """The tag a FINISHED run must carry to be reused: the sha256 of its checkpoint, or of its output file."""
    return OUTPUT_SHA if gives == "file" else CHECKPOINT_SHA
