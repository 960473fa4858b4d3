"""An exported ONNX file as an MLflow logged model of its stage run, so MLflow's model views show it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..timing import timed
from .store import Store


@timed("mlflow", per_function=True)
def log_onnx_model(store: Store, run_id: str, path: Path, name: str, step: int = 0) -> str:
    """Log an .onnx file as an MLflow model (ONNX flavour) of `run_id`; returns the model id.
    `mlflow.onnx.log_model` would read the global tracking URI and experiment, so this does its steps with the
    store's client; pinned requirements skip requirement inference (a subprocess), and locking them (uv,
    network) is switched off for the call."""
    import mlflow.onnx
    import onnx
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    client = store.client
    logged = client.create_logged_model(store.experiment_id, name=name, source_run_id=run_id, model_type="onnx")
    with (
        tempfile.TemporaryDirectory(prefix="recipe-runner-model-") as tmp,
        _env(MLFLOW_LOCK_MODEL_DEPENDENCIES="false"),
    ):
        local = Path(tmp) / "model"
        meta = Model(
            artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id, model_id=logged.model_id
        )
        # one self-contained file (under ONNX's 2 GB limit), as the export stage wrote it
        mlflow.onnx.save_model(
            onnx.load(str(path)),
            str(local),
            mlflow_model=meta,
            save_as_external_data=False,
            pip_requirements=mlflow.onnx.get_default_pip_requirements(),
        )
        client.log_model_artifacts(logged.model_id, str(local))
    client.log_outputs(run_id, models=[LoggedModelOutput(logged.model_id, step=step)])
    client.finalize_logged_model(logged.model_id, "READY")
    return logged.model_id


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
