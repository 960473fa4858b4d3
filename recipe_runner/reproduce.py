"""`recipe reproduce RUN`: re-run a recorded recipe run from scratch and check that it lands on the same metrics.

What is reproduced is what the run recorded: its recipe file and lock (artifacts of the parent run), the lock's
`--set` overrides and, for the inputs, the same data fingerprint and model file. Every stage runs again under
*salted* cache keys: the root identity gains `reproduction: <original run id>:<nonce>`, so

- no stage can be reused from the original (or from any run: a salted key was never written before), and a
  second `recipe reproduce` of the same run re-runs from scratch too;
- the reproduction's runs never satisfy a normal `recipe run`'s lookup either: had they the original keys
  (`--force` on every stage), the newest finished run of a key would be the reproduction, so a reproduction made
  with other package versions would silently replace what colleagues reuse.
The cost: a killed reproduction is not resumed (run it again).
"""

from __future__ import annotations

import hashlib
import json
import platform
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from . import persistence as T
from .compare import PRIMARY, run_id_of

# The default --tolerance, absolute on the primary metric (top1 / mAP50-95). bench/variation.py measured the CPU
# run-to-run variation (bench/results/variation.json, README "Sharing and reproducing"): 0.0 with the same thread
# count, top-1 still 0.0 but val_loss 0.007 with 1 thread instead of 2; 0.02 leaves two flipped images in 128.
DEFAULT_TOLERANCE = 0.02
# shown side by side besides the primary metric; latency is wall-clock, shown but never judged
SHOWN = [
    "val_loss",
    "mAP50",
    "precision",
    "recall",
    "macs",
    "params",
    "sparsity",
    "size_mb",
    "latency_ms",
    "onnx_latency_ms",
]
LOCK, RECIPE_FOLDER = "recipe.lock.json", "recipe"


class ReproduceError(ValueError):
    """The run cannot be reproduced here (unknown run, tampered lock, missing or changed inputs): exit 2."""


@dataclass
class Original:
    run_id: str
    experiment: str
    recipe_path: Path  # the downloaded recipe file
    lock: dict[str, Any]
    stages: dict[str, dict[str, float]]  # node id -> metrics, in the order the stages ran
    salted: bool = False  # itself a reproduction: its lock records salted cache keys


@dataclass
class Row:
    node_id: str
    metric: str
    original: float | None
    reproduced: float | None
    judged: bool  # the primary metric: within tolerance or not decides the exit code
    ok: bool = True

    @property
    def diff(self) -> float | None:
        return None if self.original is None or self.reproduced is None else self.reproduced - self.original


@dataclass
class Outcome:
    run_id: str
    rows: list[Row] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)


def fetch_original(client: Any, ref: str, workdir: Path) -> Original:
    """Download the recipe and lock of a recipe run and check that they belong together."""
    from mlflow.exceptions import MlflowException

    run_id = run_id_of(ref)
    if run_id is None:
        raise ReproduceError(f"'{ref}' is not a run id (32 hex digits) or a runs:/<id> URI")
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ReproduceError(f"no run '{run_id}' in {client.tracking_uri}") from None
    if run.data.tags.get(T.ROLE) != "recipe":
        raise ReproduceError(f"run '{run_id}' is not a recipe run (no tag {T.ROLE}=recipe); pass the parent run's id")
    files = [a.path for a in client.list_artifacts(run_id, RECIPE_FOLDER)]
    recipes = [f for f in files if f.endswith((".yaml", ".yml"))]
    if f"{RECIPE_FOLDER}/{LOCK}" not in files or len(recipes) != 1:
        found = ", ".join(files) or "nothing"
        raise ReproduceError(f"run '{run_id}' holds no recipe file and lock under {RECIPE_FOLDER}/ (found: {found})")
    workdir.mkdir(parents=True, exist_ok=True)
    try:  # a listing of the store is written by its writers: a path could point out of workdir
        recipe_path = Path(client.download_artifacts(run_id, T.safe_artifact_path(recipes[0]), str(workdir)))
    except T.UnsafeArtifactPath as exc:
        raise ReproduceError(f"run '{run_id}': {exc}") from None
    lock = _lock_of(Path(client.download_artifacts(run_id, f"{RECIPE_FOLDER}/{LOCK}", str(workdir))), run_id)
    digest = hashlib.sha256(recipe_path.read_bytes()).hexdigest()
    recorded = {lock.get("recipe_sha256"), run.data.tags.get(T.RECIPE_SHA)}
    if recorded != {digest}:
        shown = ", ".join(sorted(str(r)[:12] for r in recorded))
        raise ReproduceError(
            f"run '{run_id}': the recipe file's sha256 ({digest[:12]}) does not match the one its lock "
            f"and tags record ({shown}): the record was altered; refusing to reproduce it"
        )
    children = client.search_runs(
        [run.info.experiment_id],
        f"tags.`{T.PARENT_RUN}` = '{run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=5000,
    )
    stages = {c.data.tags[T.NODE_ID]: dict(c.data.metrics) for c in children if T.NODE_ID in c.data.tags}
    experiment = client.get_experiment(run.info.experiment_id).name
    return Original(run_id, experiment, recipe_path, lock, stages, T.REPRODUCTION_OF in run.data.tags)


