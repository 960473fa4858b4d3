"""Compile a validated recipe into a stage graph: `from:` edges, sweep copies, topological order, cache keys.

A stage's cache key hashes its resolved config (minus keys that do not change
the result, like `device`), its parent's key, and for a root stage the model,
the data fingerprint and the seed: equal keys mean equal results, so a finished
run with the same key anywhere in MLflow can be reused.
"""
from __future__ import annotations

import graphlib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from .recipe import Problem, Recipe, RecipeError

KEY_FORMAT = 1


@dataclass
class StageNode:
    id: str  # unique in the graph: the stage id, plus the sweep values that made this copy
    stage_id: str  # the id in the recipe
    type: str
    config: Any
    parent: Optional[str]
    sweep: dict[str, Any]
    cache_key: str = ""
    identity: dict[str, Any] = field(default_factory=dict)

    def params(self) -> dict[str, Any]:
        """The resolved config, flattened for MLflow params."""
        return _flatten(self.config.model_dump(mode="json", by_alias=True))


@dataclass
class StageGraph:
    recipe: Recipe
    nodes: dict[str, StageNode]  # in topological order

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
        return [n.id for n in self.nodes.values() if node_id in self.ancestors(n.id)]

    def select(self, stage: str) -> list[str]:
        """Node ids for a name given on the command line: a stage id (all its sweep copies) or a node id."""
        if stage in self.nodes:
            return [stage]
        found = [n.id for n in self.nodes.values() if n.stage_id == stage]
        if not found:
            from .registry import did_you_mean

            raise KeyError(f"no stage '{stage}' in the recipe{did_you_mean(stage, [n.stage_id for n in self.nodes.values()])}")
        return found


def compile_graph(recipe: Recipe, data_fingerprint: str = "", model_identity: Optional[dict] = None) -> StageGraph:
    """`model_identity` replaces the model spec in root keys (the planner passes local files by content)."""
    order = _topological_order(recipe)
    model = model_identity if model_identity is not None else recipe.model.model_dump()
    root = {"model": model, "data": data_fingerprint, "seed": recipe.seed}
    nodes: dict[str, StageNode] = {}
    copies: dict[str, list[StageNode]] = {}
    for sid in order:
        decl = recipe.stages[sid]
        parents = copies[decl.parent] if decl.parent is not None else [None]
        copies[sid] = []
        for parent in parents:
            for assignment, config in decl.variants:
                sweep = dict(parent.sweep) if parent else {}
                sweep.update({f"{sid}.{k}": v for k, v in assignment.items()})
                node = StageNode(
                    id=sid + (f"[{','.join(f'{k}={v}' for k, v in sweep.items())}]" if sweep else ""),
                    stage_id=sid, type=decl.type, config=config, parent=parent.id if parent else None, sweep=sweep,
                )
                node.identity = {
                    "format": KEY_FORMAT,
                    "type": decl.type,
                    "config": config.identity(),
                    "parent": parent.cache_key if parent else root,
                }
                node.cache_key = hashlib.sha256(json.dumps(node.identity, sort_keys=True).encode()).hexdigest()[:32]
                nodes[node.id] = node
                copies[sid].append(node)
    return StageGraph(recipe, nodes)


def _topological_order(recipe: Recipe) -> list[str]:
    sorter = graphlib.TopologicalSorter()
    for sid, decl in recipe.stages.items():
        sorter.add(sid, *([decl.parent] if decl.parent else []))
    try:
        # static_order is stable for ties only by insertion; keep file order among ready stages
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        first = recipe.stages[cycle[0]]
        raise RecipeError([Problem(first.from_location or first.location,
                                   f"stages.{cycle[0]}.from: cycle: {' -> '.join(reversed(cycle))}")]) from None
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
