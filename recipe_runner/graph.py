"""Compile a validated recipe into a stage graph: `from:` edges, sweep copies, search-trial copies, topological
order, cache keys.

A stage's cache key hashes its resolved config (minus keys that do not change
the result, like `device`), its parent's key, and for a root stage the model,
the data fingerprint and the seed: equal keys mean equal results, so a finished
run with the same key anywhere in MLflow can be reused.
"""

from __future__ import annotations

import graphlib
import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from .recipe import Problem, Recipe, RecipeError, StageDecl, search_subtree

KEY_FORMAT = 1


@dataclass
class StageNode:
    id: str  # unique in the graph: the stage id, plus the sweep values that made this copy
    stage_id: str  # the id in the recipe
    type: str
    config: Any
    parent: str | None
    sweep: dict[str, Any]
    cache_key: str = ""
    identity: dict[str, Any] = field(default_factory=dict)
    # extra inputs besides the parent: role ("teacher") -> the node id it reads; ordered before this node
    inputs: dict[str, str] = field(default_factory=dict)

    def upstream(self) -> list[str]:
        """The nodes this one reads: its parent, then its inputs."""
        return ([self.parent] if self.parent else []) + [n for n in self.inputs.values() if n != self.parent]

    def params(self) -> dict[str, Any]:
        """The resolved config, flattened for MLflow params."""
        return _flatten(self.config.model_dump(mode="json", by_alias=True))


@dataclass
class StageGraph:
    recipe: Recipe
    nodes: dict[str, StageNode]  # in topological order
    root: dict[str, Any] = field(default_factory=dict)  # what a root stage's key hashes in place of a parent's key

    def add_trials(self, trials: dict[int, dict[str, Any]]) -> list[StageNode]:
        """Copy the searched stages and their descendants once per trial, exactly like sweep copies: trial k's copy
        of `prune` is `prune[trial=k]`, its `sweep` holds {"trial": k, "<stage>.<key>": value, ...}, and its cache key
        comes from the sampled values (not from k: a trial that samples what another ran reuses it)."""
        recipe = self.recipe
        inside = search_subtree(
            {sid: d.parent for sid, d in recipe.stages.items()}, {sid for sid, d in recipe.stages.items() if d.search}
        )
        added: list[StageNode] = []
        for k, values in sorted(trials.items()):
            copies: dict[str, StageNode] = {}
            for sid in (s for s in _topological_order(recipe) if s in inside):
                decl = recipe.stages[sid]
                own = {key: values[f"{sid}.{key}"] for key in decl.search}
                config = decl.trial_config(own) if own else decl.variants[0][1]
                parent = copies.get(decl.parent) if decl.parent else None
                if parent is None and decl.parent is not None:
                    # a shared stage above the search: one node, as a recipe with search: has no sweeps
                    parent = next(n for n in self.nodes.values() if n.stage_id == decl.parent)
                # a teacher is this trial's copy of its stage, or the one shared node above the search
                inputs = {
                    role: copies.get(stage) or next(n for n in self.nodes.values() if n.stage_id == stage)
                    for role, stage in config.inputs().items()
                }
                node = _node(
                    sid, decl, config, parent, {"trial": k, **values}, self.root, hidden=set(values), inputs=inputs
                )
                copies[sid] = self.nodes[node.id] = node
                added.append(node)
        return added

    def children(self, node_id: str) -> list[StageNode]:
        return [n for n in self.nodes.values() if n.parent == node_id]

    def ancestors(self, node_id: str) -> list[str]:
        out, current = [], self.nodes[node_id].parent
        while current is not None:
            out.append(current)
            current = self.nodes[current].parent
        return out

    def gives(self, node_id: str) -> str:
        """What the node hands its children: "model" or "file" (a pass-through stage gives what its parent gives)."""
        from .stages import output_kind

        chain = [node_id, *self.ancestors(node_id)]
        return output_kind([self.nodes[n].type for n in reversed(chain)])

    def file_suffix(self, node_id: str) -> str:
        """The suffix of the file a node hands on (gives "file"): decided by the stage that wrote it, from its type
        and config, so a file fetched from the store is named by the runner, not by a tag."""
        from .stages import STAGES

        for n in [node_id, *self.ancestors(node_id)]:
            stage_type = STAGES.get(self.nodes[n].type)
            if stage_type.gives == "file" and stage_type.output_suffix is not None:
                return stage_type.output_suffix(self.nodes[n].config)
        raise ValueError(f"'{node_id}' hands on no file of a known type")

    def descendants(self, node_id: str) -> list[str]:
        """Every node that reads `node_id`'s output, through parents or inputs (a teacher's students included)."""
        return [n.id for n in self.nodes.values() if node_id in self.requires(n.id)]

    def requires(self, node_id: str) -> list[str]:
        """Every node that must be done before `node_id` runs: its ancestors and its inputs', transitively."""
        out: list[str] = []
        todo = list(self.nodes[node_id].upstream())
        while todo:
            current = todo.pop()
            if current not in out:
                out.append(current)
                todo.extend(self.nodes[current].upstream())
        return out

    def select(self, stage: str) -> list[str]:
        """Node ids for a name given on the command line: a stage id (all its sweep copies) or a node id."""
        if stage in self.nodes:
            return [stage]
        found = [n.id for n in self.nodes.values() if n.stage_id == stage]
        if not found:
            from .registry import did_you_mean

            raise KeyError(
                f"no stage '{stage}' in the recipe{did_you_mean(stage, [n.stage_id for n in self.nodes.values()])}"
            )
        return found


