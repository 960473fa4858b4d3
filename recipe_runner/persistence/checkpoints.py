"""Stage checkpoints: written atomically, identified by sha256, loaded only as plain data + tensors."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or not what MLflow says it is."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(payload: dict[str, Any], path: Path, durable: bool = True) -> str:
    """Write to a temporary file in the same folder, fsync, then rename: a crash leaves the old file or none.
    `durable=False` skips the fsync (a killed process still leaves a whole file; a power cut may not), for files
    whose reader falls back to another copy."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256_of(path)


def load_checkpoint(path: Path, expected_sha256: str | None) -> dict[str, Any]:
    """Verify the hash recorded in MLflow, then load with weights_only=True (no code is unpickled)."""
    import torch

    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing")
    if expected_sha256 is None:
        raise CheckpointError(f"checkpoint {path} has no recorded sha256; refusing to trust it")
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: sha256 {actual[:12]}... != recorded {expected_sha256[:12]}..."
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an unpicklable class means someone put code in it
        raise CheckpointError(f"checkpoint {path} does not load as plain data: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a recipe-runner checkpoint (format {FORMAT})")
    return payload


class EpochCadence:
    """When a training stage writes its resumable epoch checkpoint (model, EMA, optimizer: for a big model on a
    remote store, hundreds of MB per upload).

    `every=N`: every N-th epoch. `every="auto"`: after any epoch at which the time since the last checkpoint is
    at least `1/share` times what that checkpoint took, so checkpoints cost about `share` of the training time:
    a small model on a local store still checkpoints every epoch, a big one on a slow link every few minutes.
    The first epoch is always written (it measures the cost). A kill loses the epochs since the last one.
    """

    def __init__(self, every: int | str = "auto", share: float = 0.03, clock: Callable[[], float] = time.monotonic):
        self.every = every
        self.share = share
        self.clock = clock
        self.last_epoch: int | None = None
        self.last_end = 0.0
        self.last_cost = 0.0

    def due(self, epoch: int) -> bool:
        if self.last_epoch is None:
            return True
        if self.every != "auto":
            return epoch - self.last_epoch >= int(self.every)
        return self.clock() - self.last_end >= self.last_cost / self.share

    def written(self, epoch: int, started: float) -> None:
        """Record a checkpoint of `epoch` that began at `started` (this cadence's clock) and has just finished."""
        self.last_epoch, self.last_end = epoch, self.clock()
        self.last_cost = self.last_end - started
