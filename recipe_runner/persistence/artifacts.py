"""A run's files: where the runner puts them, and fetching one without letting its path leave the folder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..timing import timed
from .store import Store

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
        raise UnsafeArtifactPath(
            f"artifact path {str(path)[:120]!r} is not a plain relative path; refusing to download it"
        )
    return path


def epoch_artifact(slot: int) -> str:
    """Epoch checkpoints alternate between two slots, so the one the tags point to is never being overwritten."""
    return f"epoch/{slot}/state.pt"


@timed("mlflow", per_function=True)
def download(store: Store, run_id: str, artifact: str, dest: Path) -> Path:
    """One artifact into `dest`; its path must be plain and relative (see safe_artifact_path)."""
    artifact = safe_artifact_path(artifact)
    dest.mkdir(parents=True, exist_ok=True)
    return Path(store.client.download_artifacts(run_id, artifact, str(dest)))
