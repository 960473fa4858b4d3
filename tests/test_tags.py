"""The tag vocabulary: declared once (persistence/tags.py), spelled nowhere else, and never renamed (stores that
earlier versions wrote are found by these exact names)."""

import ast
import subprocess
import sys
from pathlib import Path

from recipe_runner import persistence as T
from recipe_runner.persistence import tags

PACKAGE = Path(T.__file__).resolve().parent.parent
TAGS_FILE = Path(tags.__file__).resolve()

# the names as the runner has always written them: a change here orphans every store written before it
WRITTEN_BEFORE = {
    "ROLE": "recipe_runner.role",
    "RECIPE_NAME": "recipe_runner.recipe_name",
    "RECIPE_SHA": "recipe_runner.recipe_sha256",
    "CACHE_KEY": "recipe_runner.cache_key",
    "STAGE_ID": "recipe_runner.stage_id",
    "NODE_ID": "recipe_runner.node_id",
    "STAGE_TYPE": "recipe_runner.stage_type",
    "ACTION": "recipe_runner.action",
    "CHECKPOINT_SHA": "recipe_runner.checkpoint_sha256",
    "OUTPUT_SHA": "recipe_runner.output_sha256",
    "OUTPUT_ARTIFACT": "recipe_runner.output_artifact",
    "EPOCH": "recipe_runner.epoch",
    "EPOCH_SHA": "recipe_runner.epoch_sha256",
    "EPOCH_SLOT": "recipe_runner.epoch_slot",
    "REUSED_FROM": "recipe_runner.reused_from",
    "RESUMED_FROM": "recipe_runner.resumed_from",
    "RESUMED_EPOCH": "recipe_runner.resumed_epoch",
    "MEASURED_ON": "recipe_runner.measured_on",
    "REPRODUCTION_OF": "recipe_runner.reproduction_of",
    "WARNING": "recipe_runner.warning",
    "ERROR": "recipe_runner.error",
    "LEASE_OWNER": "recipe_runner.lease.owner",
    "LEASE_HOST": "recipe_runner.lease.host",
    "LEASE_PID": "recipe_runner.lease.pid",
    "LEASE_PID_SPACE": "recipe_runner.lease.pid_space",
    "LEASE_HEARTBEAT": "recipe_runner.lease.heartbeat",
    "LEASE_INTERVAL": "recipe_runner.lease.interval_s",
    "BEST_TRIAL": "recipe_runner.best_trial",
    "BEST_TRIAL_RUNS": "recipe_runner.best_trial_runs",
    "BEST_TRIAL_VALUES": "recipe_runner.best_trial_values",
    "BEST_TRIAL_PARAMS": "recipe_runner.best_trial_params",
    "PARETO_TRIALS": "recipe_runner.pareto_trials",
    "VERSION_PREFIX": "recipe_runner.version.",
    "RUN_NAME": "mlflow.runName",
    "NOTE": "mlflow.note.content",
    "PARENT_RUN": "mlflow.parentRunId",
}


def test_every_tag_keeps_the_name_earlier_versions_wrote():
    assert {name: getattr(tags, name) for name in WRITTEN_BEFORE} == WRITTEN_BEFORE
    assert (tags.input_stage("teacher"), tags.input_run("teacher")) == (
        "recipe_runner.teacher_stage",
        "recipe_runner.teacher_run_id",
    )
    assert tags.done_tag("file") == "recipe_runner.output_sha256"
    assert tags.done_tag("checkpoint") == "recipe_runner.checkpoint_sha256"
    # every declared name is listed above, so a new tag gets pinned the day it is added
    declared = {n for n, v in vars(tags).items() if n.isupper() and isinstance(v, str) and n != "PREFIX"}
    assert declared == set(WRITTEN_BEFORE)


def _is_module_name(text: str) -> bool:
    """'recipe_runner.engine' names a module of the package (ray_executor ships modules by name), not a tag."""
    path = PACKAGE.parent.joinpath(*text.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_no_module_but_tags_py_spells_out_or_builds_a_tag_name():
    strays = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.resolve() == TAGS_FILE:
            continue
        tree = ast.parse(path.read_text(), str(path))
        # docstrings may name a module path in prose (models/_yolo_blocks.py says which path old pickles name)
        docstrings = {
            id(owner.body[0].value)
            for owner in ast.walk(tree)
            if isinstance(owner, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and owner.body
            and isinstance(owner.body[0], ast.Expr)
            and isinstance(owner.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if id(node) in docstrings:
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if (
                    "recipe_runner." in text
                    and not _is_module_name(text.strip())
                    or any(v in text for v in (tags.RUN_NAME, tags.NOTE, tags.PARENT_RUN))
                ):
                    strays.append(f"{where}: {text[:60]!r}")
            # building one on the spot: PREFIX + "..."
            elif isinstance(node, (ast.Name, ast.Attribute)) and (
                getattr(node, "id", None) == "PREFIX" or getattr(node, "attr", None) == "PREFIX"
            ):
                strays.append(f"{where}: PREFIX")
    assert not strays, "tag names belong in recipe_runner/persistence/tags.py:\n" + "\n".join(strays)


def test_the_checkpoint_format_loads_without_mlflow():
    """Model families use persistence.checkpoints (import-linter allows nothing else of persistence to them):
    importing it, package __init__ included, must not import MLflow."""
    code = "import sys, recipe_runner.persistence.checkpoints; assert 'mlflow' not in sys.modules, 'mlflow'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
