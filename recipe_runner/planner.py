"""Plan a recipe run: validate, compile, check model/data/devices/tracking, and decide per stage
whether MLflow lets it be reused, resumed, or whether it must run. Nothing is trained here."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import persistence as T
from .config_base import ConfigProblem
from .data import DataError, cache_root, fingerprint_data, resolve_data
from .graph import StageGraph, StageNode, compile_graph
from .model_ref import model_identity, resolve_model
from .models import FAMILIES, ModelRef
from .offline import configure_offline
from .persistence import leases, versions
from .recipe import Location, Problem, Recipe, RecipeError, load_recipe
from .stages import STAGES


@dataclass
class RunOptions:
    overrides: list[str] = field(default_factory=list)
    force: list[str] = field(default_factory=list)  # rerun these stages and their descendants
    only: list[str] = field(default_factory=list)  # run only these stages (and what they need)
    tracking_uri: str | None = None


@dataclass
class PlannedStage:
    node: StageNode
    action: str  # reuse | resume | wait | run | skip
    source: T.StageRun | None = None
    forced: bool = False  # --force: neither reuse nor resume, nor wait for another process's lease


@dataclass
class Plan:
    recipe: Recipe
    graph: StageGraph
    tracker: T.Tracker
    stages: list[PlannedStage]
    family: Any  # models.base.ModelFamily
    data: Any  # data.DataSource
    notes: list[str] = field(default_factory=list)  # what the user should know about the model ([note] lines)
    # search trials are planned as they are asked (search/): --force and --only as given, for them
    options: RunOptions = field(default_factory=RunOptions)


# -- planning --------------------------------------------------------------
def prepare(recipe_path: Path, options: RunOptions) -> Plan:
    """Validate, compile and look every stage up in MLflow; raises RecipeError/TrackingError before any work."""
    recipe = load_recipe(recipe_path, options.overrides)
    base = Path.cwd() if _exists_relative(recipe.data, Path.cwd()) else recipe_path.parent
    try:
        fingerprint = fingerprint_data(recipe.data, base)
    except (DataError, OSError) as exc:
        raise recipe.located(("data",), str(exc)) from None
    model = resolve_model(recipe)
    identity = model_identity(recipe, model)  # hashes the local model files: once per plan
    graph = compile_graph(recipe, fingerprint, identity)
    selected = _select(graph, recipe, options)
    forced = {d for name in options.force for nid in _ids(graph, name) for d in [nid, *graph.descendants(nid)]}
    family, data = _load_family_and_data(recipe, base, identity, model)
    notes = _model_notes(recipe, family, data, identity)
    tracker = T.Tracker(
        T.resolve_uri(options.tracking_uri, recipe.tracking.uri), recipe.tracking.experiment or recipe.name
    )
    tracker.check()
    stages = []
    for node in graph.nodes.values():
        if node.id not in selected:
            stages.append(PlannedStage(node, "skip"))
        elif node.id in forced:
            stages.append(PlannedStage(node, "run", forced=True))
        else:
            stages.append(plan_stage(tracker, graph, node))
    return Plan(recipe, graph, tracker, stages, family, data, notes, options)


def plan_stage(tracker: T.Tracker, graph: StageGraph, node: StageNode) -> PlannedStage:
    """Reuse, resume, wait or run: the rule the engine applies when it reaches the stage (it decides again then:
    others may have moved). Search trials are planned with it as they are asked."""
    decision = leases.decide(tracker.stage_runs(node.cache_key), time.time(), done=T.done_tag(graph.gives(node.id)))
    action = {"reuse": "reuse", "wait": "wait"}.get(decision.action, "resume" if decision.run else "run")
    return PlannedStage(node, action, decision.run)


def _load_family_and_data(recipe: Recipe, base: Path, identity: dict[str, Any], model: ModelRef) -> tuple[Any, Any]:
    """Import the model family and make sure model and data are usable, before MLflow is touched."""
    configure_offline(cache_root())
    entry = FAMILIES.get(recipe.model.family)
    family = entry.load()
    family.bind(model)
    # the family's checks import its libraries (Ultralytics and torch: seconds); a recipe that passed them with
    # the same libraries need not pay that again to plan, or to find that every stage is cached
    memo = cache_root() / "checked" / _checks_key(recipe, identity)
    if not memo.exists():
        _check_model_and_stages(recipe, family)
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.touch()
    try:
        data = resolve_data(recipe.data, entry.task, base)
    except (DataError, OSError) as exc:
        raise recipe.located(("data",), str(exc)) from None
    return family, data


def _model_notes(recipe: Recipe, family: Any, data: Any, identity: dict[str, Any]) -> list[str]:
    """The family's notes on fitting the model to the data (a replaced head), or a located error; remembered
    like the checks, so a cached re-run does not load the weights again."""
    # a torchvision weights name is found in $TORCH_HOME's hub cache: another cache is looked at again
    facts = {
        "model": identity,
        "data": data.fingerprint,
        "versions": versions.installed(),
        "torch_home": os.environ.get("TORCH_HOME"),
    }
    memo = cache_root() / "notes" / hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]
    if memo.is_file():
        return list(json.loads(memo.read_text()))
    try:
        notes = family.model_notes(data)
    except ValueError as exc:
        raise _model_problem(recipe, exc) from None
    memo.parent.mkdir(parents=True, exist_ok=True)
    partial = memo.with_name(f".{memo.name}.{os.getpid()}")  # renamed into place: never read half-written
    partial.write_text(json.dumps(notes))
    os.replace(partial, memo)
    return notes


def _model_problem(recipe: Recipe, exc: ValueError) -> RecipeError:
    """A family's complaint about `model:`, located at the key a ConfigProblem names (source, weights, args)."""
    return recipe.located(("model", exc.key) if isinstance(exc, ConfigProblem) else ("model",), str(exc))


