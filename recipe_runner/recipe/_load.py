"""load_recipe: text -> validated Recipe, or RecipeError with one located line per problem."""

from __future__ import annotations

import copy
import hashlib
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError

from ..models import FAMILIES, family_for
from ..registry import did_you_mean
from ..stages import STAGES, output_kind
from ._errors import Location, Problem, RecipeError
from ._models import ModelSpec, RecipeHeader, TrackingConfig
from ._search import SearchConfig, SearchRange, SearchSpace, is_search, parse_space, search_subtree
from ._yaml import Path as KeyPath
from ._yaml import parse_value, parse_yaml


@dataclass
class StageDecl:
    """One stage as written: its parent and one validated config per sweep combination."""

    id: str
    type: str
    parent: str | None
    variants: list[tuple[dict[str, Any], Any]]  # (sweep assignment, validated config)
    location: Location
    from_location: Location | None = None
    search: dict[str, SearchSpace] = field(default_factory=dict)  # key -> the space each search trial samples
    body: dict[str, Any] = field(default_factory=dict)  # as written, defaults merged: a trial's values go in here

    def trial_config(self, values: dict[str, Any]) -> Any:
        """This stage's config with one trial's sampled values (the ends of every range were validated at load)."""
        return TypeAdapter(STAGES.get(self.type).config).validate_python({**copy.deepcopy(self.body), **values})


@dataclass
class Recipe:
    path: Path
    text: str
    sha256: str
    name: str
    description: str
    seed: int
    model: ModelSpec
    data: str
    tracking: TrackingConfig
    stages: dict[str, StageDecl]
    overrides: list[str] = field(default_factory=list)
    search: SearchConfig | None = None
    locations: dict = field(default_factory=dict, repr=False)  # key path -> Location, for later errors

    def located(self, path: tuple, message: str) -> RecipeError:
        """A RecipeError pointing at `path` in the recipe (e.g. ('model',))."""
        where = next(
            (self.locations[path[:n]] for n in range(len(path), 0, -1) if path[:n] in self.locations),
            Location(str(self.path), 1, 1),
        )
        return RecipeError([Problem(where, f"{'.'.join(map(str, path))}: {message}")])


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError([Problem(Location(str(path)), f"cannot read recipe: {exc}")]) from None
    return parse_recipe(text, str(path), overrides)


def parse_recipe(text: str, source: str, overrides: list[str] = ()) -> Recipe:
    data, locations = parse_yaml(text, source)
    if not isinstance(data, dict):
        # where the top-level node starts (after any leading comments), not line 1
        raise RecipeError(
            [
                Problem(
                    locations.get((), Location(source, 1, 1)),
                    "a recipe must be a mapping with version, name, model, data and stages",
                )
            ]
        )
    for item in overrides:
        _apply_override(data, locations, item)
    v = _Validator(source, locations)
    header = v.validate(TypeAdapter(RecipeHeader), data, (), lambda loc: _model_keys(RecipeHeader, loc))
    if header is None:
        _check_stages_anyway(v, data)
        raise RecipeError(v.problems)
    model = header.model if isinstance(header.model, ModelSpec) else _short_model(header.model, v)
    stages = v.stages(header)
    if v.problems:
        raise RecipeError(v.problems)
    return Recipe(
        path=Path(source),
        text=text,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        name=header.name,
        description=header.description,
        seed=header.seed,
        model=model,
        data=header.data,
        tracking=header.tracking,
        stages=stages,
        overrides=list(overrides),
        locations=locations,
        search=header.search,
    )


def _check_stages_anyway(v: _Validator, data: dict) -> None:
    """Report stage problems too when the header is wrong, so one `validate` shows every mistake."""
    stages, defaults = data.get("stages"), data.get("defaults", {})
    if isinstance(stages, dict) and stages and all(isinstance(k, str) for k in stages) and isinstance(defaults, dict):
        header = RecipeHeader.model_construct(stages={k: b for k, b in stages.items()}, defaults=defaults)
        v.stages(header)


