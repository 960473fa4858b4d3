"""The recipe's `search:` section and `{search: ...}` values on stage keys (validation only: no Optuna here).

A searched key is a float or int range (`{search: {low, high, step, log}}`) or a choice list (`{search: [a, b]}`).
Objectives and constraints name `<stage>.<metric>`; which stages exist is checked by the loader (_load.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema, model_validator

from ..config_base import StrictModel

STAGE_METRIC = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_\-]*)\.(\S+)$")
# "<stage>.<metric> <op> <number>": the operator is matched loosely so an unknown one gets its own message
CONSTRAINT = re.compile(r"^\s*(\S+?)\s*([<>=!]+)\s*(.+?)\s*$")
# the right side of a relative bound: `[<factor> *] <stage>.<metric>`, e.g. 0.95 * train.mAP50-95
RELATIVE = re.compile(r"^(?:(\S+)\s*\*\s*)?([A-Za-z0-9][A-Za-z0-9_\-]*\.\S+)$")
OPERATORS = ("<=", ">=")
Scalar = bool | int | float | str | None


def is_search(value: Any) -> bool:
    return isinstance(value, dict) and "search" in value


class SearchRange(StrictModel):
    """A float range, or an int range when low, high (and step) are integers."""

    low: int | float
    high: int | float
    step: int | float | None = Field(None, gt=0, description="sample only low + n*step")
    log: bool = Field(False, description="sample on a log scale (low > 0; not with step)")

    @model_validator(mode="after")
    def _ordered(self) -> SearchRange:
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("log: true cannot take a step")
        return self

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high, self.step or 1))

    def grid(self) -> list[int | float] | None:
        """Every value a grid sampler may take, or None when the range is continuous."""
        if self.is_int:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            return None
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]

    def describe(self) -> str:
        kind = "int" if self.is_int else "float"
        extra = (f", step {self.step}" if self.step is not None else "") + (", log" if self.log else "")
        return f"{kind} {self.low}..{self.high}{extra}"


class SearchChoice(StrictModel):
    """A choice among distinct scalars (parse_space checks them: its messages name the recipe's words)."""

    choices: list[Scalar] = Field(min_length=1)

    def describe(self) -> str:
        return "one of " + ", ".join(map(str, self.choices))


SearchSpace = SearchRange | SearchChoice


def parse_space(value: Any) -> tuple[SearchSpace | None, str | None]:
    """(space, None) for a valid `{search: ...}` value, else (None, a message). Pydantic errors are left to the
    caller for ranges (they carry locations); the shape is judged here."""
    if set(value) != {"search"}:
        others = sorted(set(value) - {"search"})
        hint = " (sweep or search a key, not both)" if "sweep" in others else ""
        return None, f"a search value holds only 'search' (got also {', '.join(others)}){hint}"
    body = value["search"]
    if isinstance(body, list):
        if not body:
            return None, "search: an empty choice list; list at least one value"
        bad = [v for v in body if not isinstance(v, (bool, int, float, str, type(None)))]
        if bad:
            return None, f"search: choices must be numbers, strings, booleans or null (got {bad[0]!r})"
        repeated = sorted({repr(v) for v in body if body.count(v) > 1})
        if repeated:
            return None, f"search: the choice list names {', '.join(repeated)} more than once"
        return SearchChoice(choices=body), None
    if not isinstance(body, dict):
        return None, "search: a choice list [a, b, ...] or a range {low, high, step, log}"
    return None, None  # a range: validated by the caller with locations


def _valid_constraint(text: str) -> str:
    parse_constraint(text)
    return text


def _valid_stage_metric(name: str) -> str:
    if not STAGE_METRIC.fullmatch(name):
        raise ValueError(f"'{name}' is not <stage>.<metric> (e.g. finetune.top1)")
    return name


# checked one item at a time, so a bad constraint or objective is reported at its own line of the list
ConstraintText = Annotated[str, AfterValidator(_valid_constraint)]
StageMetricText = Annotated[str, AfterValidator(_valid_stage_metric)]
# one objective or a list of them; a single one becomes a one-item list before the items are checked (the schema
# still offers both forms to an editor)
Objectives = Annotated[
    list[StageMetricText],
    BeforeValidator(lambda value: [value] if isinstance(value, str) else value),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"items": {"type": "string"}, "type": "array"}]}),
]