def installed_versions(names: list[str]) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def version_differences(recorded: dict[str, str], installed: dict[str, str]) -> list[tuple[str, str, str]]:
    """(package, recorded, installed) for every package whose version differs; '-' where one side lacks it."""
    names = list(dict.fromkeys([*recorded, *installed]))
    return [(n, recorded.get(n, "-"), installed.get(n, "-")) for n in names if recorded.get(n) != installed.get(n)]


def _lock_of(path: Path, run_id: str) -> dict[str, Any]:
    """The lock as the runner wrote it: a store writer may have written anything else (a list, deep nesting)."""
    try:
        lock = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ReproduceError(f"run '{run_id}': its {LOCK} is not JSON ({str(exc)[:80]})") from None
    shapes = {"model": dict, "data": dict, "stages": dict, "overrides": list, "versions": dict}
    wrong = [k for k, kind in shapes.items() if not isinstance(lock, dict) or not isinstance(lock.get(k, kind()), kind)]
    if (
        wrong
        or not all(isinstance(s, dict) for s in lock.get("stages", {}).values())
        or not all(isinstance(o, str) for o in lock.get("overrides", []))
    ):
        raise ReproduceError(f"run '{run_id}': its {LOCK} is not a recipe-runner lock ({', '.join(wrong) or 'stages'})")
    return lock


def check_model_file(lock: dict[str, Any]) -> None:
    """A model named by a local file must be here, where the original read it (relative to the working
    directory); a name the family ships (yolov8n.yaml, resnet18) needs no file."""
    from .models import FAMILIES

    spec = lock.get("model", {})
    source, family = str(spec.get("source", "")), spec.get("family", "")
    if family == "custom":
        check_custom_module(source, lock.get("model_identity", {}))
        return
    path = Path(source).expanduser()
    if path.suffix not in (".yaml", ".yml", ".pt") or path.is_file():
        return
    try:
        FAMILIES.get(family).load().check_source(source)
    except (KeyError, ValueError):
        raise ReproduceError(
            f"model file '{source}' is missing: the original run read it relative to its working "
            f"directory; put the same file at {Path.cwd() / path}"
        ) from None


def check_custom_module(source: str, identity: dict[str, Any]) -> None:
    """A custom model's code is imported only if the module here is the one the original imported (by sha256):
    a record in a shared store never makes the runner import code that is not already, unchanged, on this machine."""
    from .model_ref import module_identity

    module, _, name = source.rpartition(":")
    if module.endswith(".py"):
        path = Path(module).expanduser()
        local = path if path.is_absolute() else Path.cwd() / path
        if not local.is_file():
            raise ReproduceError(
                f"custom model module '{module}' is missing: the original run imported it; put the same file at {local}"
            )
        module = str(local)
    recorded = str(identity.get("source", ""))
    here = f"{module_identity(module)}:{name}"
    if here != recorded:
        raise ReproduceError(
            f"custom model module '{module}' here ({here}) is not the one the original run imported "
            f"({recorded or 'not recorded'}): refusing to import it"
        )


def check_data_path(lock: dict[str, Any]) -> None:
    """A dataset path must be here, where the original read it (relative to the working directory, as `recipe run`
    reads it first); a builtin spec is regenerated. Whether it holds the same files is checked by fingerprint."""
    spec = str(lock.get("data", {}).get("spec", ""))
    if spec and not spec.startswith("builtin:") and not Path(spec).expanduser().exists():
        raise ReproduceError(
            f"dataset path '{spec}' does not exist here ({Path.cwd() / Path(spec).expanduser()}): the "
            "original run read it relative to its working directory; put the same data there"
        )