def _short_model(source: str, v: _Validator) -> ModelSpec:
    fallback = ModelSpec.model_construct(family=FAMILIES.names()[0], source=source)
    if not source.strip():
        v.problem(("model",), "names no model (e.g. resnet18 or yolov8n.yaml)")
        return fallback
    try:
        return ModelSpec(family=family_for(source), source=source)
    except (KeyError, ValueError) as exc:  # ValueError: pydantic's, for a source ModelSpec refuses
        v.problem(("model",), str(exc.args[0]) if isinstance(exc, KeyError) else str(exc))
        return fallback


def _apply_override(data: dict, locations: dict, item: str) -> None:
    """--set dotted.key=value: the value is parsed as YAML (safely), so 0.6 is a float and [0,1] a list."""
    where = Location(f"--set {item}")
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise RecipeError([Problem(where, "expected --set dotted.key=value")])
    try:
        value = parse_value(raw, str(where)) if raw.strip() else ""
    except RecipeError as exc:  # the value's own line:col mean nothing on a command line: name the --set instead
        raise RecipeError([Problem(where, f"value is not valid: {p.message}") for p in exc.problems]) from None
    parts = key.strip().split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None and depth == 0 and part in OPTIONAL_SECTIONS:
            child = node[part] = {}
        elif child is None:
            at = ".".join(parts[:depth]) or "the recipe"
            raise RecipeError(
                [
                    Problem(
                        where,
                        f"'{'.'.join(parts[: depth + 1])}' does not exist in {at}{did_you_mean(part, list(node))}",
                    )
                ]
            )
        if not isinstance(child, dict):
            raise RecipeError([Problem(where, f"'{'.'.join(parts[: depth + 1])}' is not a mapping")])
        node = child
    node[parts[-1]] = value
    for n in range(1, len(parts) + 1):
        locations[tuple(parts[:n])] = where
    locations[tuple(parts)] = where


OPTIONAL_SECTIONS = ("tracking", "defaults")  # --set may create these; other paths must exist in the recipe


STAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")


def _is_sweep(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"sweep"}