class SearchConfig(StrictModel):
    """Recipe-level `search:`: how many trials, which sampler, and what to optimize under which constraints."""

    trials: int = Field(ge=1, le=100000, description="trials to run in all (a re-run reuses finished ones)")
    sampler: Literal["tpe", "random", "grid", "nsga2"] = Field(
        "tpe", description="tpe (default), random, grid (choice lists and stepped ranges), nsga2 (several objectives)"
    )
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="sampler seed; default: the recipe's seed")
    parallel: int = Field(1, ge=1, le=256, description="trials asked at once (they run together with --executor ray)")
    maximize: Objectives = Field(default_factory=list, description="<stage>.<metric>, or a list of them")
    minimize: Objectives = Field(default_factory=list, description="<stage>.<metric>, or a list of them")
    constraints: list[ConstraintText] = Field(
        default_factory=list,
        description='"<stage>.<metric> <= | >= <number>", or a bound relative to '
        'what another stage measured: "<stage>.<metric> >= 0.95 * <stage>.<metric>"',
    )

    @model_validator(mode="after")
    def _has_objective(self) -> SearchConfig:
        if not self.maximize and not self.minimize:
            raise ValueError("needs an objective: maximize: or minimize: <stage>.<metric>")
        both = set(self.maximize) & set(self.minimize)
        if both:
            raise ValueError(f"{sorted(both)[0]} is both maximized and minimized")
        for names in (self.maximize, self.minimize):
            twice = sorted({name for name in names if names.count(name) > 1})
            if twice:
                raise ValueError(f"{twice[0]} is listed twice as an objective")
        return self

    def objectives(self) -> list[Objective]:
        return [Objective(*_split(name), "maximize") for name in self.maximize] + [
            Objective(*_split(name), "minimize") for name in self.minimize
        ]

    def parsed_constraints(self) -> list[Constraint]:
        return [parse_constraint(text) for text in self.constraints]


@dataclass(frozen=True)
class Objective:
    stage: str
    metric: str
    direction: Literal["maximize", "minimize"]

    @property
    def name(self) -> str:
        return f"{self.stage}.{self.metric}"


@dataclass(frozen=True)
class Constraint:
    stage: str
    metric: str
    op: str  # <= or >=
    bound: float  # the number, or the factor of `reference` for a relative bound
    text: str
    # a relative bound: (stage, metric) whose measured value times `bound` is the limit (each trial's own value)
    reference: tuple[str, str] | None = None

    @property
    def name(self) -> str:
        return f"{self.stage}.{self.metric}"

    def limit(self, reference_value: float | None = None) -> float:
        """The bound in the metric's units: the number, or factor x the reference's measured value."""
        if self.reference is None:
            return self.bound
        assert reference_value is not None, f"'{self.text}' needs the value of {'.'.join(self.reference)}"
        return self.bound * reference_value

    def violation(self, value: float, reference_value: float | None = None) -> float:
        """Optuna's convention: <= 0 is feasible, and the size of a positive value says by how much it is not."""
        bound = self.limit(reference_value)
        return value - bound if self.op == "<=" else bound - value


def parse_constraint(text: str) -> Constraint:
    match = CONSTRAINT.fullmatch(text)
    if not match:
        raise ValueError(f"'{text}' is not \"<stage>.<metric> <= | >= <number> | [<factor> *] <stage>.<metric>\"")
    name, op, number = match.groups()
    if op not in OPERATORS:
        raise ValueError(f"'{text}': unknown operator '{op}' (use <= or >=)")
    if not STAGE_METRIC.fullmatch(name):
        raise ValueError(f"'{text}': '{name}' is not <stage>.<metric>")
    reference: tuple[str, str] | None = None
    relative = RELATIVE.fullmatch(number)
    if relative and not _is_number(number):
        factor, number = relative.group(1) or "1", relative.group(2)
        reference = _split(number)
        number = factor
    try:
        bound = float(number)
    except ValueError:
        raise ValueError(f"'{text}': '{number}' is not a number (or [factor *] <stage>.<metric>)") from None
    if not math.isfinite(bound):
        raise ValueError(f"'{text}': the bound must be a finite number")
    return Constraint(*_split(name), op, bound, text, reference)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _split(name: str) -> tuple[str, str]:
    stage, metric = STAGE_METRIC.fullmatch(name).groups()  # type: ignore[union-attr]
    return stage, metric


def search_subtree(parents: Mapping[str, str | None], searched: set[str]) -> list[str]:
    """The searched stages and every stage below one, in the order of `parents` (stage id -> parent id):
    what each trial copies."""
    inside: list[str] = []

    def below(sid: str, seen: frozenset = frozenset()) -> bool:
        if sid in searched:
            return True
        parent = parents.get(sid)
        return parent is not None and parent not in seen and below(parent, seen | {sid})

    for sid in parents:
        if below(sid):
            inside.append(sid)
    return inside
