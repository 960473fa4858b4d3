"""Writing runs: start and end them, and log what a stage produced (params, metrics, tags, files, dataset)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..timing import timed
from .store import Store
from .tags import PARENT_RUN, RUN_NAME


class RunLog:
    """Every write to a run of `store`, by explicit run id."""

    def __init__(self, store: Store):
        self.store = store

    @timed("mlflow", per_function=True)
    def start_run(self, name: str, tags: dict[str, str], parent_id: str | None = None) -> str:
        """A run named `name`, unless `tags` carry a RUN_NAME (the name for people, records.run_name)."""
        tags = {RUN_NAME: name, **tags}
        if parent_id:
            tags[PARENT_RUN] = parent_id
        return self.store.client.create_run(self.store.experiment_id, tags=tags, run_name=tags[RUN_NAME]).info.run_id

    @timed("mlflow", per_function=True)
    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.store.client.set_terminated(run_id, status)

    def delete(self, run_id: str) -> None:
        """Soft-delete: searches no longer see the run (a withdrawn lease claim)."""
        self.store.client.delete_run(run_id)

    @timed("mlflow", per_function=True)
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k)[:250], json.dumps(v) if not isinstance(v, str) else v) for k, v in params.items()]
        items = [Param(p.key, p.value[:6000]) for p in items]
        for i in range(0, len(items), 100):
            self.store.client.log_batch(run_id, params=items[i : i + 100])

    @timed("mlflow", per_function=True)
    def log_metrics(
        self, run_id: str, metrics: dict[str, float], step: int | None = None, model_id: str | None = None
    ) -> None:
        """`model_id`: the MLflow model these metrics measure (its model views show them)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(_metric_key(k), float(v), now, step or 0, model_id=model_id)
            for k, v in metrics.items()
            if isinstance(v, (int, float))
        ]
        for i in range(0, len(items), 500):
            self.store.client.log_batch(run_id, metrics=items[i : i + 500])

    @timed("mlflow", per_function=True)
    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        """All tags in one batch: one transaction in a SQL store, one request to a server. A crash can never leave
        half of them written (e.g. a new epoch sha next to the old epoch slot, which would fail verification)."""
        from mlflow.entities import RunTag

        self.store.client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    @timed("mlflow", per_function=True)
    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        self.store.client.log_artifact(run_id, str(path), folder)

    @timed("mlflow", per_function=True)
    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.store.client.log_text(run_id, text, name)

    @timed("mlflow", per_function=True)
    def log_figure(self, run_id: str, figure: Any, name: str) -> None:
        self.store.client.log_figure(run_id, figure, name)

    @timed("mlflow", per_function=True)
    def log_dataset(self, run_id: str, dataset_input: Any, attempts: int = 4) -> None:
        """A DatasetInput (records.dataset_input): MLflow's Dataset column and run page show it; no upload.

        The server looks the dataset up and inserts it if new, not atomically: two runs logging the same new
        dataset at once make one of them fail a UNIQUE constraint. By the retry the dataset exists and is linked."""
        from mlflow.exceptions import MlflowException

        for attempt in range(attempts):
            try:
                self.store.client.log_inputs(run_id, datasets=[dataset_input])
                return
            except MlflowException:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))


def _metric_key(name: str) -> str:
    return name.replace("(", "_").replace(")", "")