class _Validator:
    """Runs pydantic and turns its errors into located, readable problems."""

    def __init__(self, source: str, locations: dict[KeyPath, Location]):
        self.source = source
        self.locations = locations
        self.problems: list[Problem] = []

    def where(self, path: KeyPath) -> Location:
        for n in range(len(path), -1, -1):
            if path[:n] in self.locations:
                return self.locations[path[:n]]
        return Location(self.source, 1, 1)

    def problem(self, path: KeyPath, message: str) -> None:
        label = ".".join(str(p) for p in path)
        problem = Problem(self.where(path), f"{label}: {message}" if label else message)
        if problem not in self.problems:  # a shared key (defaults) is met once per stage: say it once
            self.problems.append(problem)

    def validate(
        self,
        adapter: TypeAdapter,
        data: Any,
        prefix: KeyPath,
        known: Callable[[tuple], list[str]] = lambda loc: [],
        tags: list[str] = (),
        note: str = "",
    ):
        """The validated value, or None after recording one problem per offending key (each ending in `note`)."""
        try:
            return adapter.validate_python(data)
        except ValidationError as exc:
            located = [(prefix + _error_path(data, error), error) for error in exc.errors()]
            seen: set = set()
            for path, error in located:
                if _lost_union_member(path, error, located) or _misspelled_nearby(path, error, located):
                    continue
                if path not in seen:  # a union reports once per member; the first says enough
                    seen.add(path)
                    self.problem(path, _message(error, known(error["loc"]), tags) + note)
            return None

    def stages(self, header: RecipeHeader) -> dict[str, StageDecl]:
        accepted = _keys_accepted_by_any_stage()
        for key, value in header.defaults.items():
            if key not in accepted:
                self.problem(("defaults", key), f"no stage type accepts this key{did_you_mean(key, accepted)}")
            elif is_search(value):
                self.problem(
                    ("defaults", key),
                    "a {search: ...} value in defaults would search every stage's key on "
                    "its own; search the key on one stage: its descendants follow each trial",
                )
        decls: dict[str, StageDecl] = {}
        previous: str | None = None
        for sid in header.stages:
            if not STAGE_ID.fullmatch(sid):
                self.problem(
                    ("stages", sid),
                    f"stage id '{sid}' must start with a letter or digit and use only letters, digits, '_' and '-'",
                )
        for sid, body in header.stages.items():
            parent = body.get("from", previous) if isinstance(body, dict) else previous
            if isinstance(parent, str) and parent not in header.stages:
                self.problem(("stages", sid, "from"), f"no stage named '{parent}'{did_you_mean(parent, header.stages)}")
            decl = self._stage(sid, body, header.defaults, previous)
            if decl is not None:
                decls[sid] = decl
            previous = sid
        for decl in decls.values():
            self._check_edge(decl, decls)
            self._check_inputs(decl, decls, list(header.stages))
        if not self.problems:
            self._check_search(header.search, decls)
        return decls

    def _check_search(self, search: SearchConfig | None, decls: dict[str, StageDecl]) -> None:
        """The search section against the stages: something is searched, objectives lie below a searched stage,
        constraints name existing stages, no sweep, grid sampling only over finite spaces."""
        searched = {sid: decl for sid, decl in decls.items() if decl.search}
        if search is None:
            for sid, decl in searched.items():
                self.problem(
                    ("stages", sid, next(iter(decl.search))),
                    "a {search: ...} value needs a recipe-level search: section (trials, maximize: or minimize:)",
                )
            return
        if not searched:
            self.problem(("search",), "no stage key holds a {search: ...} value: nothing to search")
            return
        for sid, decl in decls.items():
            for key in decl.variants[0][0] if len(decl.variants) > 1 else {}:
                self.problem(
                    ("stages", sid, key),
                    "a recipe with search: cannot also sweep (a trial would be several "
                    "branches); make it a choice instead: {search: [...]}",
                )
        subtree = search_subtree({sid: d.parent for sid, d in decls.items()}, set(searched))
        for field_name in ("maximize", "minimize"):
            for i, objective in enumerate(getattr(search, field_name)):
                stage = objective.split(".", 1)[0]
                where = (
                    ("search", field_name, i) if ("search", field_name, i) in self.locations else ("search", field_name)
                )
                if stage not in decls:
                    self.problem(where, f"no stage '{stage}' in the recipe{did_you_mean(stage, list(decls))}")
                elif stage not in subtree:
                    self.problem(
                        where,
                        f"'{stage}' is neither searched nor below a searched stage ({', '.join(searched)}): "
                        "its value is the same in every trial",
                    )
        for i, constraint in enumerate(search.parsed_constraints()):
            named = [constraint.stage] + ([constraint.reference[0]] if constraint.reference else [])
            for stage in (s for s in named if s not in decls):
                self.problem(
                    ("search", "constraints", i), f"no stage '{stage}' in the recipe{did_you_mean(stage, list(decls))}"
                )
            # the constrained value must vary by trial; a reference (0.95 * train.x) may be shared by all
            if constraint.stage in decls and constraint.stage not in subtree:
                self.problem(
                    ("search", "constraints", i),
                    f"'{constraint.stage}' is neither searched nor below a searched stage ({', '.join(searched)}): "
                    "its value is the same in every trial, so the constraint cannot tell trials apart",
                )
        if search.sampler == "grid":
            for sid, decl in searched.items():
                for key, space in decl.search.items():
                    if isinstance(space, SearchRange) and space.grid() is None:
                        self.problem(
                            ("stages", sid, key), "sampler: grid needs a step on a float range (or a choice list)"
                        )

    def _check_inputs(self, decl: StageDecl, decls: dict[str, StageDecl], names: list[str]) -> None:
        """An input (a distillation teacher, a benchmark's baseline) names another stage that gives what the input
        takes and does not depend on this one (its output must exist before this stage starts)."""
        rules = {
            (role, stage): (config.input_location(role), config.input_takes(role))
            for _, config in decl.variants
            for role, stage in config.inputs().items()
        }
        for (_role, stage), (location, takes) in sorted(rules.items()):
            where = ("stages", decl.id, *location)
            if stage not in names:
                self.problem(where, f"no stage named '{stage}'{did_you_mean(stage, names)}")
            elif stage == decl.id:
                self.problem(
                    where, f"'{stage}' is this stage itself; name a stage before it (e.g. the one it was pruned from)"
                )
            elif stage not in decls:
                continue  # that stage has its own problem, reported there
            elif decl.id in _upstream(stage, decls):
                self.problem(
                    where, f"'{stage}' descends from '{decl.id}': its model does not exist before this stage runs"
                )
            elif output_kind([d.type for d in reversed(_chain(decls[stage], decls))]) not in takes:
                self.problem(
                    where,
                    f"'{stage}' ({decls[stage].type}) gives a model file (ONNX/INT8), not a PyTorch "
                    f"model a teacher needs",
                )

    def _check_edge(self, decl: StageDecl, decls: dict[str, StageDecl]) -> None:
        """A stage must take what its parent gives: no training or pruning `from:` an exported/quantized file."""
        parent = decls.get(decl.parent) if decl.parent else None
        if parent is None:
            return
        chain = _chain(parent, decls)
        gives, takes = output_kind([d.type for d in reversed(chain)]), STAGES.get(decl.type).takes
        if gives not in takes:
            where = ("stages", decl.id, "from") if decl.from_location else ("stages", decl.id)
            wanted = " or ".join("a PyTorch model" if k == "model" else "a model file" for k in sorted(takes))
            got = "a PyTorch model" if gives == "model" else "a model file (ONNX/INT8), not a PyTorch model"
            self.problem(where, f"a '{decl.type}' stage takes {wanted}, but '{parent.id}' ({parent.type}) gives {got}")

    def _stage(self, sid: str, body: dict, defaults: dict, previous: str | None) -> StageDecl | None:
        path = ("stages", sid)
        if not isinstance(body, dict):
            self.problem(path, f"a stage must be a mapping with at least 'type' (got {body!r})")
            return None
        stype = body.get("type")
        if stype not in STAGES:
            msg = "missing required key 'type'" if stype is None else f"unknown stage type '{stype}'"
            self.problem(
                path + (("type",) if stype is not None else ()),
                msg + did_you_mean(stype or "", STAGES.names()) + f" (known: {', '.join(STAGES.names())})",
            )
            return None
        fields = _fields_of(stype, body)
        merged = dict(body)
        for key, value in defaults.items():
            if key in fields and key not in merged and not is_search(value):
                if _is_sweep(value):
                    self.problem(
                        ("defaults", key),
                        "a sweep in defaults would sweep every stage on its own (a product of "
                        "copies); sweep the key on one stage: its descendants follow each branch",
                    )
                    return None
                merged[key] = value
                self.locations.setdefault(path + (key,), self.where(("defaults", key)))
        sweeps = {k: v["sweep"] for k, v in merged.items() if _is_sweep(v)}
        for key, values in sweeps.items():
            if not isinstance(values, list) or not values:
                self.problem(path + (key,), "sweep must be a non-empty list of values")
                return None
            repeated = sorted({repr(v) for v in values if values.count(v) > 1})
            if repeated:
                self.problem(path + (key,), f"sweep lists {', '.join(repeated)} more than once")
                return None
        config_type = STAGES.get(stype).config
        adapter, tags = TypeAdapter(config_type), list(_union_members(config_type)[1])
        spaces = self._spaces(path, merged)
        if spaces is None:
            return None
        body_only = {k: v for k, v in merged.items() if k not in spaces}
        for key, space in spaces.items():
            # every end of a range and every choice must be a value this stage accepts
            for candidate in space.choices if not isinstance(space, SearchRange) else (space.low, space.high):
                if (
                    self.validate(
                        adapter, {**copy.deepcopy(body_only), key: candidate}, path, lambda loc: sorted(fields), tags
                    )
                    is None
                ):
                    return None
        # the placeholder each trial replaces: the first value of every space
        merged = {**body_only, **{k: s.low if isinstance(s, SearchRange) else s.choices[0] for k, s in spaces.items()}}
        variants = []
        for combo in itertools.product(*sweeps.values()) if sweeps else [()]:
            assignment = dict(zip(sweeps, combo))
            # a swept discriminator (method: {sweep: [...]}) changes the keys a copy accepts: name the copy
            known = sorted(_fields_of(stype, {**merged, **assignment}))
            copy_of = ", ".join(f"{k}={v}" for k, v in assignment.items())
            config = self.validate(
                adapter,
                {**copy.deepcopy(merged), **assignment},
                path,
                lambda loc, known=known: known,
                tags,
                f" (in the sweep copy {copy_of})" if copy_of else "",
            )
            if config is None:
                return None
            variants.append((assignment, config))
        parent = body.get("from", previous)
        if "from" in sweeps:
            self.problem(path + ("from",), "'from' cannot be swept")
            return None
        outside = [k for k in [*sweeps, *spaces] if k in type(variants[0][1]).NOT_IDENTITY]
        for key in outside:
            # copies that differ only there share one cache key: every copy after the first would be "reused"
            copies = "sweep copies" if key in sweeps else "search trials"
            self.problem(
                path + (key,),
                f"'{key}' is not part of a stage's cache key: its {copies} would share "
                "one key (the first one's run reused by the others); to rerun a stage with "
                "another value, use --set and --force",
            )
        if outside:
            return None
        stage = STAGES.get(stype)
        # a first stage's parent is the model as given by `model:`: fine for every stage that takes a model
        if parent is None and (stage.needs_parent or "model" not in stage.takes):
            self.problem(path, f"a '{stype}' stage needs a parent: add 'from:' or put a stage before it")
            return None
        return StageDecl(
            sid,
            stype,
            parent,
            variants,
            self.where(path),
            self.locations.get(path + ("from",)) if "from" in body else None,
            spaces,
            body_only,
        )

    def _spaces(self, path: KeyPath, merged: dict) -> dict[str, SearchSpace] | None:
        """The stage's `{search: ...}` values as spaces, or None after recording a problem."""
        spaces: dict[str, SearchSpace] = {}
        for key, value in merged.items():
            if not is_search(value):
                continue
            if key in ("type", "from", "method"):
                self.problem(path + (key,), f"'{key}' cannot be searched")
                return None
            space, message = parse_space(value)
            if message:
                self.problem(path + (key,), message)
                return None
            if space is None:
                space = self.validate(
                    TypeAdapter(SearchRange),
                    value["search"],
                    path + (key, "search"),
                    lambda loc: _model_keys(SearchRange, loc),
                )
                if space is None:
                    return None
            spaces[key] = space
        return spaces


