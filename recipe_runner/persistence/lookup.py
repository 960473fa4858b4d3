"""Finding runs: the stage runs of a cache key (to reuse, resume or wait for), one run, a recipe run's children."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..timing import timed
from .store import Store
from .tags import CACHE_KEY, PARENT_RUN, ROLE


@dataclass
class StageRun:
    run_id: str
    status: str
    tags: dict[str, str]
    metrics: dict[str, float]
    params: dict[str, str]


class Lookup:
    """Searches of `store`; what they return is read from a store others can write to, and checked by the caller
    (checkpoint hashes, lease rules) before it is trusted."""

    def __init__(self, store: Store):
        self.store = store
        self._all_experiments: list[str] | None = None  # for planning: listed once per Lookup

    @timed("mlflow", per_function=True)
    def stage_runs(self, cache_key: str) -> list[StageRun]:
        """Every stage run with this cache key, newest first, across every experiment of the store, in one query
        (the experiments are listed once per Lookup: planning asks once per stage)."""
        if self._all_experiments is None:
            self._all_experiments = [e.experiment_id for e in self.store.client.search_experiments()]
        return [_stage_run(r) for r in self._search(self._all_experiments, cache_key)]

    @timed("mlflow", per_function=True)
    def runs_for(self, cache_key: str) -> list[StageRun]:
        """Every stage run with this cache key, newest first, read fresh (experiments too: a colleague's recipe may
        have created its experiment after this process started)."""
        experiments = [e.experiment_id for e in self.store.client.search_experiments()]
        return [_stage_run(r) for r in self._search(experiments, cache_key)]

    def stage_run(self, run_id: str) -> StageRun:
        return _stage_run(self.store.client.get_run(run_id))

    def running_children(self, parent_id: str) -> list[str]:
        """The ids of the runs under this recipe run that are still RUNNING."""
        runs = self.store.client.search_runs([self.store.experiment_id], f"tags.`{PARENT_RUN}` = '{parent_id}'")
        return [run.info.run_id for run in runs if run.info.status == "RUNNING"]

    def recipe_run_names(self, prefix: str) -> set[str]:
        """The names of this experiment's recipe runs that start with `prefix` (a name must not repeat one)."""
        runs = self.store.client.search_runs(
            [self.store.experiment_id],
            filter_string=f"attributes.run_name LIKE '{prefix}%' and tags.`{ROLE}` = 'recipe'",
        )
        return {run.info.run_name for run in runs}

    def _search(self, experiments: list[str], cache_key: str) -> list[Any]:
        return self.store.client.search_runs(
            experiments,
            filter_string=f"tags.`{CACHE_KEY}` = '{cache_key}' and tags.`{ROLE}` = 'stage'",
            order_by=["attributes.start_time DESC"],
            max_results=50,
        )


def _stage_run(run: Any) -> StageRun:
    return StageRun(
        run.info.run_id, run.info.status, dict(run.data.tags), dict(run.data.metrics), dict(run.data.params)
    )
