"""Everything that talks to MLflow: runs, params, metrics, checkpoints as artifacts, lookup by cache key.

Uses MlflowClient with explicit run ids (no global "active run"), so nesting is
just the parent-run tag and nothing leaks into other code's runs.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from ..timing import timed
from .tags import CACHE_KEY, PARENT_RUN, ROLE, RUN_NAME

CHECKPOINT_ARTIFACT = "checkpoint/model.pt"


class UnsafeArtifactPath(ValueError):
    """An artifact path (from a tag or a listing, both written by whoever can write to the store) that could
    leave the download folder."""


_ARTIFACT_PART = re.compile(r"[^/\\:\x00-\x1f]{1,200}")


def safe_artifact_path(path: Any) -> str:
    """`path` if it is relative, made of plain names ('..', '.', empty parts, backslashes, colons refused): MLflow
    joins an artifact path to the destination folder unchecked on stores it reads directly (S3, file stores)."""
    parts = path.split("/") if isinstance(path, str) else []
    if not parts or len(parts) > 16 or not all(_ARTIFACT_PART.fullmatch(p) and p not in (".", "..") for p in parts):
        raise UnsafeArtifactPath(f"artifact path {str(path)[:120]!r} is not a plain relative path; refusing to "
                                 "download it")
    return path


def epoch_artifact(slot: int) -> str:
    """Epoch checkpoints alternate between two slots, so the one the tags point to is never being overwritten."""
    return f"epoch/{slot}/state.pt"


class TrackingError(RuntimeError):
    """MLflow cannot be used (unreachable server, bad URI)."""


def resolve_uri(cli_uri: Optional[str], recipe_uri: Optional[str]) -> str:
    """--tracking-uri, then the recipe's tracking.uri, then $MLFLOW_TRACKING_URI, then sqlite in the working directory."""
    uri = cli_uri or recipe_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


@dataclass
class StageRun:
    run_id: str
    status: str
    tags: dict[str, str]
    metrics: dict[str, float]
    params: dict[str, str]