def _chain(decl: StageDecl, decls: dict[str, StageDecl]) -> list[StageDecl]:
    """`decl` and its ancestors by `from:`, nearest first (stopping at a cycle, which is reported elsewhere)."""
    chain, seen = [decl], {decl.id}
    while chain[-1].parent in decls and chain[-1].parent not in seen:
        seen.add(chain[-1].parent)
        chain.append(decls[chain[-1].parent])
    return chain


def _upstream(stage: str, decls: dict[str, StageDecl]) -> set[str]:
    """Every stage `stage` reads, through `from:` or inputs, transitively (itself excluded)."""
    seen: set[str] = set()
    todo = [stage]
    while todo:
        decl = decls.get(todo.pop())
        if decl is None:
            continue
        reads = {decl.parent} if decl.parent else set()
        reads |= {s for _, config in decl.variants for s in config.inputs().values()}
        todo.extend(reads - seen)
        seen |= reads
    return seen


def _union_members(config: Any) -> tuple[str | None, dict[str, type[BaseModel]]]:
    """A stage config written as a discriminated union (prune: on `method`) -> (discriminator, tag -> model)."""
    if get_origin(config) is not Annotated:
        return None, {}
    union, *metadata = get_args(config)
    key = next((m.discriminator for m in metadata if isinstance(getattr(m, "discriminator", None), str)), None)
    return key, {m.model_fields[key].default: m for m in get_args(union)} if key else {}