def _checks_key(recipe: Recipe, identity: dict[str, Any]) -> str:
    """What the family's checks read: the model, every stage config, this machine, and the versions that judge
    (the tracked packages and the runner's own commit)."""
    import platform

    stages = {
        sid: [config.model_dump(mode="json", by_alias=True) for _, config in decl.variants]
        for sid, decl in recipe.stages.items()
    }
    facts = {"model": identity, "stages": stages, "host": platform.node(), "versions": versions.installed()}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _check_model_and_stages(recipe: Recipe, family: Any) -> None:
    """The family's own checks of the model source, and each stage's checks, devices and trainer arguments."""
    try:
        family.check_source(recipe.model.source)
    except ValueError as exc:
        raise _model_problem(recipe, exc) from None
    # the architecture, built only if a stage's check asks for it, and then once
    skeleton = functools.cache(lambda: family.skeleton(recipe.model.source))
    for sid, decl in recipe.stages.items():
        for _, config in decl.variants:
            check = STAGES.get(decl.type).check
            if check is not None:
                try:
                    check(config, skeleton)
                except ConfigProblem as exc:
                    raise recipe.located(("stages", sid, exc.key), str(exc)) from None
            try:
                family.check_device(config.device)
            except ValueError as exc:
                raise recipe.located(("stages", sid, "device"), str(exc)) from None
            try:
                family.check_args(dict(getattr(config, "args", None) or {}))
            except ValueError as exc:
                raise recipe.located(("stages", sid, "args"), str(exc)) from None


def _exists_relative(spec: str, base: Path) -> bool:
    return spec.startswith("builtin:") or Path(spec).expanduser().is_absolute() or (base / spec).exists()


def _ids(graph: StageGraph, name: str) -> list[str]:
    stage = name.split("[", 1)[0]
    if stage in graph.recipe.stages and not any(n.stage_id == stage for n in graph.nodes.values()):
        return []  # a searched stage (or one below it): its trial copies do not exist before the search asks them
    try:
        return graph.select(name)
    except KeyError as exc:
        raise RecipeError([Problem(Location("command line"), str(exc.args[0]))]) from None


def _select(graph: StageGraph, recipe: Recipe, options: RunOptions) -> set[str]:
    if not options.only:
        return set(graph.nodes)
    chosen = {nid for name in options.only for nid in _ids(graph, name)}
    return chosen | {a for nid in chosen for a in graph.requires(nid)}
