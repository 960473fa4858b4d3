"""The connection to a tracking store: its URI, one MLflow client, the experiment the runner writes to.

Uses MlflowClient with explicit run ids (no global "active run"), so nesting is just the parent-run tag and
nothing leaks into other code's runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..timing import timed


class TrackingError(RuntimeError):
    """MLflow cannot be used (unreachable server, bad URI)."""


def resolve_uri(cli_uri: str | None, recipe_uri: str | None) -> str:
    """--tracking-uri, then the recipe's tracking.uri, then $MLFLOW_TRACKING_URI, then sqlite in the working
    directory."""
    uri = cli_uri or recipe_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def quiet_mlflow() -> None:
    """No telemetry call, and no tqdm bar per artifact download on stderr (the runner shows its own progress and
    keeps stderr for one-line errors); a user's own setting of either wins."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class Store:
    """A tracking URI and an experiment name; the client and the experiment are made on first use (a store that
    is never asked is never contacted)."""

    def __init__(self, uri: str, experiment: str):
        quiet_mlflow()
        self.uri = uri
        self.experiment_name = experiment
        self._client: Any = None
        self._experiment_id: str | None = None

    @property
    def client(self) -> Any:
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
                raise TrackingError(
                    f"cannot reach the MLflow tracking server at {self.uri}: {type(exc).__name__}"
                ) from None
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
