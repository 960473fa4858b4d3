"""Parse YAML text into plain data plus a map from each key path to its position.

PyYAML's `safe_load` silently keeps the last of two duplicate keys and drops
positions; this walks the composed node tree itself so both are caught, and any
tag that would build a Python object is refused before anything is constructed.
The walk is bounded: an alias that contains itself is refused, and the values an
alias expands to are counted, so a small file of nested aliases (billion laughs)
is an error, not a hang; a scalar its tag cannot read (`!!int abc`, `2024-02-30`)
is a located error too.
"""

from __future__ import annotations

from typing import Any

import yaml

from ._errors import Location, Problem, RecipeError

Path = tuple[Any, ...]
STANDARD_TAGS = {
    "tag:yaml.org,2002:" + name for name in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")
}
# a recipe has tens of values; aliases may repeat a block, but not expand a small file into millions
MAX_VALUES = 10_000
MAX_DEPTH = 50


class _Walker:
    def __init__(self, source: str):
        self.source = source
        self.locations: dict[Path, Location] = {}
        self.problems: list[Problem] = []
        self._scalars = yaml.SafeLoader("")
        self._open: set[int] = set()  # ids of the collection nodes being walked: an alias to one is recursive
        self._count = 0

    def at(self, node: yaml.Node) -> Location:
        return Location(self.source, node.start_mark.line + 1, node.start_mark.column + 1)

    def walk(self, node: yaml.Node, path: Path) -> Any:
        self.locations.setdefault(path, self.at(node))
        self._count += 1
        if self._count > MAX_VALUES:
            raise _TooBig(
                Problem(
                    self.at(node),
                    f"the recipe expands to more than {MAX_VALUES} values (through aliases?); a recipe is a few dozen",
                )
            )
        if len(path) > MAX_DEPTH:
            raise _TooBig(Problem(self.at(node), f"values are nested more than {MAX_DEPTH} levels deep"))
        if node.tag not in STANDARD_TAGS:
            self.problems.append(
                Problem(self.at(node), f"YAML tag '{node.tag}' is not allowed in a recipe (only plain data)")
            )
            return None
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if id(node) in self._open:
            self.problems.append(
                Problem(self.at(node), "an alias refers to a block that contains it (a recursive alias)")
            )
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            return [self.walk(item, path + (i,)) for i, item in enumerate(node.value)]
        finally:
            self._open.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        """The scalar's value; one its tag cannot read (`!!int abc`, `!!bool maybe`, 2024-02-30) is a problem."""
        try:
            return self._scalars.construct_object(node, deep=True)
        # each tag's constructor fails its own way (ValueError, KeyError, TypeError, AttributeError, OverflowError)
        except Exception:
            kind, label = node.tag.rsplit(":", 1)[-1], ".".join(str(p) for p in path)
            hint = " (a date must exist, e.g. 2024-02-29; quote it to keep it text)" if kind == "timestamp" else ""
            self.problems.append(
                Problem(self.at(node), f"{label + ': ' if label else ''}'{node.value}' is not a valid {kind}{hint}")
            )
            return None

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict:
        result: dict = {}
        first_seen: dict[Any, Location] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                self.problems.append(
                    Problem(self.at(key_node), "keys must be plain scalars (no merge keys or complex keys)")
                )
                continue
            key = self.walk(key_node, path + ("<key>",))
            if key in first_seen:
                self.problems.append(
                    Problem(self.at(key_node), f"duplicate key '{key}' (first defined at line {first_seen[key].line})")
                )
                continue
            first_seen[key] = self.at(key_node)
            self.locations[path + (key,)] = self.at(key_node)
            result[key] = self.walk(value_node, path + (key,))
        return result


_EMPTY = object()


class _TooBig(Exception):
    def __init__(self, problem: Problem):
        self.problem = problem


def _syntax_problem(exc: yaml.MarkedYAMLError, source: str) -> Problem:
    """One located line for a YAML syntax error, pointing where the user has to look."""
    mark, message = exc.problem_mark or exc.context_mark, f"YAML syntax error: {exc.problem or exc.context}"
    if exc.context_mark and exc.problem_mark and str(exc.context).startswith("while parsing a flow"):
        # an unclosed [ or {: point where it opened, and say where parsing gave up
        mark = exc.context_mark
        message = (
            f"YAML syntax error: this {'[' if 'sequence' in str(exc.context) else '{'} is not closed"
            f" ({exc.problem} at line {exc.problem_mark.line + 1})"
        )
    elif "<block end>" in str(exc.problem) or "mapping values are not allowed" in str(exc.problem):
        message += " (check this line's indentation, and quote values that contain ': ')"
    where = Location(source, mark.line + 1, mark.column + 1) if mark else Location(source)
    return Problem(where, message)


def parse_value(text: str, source: str) -> Any:
    """One `--set` value, read by the same rules as a recipe (no tags that build objects, bounded aliases)."""
    return parse_yaml(text, source, empty=None)[0]


def parse_yaml(text: str, source: str, empty: Any = _EMPTY) -> tuple[Any, dict[Path, Location]]:
    """Return (data, locations); raise RecipeError on syntax errors, duplicate keys or object tags.
    An empty document is an error, unless `empty` gives its value."""
    walker = _Walker(source)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise RecipeError([_syntax_problem(exc, source)]) from None
    except yaml.YAMLError as exc:
        raise RecipeError([Problem(Location(source), f"YAML error: {exc}")]) from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        deep = Problem(Location(source, 1, 1), f"values are nested more than {MAX_DEPTH} levels deep")
        raise RecipeError([deep]) from None
    if node is None:
        if empty is not _EMPTY:
            return empty, {}
        raise RecipeError([Problem(Location(source, 1, 1), "the recipe is empty")])
    try:
        data = walker.walk(node, ())
    except _TooBig as exc:
        raise RecipeError([exc.problem]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = Location(source, mark.line + 1, mark.column + 1) if mark else Location(source)
        raise RecipeError([Problem(where, f"YAML error: {getattr(exc, 'problem', exc)}")]) from None
    if walker.problems:
        raise RecipeError(walker.problems)
    return data, walker.locations
