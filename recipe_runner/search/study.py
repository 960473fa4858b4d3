"""The Optuna side of a search: the sampler a recipe asks for, the space as Optuna distributions, ask and tell.

The study is in memory and rebuilt on every run: the same seed asks the same first trials, the engine finds
them finished in MLflow by their cache keys, and telling their recorded values replays the sampler's state
(tests/test_search.py checks this replay, TPE past its random start-up trials included).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from ..recipe import (
    Constraint,
    Objective,
    Recipe,
    SearchChoice,
    SearchConfig,
    SearchSpace,
)

optuna.logging.set_verbosity(logging.WARNING)  # one line per trial is the runner's job (driver.py)


def spaces(recipe: Recipe) -> dict[str, SearchSpace]:
    """ "<stage>.<key>" -> its space, in file order."""
    return {f"{sid}.{key}": space for sid, decl in recipe.stages.items() for key, space in decl.search.items()}


def distribution(space: SearchSpace) -> BaseDistribution:
    if isinstance(space, SearchChoice):
        return CategoricalDistribution(space.choices)
    if space.is_int:
        return IntDistribution(int(space.low), int(space.high), log=space.log, step=int(space.step or 1))
    return FloatDistribution(
        float(space.low), float(space.high), log=space.log, step=None if space.step is None else float(space.step)
    )


def grid_size(found: dict[str, SearchSpace]) -> int:
    size = 1
    for space in found.values():
        size *= len(space.choices if isinstance(space, SearchChoice) else space.grid() or [])
    return size


def make_sampler(config: SearchConfig, seed: int, found: dict[str, SearchSpace]) -> optuna.samplers.BaseSampler:
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.sampler == "grid":
        grid = {
            name: space.choices if isinstance(space, SearchChoice) else space.grid() for name, space in found.items()
        }
        return _Grid(grid, seed=seed)  # type: ignore[arg-type]
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    # with parallel asks, a trial still running counts as a bad result (constant liar): the batch spreads out
    return optuna.samplers.TPESampler(seed=seed, constant_liar=config.parallel > 1)


class _Grid(optuna.samplers.GridSampler):
    """GridSampler stops the study from after_trial once every point was asked, which only study.optimize allows
    (ask/tell raises); the driver asks no more trials than the grid has points (Study.total)."""

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: TrialState, values: Any) -> None:
        return None


@dataclass
class TrialRecord:
    """One trial as the parent run records it."""

    number: int
    params: dict[str, Any]
    state: str = "RUNNING"  # COMPLETE | FAIL
    values: dict[str, float] = field(default_factory=dict)  # objective name -> value
    constraints: dict[str, float] = field(default_factory=dict)  # constraint text -> measured value
    violations: dict[str, float] = field(default_factory=dict)  # constraint text -> violation (<= 0: met)
    runs: dict[str, str] = field(default_factory=dict)  # node id -> stage run id
    actions: dict[str, str] = field(default_factory=dict)  # node id -> reuse | resume | run | failed | skipped
    error: str = ""

    @property
    def feasible(self) -> bool:
        return self.state == "COMPLETE" and all(v <= 0 for v in self.violations.values())


class Study:
    """An Optuna study driven by ask and tell, over the recipe's searched keys."""

    def __init__(self, recipe: Recipe):
        assert recipe.search is not None
        self.config = recipe.search
        self.spaces = spaces(recipe)
        self.objectives = self.config.objectives()
        self.constraints = self.config.parsed_constraints()
        seed = recipe.seed if self.config.seed is None else self.config.seed
        self.study = optuna.create_study(
            directions=[o.direction for o in self.objectives], sampler=make_sampler(self.config, seed, self.spaces)
        )
        self.distributions = {name: distribution(space) for name, space in self.spaces.items()}
        self.trials: dict[int, optuna.Trial] = {}

    @property
    def total(self) -> int:
        """Trials to run in all; a grid has no more than its points."""
        if self.config.sampler == "grid":
            return min(self.config.trials, grid_size(self.spaces))
        return self.config.trials

    def ask(self) -> TrialRecord:
        trial = self.study.ask(self.distributions)
        self.trials[trial.number] = trial
        return TrialRecord(trial.number, dict(trial.params))

    def tell(self, record: TrialRecord) -> None:
        trial = self.trials.pop(record.number)
        if record.state != "COMPLETE":
            self.study.tell(trial, state=TrialState.FAIL)
            return
        for name, violation in record.violations.items():
            trial.set_constraint(name, violation)
        self.study.tell(trial, [record.values[o.name] for o in self.objectives])

    def judge(self, record: TrialRecord, metrics: dict[str, dict[str, float]], node_of: dict[str, str]) -> None:
        """Fill the record's values from the metrics of its stages' runs (`node_of`: stage id -> node id of this
        trial or the shared one); a metric a stage never logged fails the trial, naming what it did log."""
        wanted = (
            [(o.name, o.stage, o.metric) for o in self.objectives]
            + [(c.text, c.stage, c.metric) for c in self.constraints]
            + [(_reference_label(c), *c.reference) for c in self.constraints if c.reference is not None]
        )
        measured: dict[str, float] = {}
        for label, stage, metric in wanted:
            logged = metrics.get(node_of.get(stage, ""), {})
            if metric not in logged:
                record.state = "FAIL"
                record.error = (
                    f"{node_of.get(stage, stage)} logged no metric '{metric}' (it logged: "
                    f"{', '.join(sorted(logged)) or 'nothing'})"
                )
                return
            measured[label] = float(logged[metric])
        record.values = {o.name: measured[o.name] for o in self.objectives}
        record.constraints = {c.text: measured[c.text] for c in self.constraints}
        record.violations = {
            c.text: c.violation(measured[c.text], measured.get(_reference_label(c))) for c in self.constraints
        }
        record.state = "COMPLETE"


def _reference_label(constraint: Constraint) -> str:
    return f"{constraint.text} (reference)"


def best(records: list[TrialRecord], objectives: list[Objective]) -> list[TrialRecord]:
    """The best feasible trial (one objective), or the feasible trials no other feasible trial dominates (several),
    in trial order."""
    feasible = [r for r in records if r.feasible]
    signs = [1.0 if o.direction == "maximize" else -1.0 for o in objectives]

    def score(r: TrialRecord) -> list[float]:
        return [s * r.values[o.name] for s, o in zip(signs, objectives)]

    if len(objectives) == 1:
        return [max(feasible, key=lambda r: score(r)[0])] if feasible else []

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return [r for r in feasible if not any(dominates(score(o), score(r)) for o in feasible if o is not r)]