def quiet_mlflow() -> None:
    """No telemetry call, and no tqdm bar per artifact download on stderr (the runner shows its own progress and
    keeps stderr for one-line errors); a user's own setting of either wins."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class Tracker:
    def __init__(self, uri: str, experiment: str):
        quiet_mlflow()
        self.uri = uri
        self.experiment_name = experiment
        self._client = None
        self._experiment_id: Optional[str] = None
        self._all_experiments: Optional[list[str]] = None  # for lookups: listed once per Tracker

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @timed("mlflow", per_function=True)
    def check(self) -> None:
        """Fail fast, before anything trains, when the store cannot be reached."""
        if self.uri.startswith(("http://", "https://")):
            import requests

            try:
                requests.get(self.uri.rstrip("/") + "/health", timeout=5).raise_for_status()
            except requests.RequestException as exc:
                raise TrackingError(f"cannot reach the MLflow tracking server at {self.uri}: {type(exc).__name__}") from None
        try:
            self.experiment_id  # noqa: B018  (looked up, or created, for its failure)
        except Exception as exc:
            raise TrackingError(f"cannot use MLflow tracking URI {self.uri}: {exc}") from None

    @property
    @timed("mlflow", per_function=True)
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment_name)
            if found is None:
                from mlflow.exceptions import MlflowException

                try:
                    self._experiment_id = self.client.create_experiment(self.experiment_name)
                    return self._experiment_id
                except MlflowException:  # a second `recipe run` created it a moment ago
                    found = self.client.get_experiment_by_name(self.experiment_name)
                    if found is None:
                        raise
            self._experiment_id = found.experiment_id
        return self._experiment_id

    # -- runs -------------------------------------------------------------
    @timed("mlflow", per_function=True)
    def start_run(self, name: str, tags: dict[str, str], parent_id: Optional[str] = None) -> str:
        """A run named `name`, unless `tags` carry a RUN_NAME (the name for people, records.run_name)."""
        tags = {RUN_NAME: name, **tags}
        if parent_id:
            tags[PARENT_RUN] = parent_id
        return self.client.create_run(self.experiment_id, tags=tags, run_name=tags[RUN_NAME]).info.run_id

    @timed("mlflow", per_function=True)
    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def delete(self, run_id: str) -> None:
        """Soft-delete: searches no longer see the run (a withdrawn lease claim)."""
        self.client.delete_run(run_id)

    @timed("mlflow", per_function=True)
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k)[:250], json.dumps(v) if not isinstance(v, str) else v) for k, v in params.items()]
        items = [Param(p.key, p.value[:6000]) for p in items]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    @timed("mlflow", per_function=True)
    def log_metrics(self, run_id: str, metrics: dict[str, float], step: Optional[int] = None,
                    model_id: Optional[str] = None) -> None:
        """`model_id`: the MLflow model these metrics measure (its model views show them)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_metric_key(k), float(v), now, step or 0, model_id=model_id) for k, v in metrics.items()
                 if isinstance(v, (int, float))]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i:i + 500])

    @timed("mlflow", per_function=True)
    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        """All tags in one batch: one transaction in a SQL store, one request to a server. A crash can never leave
        half of them written (e.g. a new epoch sha next to the old epoch slot, which would fail verification)."""
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    @timed("mlflow", per_function=True)
    def log_artifact(self, run_id: str, path: Path, folder: Optional[str] = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    @timed("mlflow", per_function=True)
    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    @timed("mlflow", per_function=True)
    def log_figure(self, run_id: str, figure: Any, name: str) -> None:
        self.client.log_figure(run_id, figure, name)

    @timed("mlflow", per_function=True)
    def log_dataset(self, run_id: str, dataset_input: Any, attempts: int = 4) -> None:
        """A DatasetInput (records.dataset_input): MLflow's Dataset column and run page show it; no upload.

        The server looks the dataset up and inserts it if new, not atomically: two runs logging the same new
        dataset at once make one of them fail a UNIQUE constraint. By the retry the dataset exists and is linked."""
        from mlflow.exceptions import MlflowException

        for attempt in range(attempts):
            try:
                self.client.log_inputs(run_id, datasets=[dataset_input])
                return
            except MlflowException:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))

    @timed("mlflow", per_function=True)
    def log_onnx_model(self, run_id: str, path: Path, name: str, step: int = 0) -> str:
        """Log an .onnx file as an MLflow model (ONNX flavour) of `run_id`, so it shows in MLflow's model views;
        returns the model id. `mlflow.onnx.log_model` would read the global tracking URI and experiment, so this
        does its steps with this client; pinned requirements skip requirement inference (a subprocess), and
        locking them (uv, network) is switched off for the call."""
        import mlflow.onnx
        import onnx
        from mlflow.entities import LoggedModelOutput
        from mlflow.models import Model

        logged = self.client.create_logged_model(self.experiment_id, name=name, source_run_id=run_id,
                                                 model_type="onnx")
        with (tempfile.TemporaryDirectory(prefix="recipe-runner-model-") as tmp,
              _env(MLFLOW_LOCK_MODEL_DEPENDENCIES="false")):
            local = Path(tmp) / "model"
            meta = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id,
                         model_id=logged.model_id)
            # one self-contained file (under ONNX's 2 GB limit), as the export stage wrote it
            mlflow.onnx.save_model(onnx.load(str(path)), str(local), mlflow_model=meta, save_as_external_data=False,
                                   pip_requirements=mlflow.onnx.get_default_pip_requirements())
            self.client.log_model_artifacts(logged.model_id, str(local))
        self.client.log_outputs(run_id, models=[LoggedModelOutput(logged.model_id, step=step)])
        self.client.finalize_logged_model(logged.model_id, "READY")
        return logged.model_id

    @timed("mlflow", per_function=True)
    def download(self, run_id: str, artifact: str, dest: Path) -> Path:
        """One artifact into `dest`; its path must be plain and relative (see safe_artifact_path)."""
        artifact = safe_artifact_path(artifact)
        dest.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, artifact, str(dest)))

    # -- lookup by cache key ----------------------------------------------
    @timed("mlflow", per_function=True)
    def stage_runs(self, cache_key: str) -> list[StageRun]:
        """Every stage run with this cache key, newest first, across every experiment of the store, in one query
        (the experiments are listed once per Tracker: planning asks once per stage)."""
        if self._all_experiments is None:
            self._all_experiments = [e.experiment_id for e in self.client.search_experiments()]
        return [_stage_run(r) for r in self._search(self._all_experiments, cache_key)]

    @timed("mlflow", per_function=True)
    def runs_for(self, cache_key: str) -> list[StageRun]:
        """Every stage run with this cache key, newest first, read fresh (experiments too: a colleague's recipe may
        have created its experiment after this process started)."""
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        return [_stage_run(r) for r in self._search(experiments, cache_key)]

    def stage_run(self, run_id: str) -> StageRun:
        return _stage_run(self.client.get_run(run_id))

    def kill_running_children(self, parent_id: str) -> None:
        """Mark KILLED every stage run of this recipe run that is still RUNNING (its task was killed)."""
        runs = self.client.search_runs([self.experiment_id], f"tags.`{PARENT_RUN}` = '{parent_id}'")
        for run in runs:
            if run.info.status == "RUNNING":
                self.finish(run.info.run_id, "KILLED")

    def _search(self, experiments: list[str], cache_key: str) -> list:
        return self.client.search_runs(
            experiments, filter_string=f"tags.`{CACHE_KEY}` = '{cache_key}' and tags.`{ROLE}` = 'stage'",
            order_by=["attributes.start_time DESC"], max_results=50,
        )


def _metric_key(name: str) -> str:
    return name.replace("(", "_").replace(")", "")


@contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for one call and restore them after: MLflow reads its switches from there."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _stage_run(run) -> StageRun:
    return StageRun(run.info.run_id, run.info.status, dict(run.data.tags), dict(run.data.metrics), dict(run.data.params))