def _fields_of(stype: str, body: dict) -> set[str]:
    """Keys the stage accepts: of the union member its discriminator picks, or of any member if none picks."""
    config = STAGES.get(stype).config
    key, members = _union_members(config)
    tag = body.get(key) if key else None
    models = [members[tag]] if isinstance(tag, str) and tag in members else list(members.values()) or [config]
    names: set[str] = set()
    for model in models:
        for name, info in model.model_fields.items():
            names.add(info.alias or name)
    return names


def _keys_accepted_by_any_stage() -> list[str]:
    keys: set[str] = set()
    for name in STAGES.names():
        keys |= _fields_of(name, {})
    return sorted(keys - {"type", "from", "method"})


def _error_path(data: Any, error: dict) -> KeyPath:
    """Where in the data a pydantic error points; a missing discriminator points at its own key."""
    path = _data_path(data, error["loc"], error["type"] in KEY_ERRORS)
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):  # point at the key itself (e.g. method:)
        path += (_discriminator(error),)
    return path


KEY_ERRORS = ("missing", "extra_forbidden")  # errors whose last loc part names a key that is not in the data


def _data_path(data: Any, loc: tuple, names_key: bool = False) -> KeyPath:
    """Map a pydantic error location onto the data, dropping the union labels pydantic inserts
    (a discriminator value such as 'depgraph', or a member such as 'ModelSpec', 'str', "literal['cpu']")."""
    path: list = []
    node = data
    for n, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path.append(part)
            node = node[part]
        elif names_key and n == len(loc) - 1:
            path.append(part)  # an unknown or missing key
    return tuple(path)


