"""`Tracker`: one object for the engine, the planner and the leases, over the pieces that do the work.

It is the connection (store.Store) and hands each call to the piece whose job it is: writing runs (runs.RunLog),
finding them (lookup.Lookup), fetching their files (artifacts) and logging ONNX models (logged_models).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import artifacts, logged_models
from .lookup import Lookup, StageRun
from .runs import RunLog
from .store import Store


class Tracker(Store):
    def __init__(self, uri: str, experiment: str):
        super().__init__(uri, experiment)
        self.runs = RunLog(self)
        self.lookup = Lookup(self)

    # -- writing runs (runs.py) --------------------------------------------
    def start_run(self, name: str, tags: dict[str, str], parent_id: str | None = None) -> str:
        return self.runs.start_run(name, tags, parent_id)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.runs.finish(run_id, status)

    def delete(self, run_id: str) -> None:
        self.runs.delete(run_id)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self.runs.log_params(run_id, params)

    def log_metrics(
        self, run_id: str, metrics: dict[str, float], step: int | None = None, model_id: str | None = None
    ) -> None:
        self.runs.log_metrics(run_id, metrics, step, model_id)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.runs.set_tags(run_id, tags)

    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        self.runs.log_artifact(run_id, path, folder)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.runs.log_text(run_id, text, name)

    def log_figure(self, run_id: str, figure: Any, name: str) -> None:
        self.runs.log_figure(run_id, figure, name)

    def log_dataset(self, run_id: str, dataset_input: Any, attempts: int = 4) -> None:
        self.runs.log_dataset(run_id, dataset_input, attempts)

    def log_onnx_model(self, run_id: str, path: Path, name: str, step: int = 0) -> str:
        return logged_models.log_onnx_model(self, run_id, path, name, step)

    def kill_running_children(self, parent_id: str) -> None:
        """Mark KILLED every stage run of this recipe run that is still RUNNING (its task was killed)."""
        for run_id in self.lookup.running_children(parent_id):
            self.finish(run_id, "KILLED")

    # -- reading runs (lookup.py, artifacts.py) ----------------------------
    def stage_runs(self, cache_key: str) -> list[StageRun]:
        return self.lookup.stage_runs(cache_key)

    def runs_for(self, cache_key: str) -> list[StageRun]:
        return self.lookup.runs_for(cache_key)

    def stage_run(self, run_id: str) -> StageRun:
        return self.lookup.stage_run(run_id)

    def recipe_run_names(self, prefix: str) -> set[str]:
        return self.lookup.recipe_run_names(prefix)

    def download(self, run_id: str, artifact: str, dest: Path) -> Path:
        return artifacts.download(self, run_id, artifact, dest)