def prepare_reproduction(original: Original, uri: str, run_nodes: set[str] | None = None) -> tuple[Any, list[str]]:
    """The plan that re-runs every stage of the original under salted keys, and notes for the user.

    Raises ReproduceError when the data here is not the data the original used."""
    from .graph import compile_graph
    from .planner import PlannedStage, RunOptions, model_identity, prepare

    check_model_file(original.lock)
    check_data_path(original.lock)
    plan = prepare(
        original.recipe_path, RunOptions(overrides=list(original.lock.get("overrides", [])), tracking_uri=uri)
    )
    recorded = original.lock.get("data", {})
    if plan.data.fingerprint != recorded.get("fingerprint"):
        why = "its generator changed" if plan.recipe.data.startswith("builtin:") else "its files differ"
        raise ReproduceError(
            f"data '{plan.recipe.data}' here ({plan.data.path}) is not the data of the original run: "
            f"fingerprint {plan.data.fingerprint}, recorded {recorded.get('fingerprint')} ({why})"
        )
    notes = []
    locked = {nid: s.get("cache_key") for nid, s in original.lock.get("stages", {}).items()}
    changed = [n.id for n in plan.graph.nodes.values() if locked.get(n.id) != n.cache_key]
    # a reproduction's lock holds its salted keys, which never equal the keys computed here
    if changed and not original.salted:
        notes.append(
            f"cache keys here differ from the lock's for {', '.join(changed)} (the model file, the runner's "
            "key format or a stage default changed): the reproduction may not be the same work"
        )
    salt = f"{original.run_id}:{uuid.uuid4().hex}"
    graph = compile_graph(plan.recipe, plan.data.fingerprint, {**model_identity(plan.recipe), "reproduction": salt})
    wanted = set(original.stages) if run_nodes is None else run_nodes
    plan.graph = graph
    # the stages the original ran (all, unless it was an --only run); none recorded: all
    plan.stages = [PlannedStage(n, "run" if n.id in wanted or not wanted else "skip") for n in graph.nodes.values()]
    plan.tracker = ReproductionTracker(uri, original.experiment, original.run_id)
    return plan, notes


class ReproductionTracker(T.Tracker):
    """A Tracker that tags every run it starts (the parent and each stage) as a reproduction of the original,
    so `mlflow ui` and searches can tell reproductions apart without the engine knowing about them."""

    def __init__(self, uri: str, experiment: str, original_run_id: str):
        super().__init__(uri, experiment)
        self.original_run_id = original_run_id
        self.recipe_run_id: str | None = None  # the reproduction's parent run, once started

    def start_run(self, name: str, tags: dict[str, str], parent_id: str | None = None) -> str:
        run_id = super().start_run(name, {**tags, T.REPRODUCTION_OF: self.original_run_id}, parent_id)
        if tags.get(T.ROLE) == "recipe":
            self.recipe_run_id = run_id
        return run_id

    def stage_metrics(self) -> dict[str, dict[str, float]]:
        """Node id -> metrics of the reproduction's stage runs, read back from MLflow like the original's."""
        children = self.client.search_runs(
            [self.experiment_id], f"tags.`{T.PARENT_RUN}` = '{self.recipe_run_id}'", max_results=5000
        )
        return {c.data.tags[T.NODE_ID]: dict(c.data.metrics) for c in children if T.NODE_ID in c.data.tags}


def judge(original: Original, reproduced: dict[str, dict[str, float]], tolerance: float, run_id: str) -> Outcome:
    """Rows of (stage, metric, original, reproduced); a stage fails when its primary metric is missing on either
    side or moved by more than `tolerance` (absolute)."""
    outcome = Outcome(run_id)
    for node_id, before in original.stages.items():
        after = reproduced.get(node_id, {})
        primary = next((m for m in PRIMARY if m in before or m in after), PRIMARY[-1])
        row = Row(node_id, primary, before.get(primary), after.get(primary), judged=True)
        row.ok = row.diff is not None and abs(row.diff) <= tolerance
        outcome.rows.append(row)
        for name in SHOWN:
            if name in before or name in after:
                outcome.rows.append(Row(node_id, name, before.get(name), after.get(name), judged=False))
    return outcome


def report_json(original: Original, outcome: Outcome, tolerance: float, versions: list[tuple[str, str, str]]) -> str:
    """What `--workdir` keeps next to the recipe and lock: the comparison as data."""
    return (
        json.dumps(
            {
                "original_run": original.run_id,
                "reproduction_run": outcome.run_id,
                "tolerance": tolerance,
                "ok": outcome.ok,
                "version_differences": [{"package": p, "recorded": r, "installed": i} for p, r, i in versions],
                "rows": [
                    {
                        "node_id": r.node_id,
                        "metric": r.metric,
                        "original": r.original,
                        "reproduced": r.reproduced,
                        "diff": r.diff,
                        "judged": r.judged,
                        "ok": r.ok,
                    }
                    for r in outcome.rows
                ],
            },
            indent=2,
        )
        + "\n"
    )