def _lost_union_member(path: KeyPath, error: dict, located: list[tuple[KeyPath, dict]]) -> bool:
    """True for a union member's type error when another member got deeper into the value: `model: {family: ...}`
    is a ModelSpec with a bad family, not a bad string."""
    if not error["type"].endswith(("_type", "literal_error")):
        return False
    return any(len(other) > len(path) and other[: len(path)] == path for other, _ in located)


def _misspelled_nearby(path: KeyPath, error: dict, located: list[tuple[KeyPath, dict]]) -> bool:
    """True for "missing key 'model'" when a sibling unknown key ('modle') already says "did you mean 'model'"."""
    if error["type"] != "missing" or not path:
        return False
    return any(
        e["type"] == "extra_forbidden" and other[:-1] == path[:-1] and did_you_mean(other[-1], [path[-1]])
        for other, e in located
    )


def _discriminator(error: dict) -> str:
    return str(error.get("ctx", {}).get("discriminator", "")).strip("'")


def _model_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the model nested at `loc` accepts (for "did you mean" on an unknown key)."""
    for part in loc[:-1]:
        info = model.model_fields.get(part) if isinstance(part, str) else None
        if info is None:
            continue  # a union label or a list index
        nested = [
            m for m in (info.annotation, *get_args(info.annotation)) if isinstance(m, type) and issubclass(m, BaseModel)
        ]
        if not nested:
            return []
        model = nested[0]
    return [info.alias or name for name, info in model.model_fields.items()]


def _message(error: dict, known: list[str] | None, tags: list[str] = ()) -> str:
    kind, loc = error["type"], error["loc"]
    key = str(loc[-1]) if loc else ""
    if kind == "extra_forbidden":
        return f"unknown key '{key}'{did_you_mean(key, known or [])}"
    if kind == "missing":
        return f"missing required key '{key}'"
    if kind == "union_tag_not_found":
        return f"missing required key '{_discriminator(error)}'" + (f" (known: {', '.join(tags)})" if tags else "")
    if kind == "too_short" and isinstance(error.get("input"), dict):
        return f"needs at least {error.get('ctx', {}).get('min_length', 1)} entry; it is empty"
    if kind == "union_tag_invalid":
        ctx = error.get("ctx", {})
        tag = ctx.get("tag", "")
        expected = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        what = ctx.get("discriminator", "value").strip(chr(39))
        return f"unknown {what} '{tag}'{did_you_mean(tag, expected)} (known: {', '.join(expected)})"
    msg = error["msg"]
    if msg.startswith("Value error, "):
        return msg[len("Value error, ") :]  # our own validators already name the value
    got = error.get("input")
    if isinstance(got, (str, int, float, bool)):
        msg += f" (got {got!r})"
    if kind == "literal_error" and isinstance(got, str):
        expected = [
            t.strip(" '") for t in str(error.get("ctx", {}).get("expected", "")).replace(" or ", ", ").split(",")
        ]
        msg += did_you_mean(got, expected)
    return msg