def compile_graph(recipe: Recipe, data_fingerprint: str = "", model_identity: dict | None = None) -> StageGraph:
    """`model_identity` replaces the model spec in root keys (the planner passes local files by content)."""
    order = _topological_order(recipe)
    model = model_identity if model_identity is not None else recipe.model.model_dump()
    root = {"model": model, "data": data_fingerprint, "seed": recipe.seed}
    # searched stages and their descendants exist only as trial copies (StageGraph.add_trials)
    searched = set(
        search_subtree(
            {sid: d.parent for sid, d in recipe.stages.items()}, {sid for sid, d in recipe.stages.items() if d.search}
        )
    )
    nodes: dict[str, StageNode] = {}
    copies: dict[str, list[StageNode]] = {}
    for sid in (s for s in order if s not in searched):
        decl = recipe.stages[sid]
        parents = copies[decl.parent] if decl.parent is not None else [None]
        copies[sid] = []
        for parent in parents:
            for assignment, config in decl.variants:
                sweep = dict(parent.sweep) if parent else {}
                sweep.update({f"{sid}.{k}": v for k, v in assignment.items()})
                inputs = {
                    role: _input_copy(recipe, decl, role, copies[stage], sweep, sid)
                    for role, stage in config.inputs().items()
                }
                node = _node(sid, decl, config, parent, sweep, root, inputs=inputs)
                nodes[node.id] = node
                copies[sid].append(node)
    return StageGraph(recipe, nodes, root)


def _node(
    sid: str,
    decl: StageDecl,
    config: Any,
    parent: StageNode | None,
    sweep: dict[str, Any],
    root: dict[str, Any],
    hidden: Collection[str] = (),
    inputs: dict[str, StageNode] | None = None,
) -> StageNode:
    """One copy of a stage: its id names the sweep values (minus `hidden` ones: a trial's sampled values would make
    ids unreadable), its key hashes its config, its parent's key and its inputs' keys (a teacher)."""
    shown = {k: v for k, v in sweep.items() if k not in hidden}
    node = StageNode(
        id=sid + (f"[{','.join(f'{k}={v}' for k, v in shown.items())}]" if shown else ""),
        stage_id=sid,
        type=decl.type,
        config=config,
        parent=parent.id if parent else None,
        sweep=sweep,
    )
    node.identity = {
        "format": KEY_FORMAT,
        "type": decl.type,
        "config": config.identity(),
        "parent": parent.cache_key if parent else root,
    }
    node.inputs = {role: source.id for role, source in (inputs or {}).items()}
    if inputs:  # only then: every key made before inputs existed stays as it was
        node.identity["inputs"] = {role: source.cache_key for role, source in inputs.items()}
    node.cache_key = hashlib.sha256(json.dumps(node.identity, sort_keys=True).encode()).hexdigest()[:32]
    return node


def _input_copy(
    recipe: Recipe, decl: Any, role: str, candidates: list[StageNode], sweep: dict[str, Any], node_id: str
) -> StageNode:
    """The copy of an input stage a node reads: the one whose sweep values agree with the node's on every key
    they share (a sweep copy reads the teacher of its own branch)."""
    fitting = [c for c in candidates if all(sweep[k] == v for k, v in c.sweep.items() if k in sweep)]
    if len(fitting) != 1:
        stage = candidates[0].stage_id if candidates else "?"
        copies = ", ".join(c.id for c in candidates)
        raise RecipeError(
            [
                Problem(
                    recipe.locations.get(("stages", decl.id, "distill", role)) or decl.location,
                    f"stages.{decl.id}.distill.{role}: '{stage}' has {len(candidates)} copies "
                    f"({copies}) "
                    f"and {len(fitting)} of them follow the sweep values of {node_id}: make the "
                    f"{role} a stage this one descends from, or one that is not swept",
                )
            ]
        )
    return fitting[0]


def _topological_order(recipe: Recipe) -> list[str]:
    sorter = graphlib.TopologicalSorter()
    for sid, decl in recipe.stages.items():
        inputs = {stage for _, config in decl.variants for stage in config.inputs().values()}
        sorter.add(sid, *([decl.parent] if decl.parent else []), *sorted(inputs))
    try:
        # static_order is stable for ties only by insertion; keep file order among ready stages
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        first = recipe.stages[cycle[0]]
        raise RecipeError(
            [
                Problem(
                    first.from_location or first.location,
                    f"stages.{cycle[0]}.from: cycle: {' -> '.join(reversed(cycle))}",
                )
            ]
        ) from None
    position = {sid: i for i, sid in enumerate(recipe.stages)}
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        order.extend(ready)
        sorter.done(*ready)
    return order


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
