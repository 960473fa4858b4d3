"""Multi-GPU YOLO training (`device: [0, 1]`): Ultralytics' DDP workers, with the runner's records kept.

Ultralytics trains on several GPUs by writing the trainer's class, args, model and callbacks
into a state file (cloudpickle) and launching `torch.distributed.run` on a script that loads
it. The runner's trainer class carries its hooks and resume state (see make_trainer_class),
its model is the pruned module itself, and its epoch callbacks send to a SpoolSink: rank 0
alone writes each epoch's metrics, and the final model, as plain-data files in a spool
folder. The launching process, the one that owns the stage's MLflow run, relays them while
the workers train (SpoolRelay): the same logging and checkpoints as training in-process, and
the trained model comes back through the family's `rebuild`, on the CPU, like any checkpoint.

The stage's checkpoint cadence lives in the launching process (`auto` is timed there), so
the relay keeps a `want-state` file in the spool exactly while the next epoch's state is
due; rank 0 builds and writes a resumable state only when it finds that file, so the other
ranks, waiting at the epoch's closing broadcast, wait for no checkpoint nobody asked for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...persistence.checkpoints import save_checkpoint

if TYPE_CHECKING:
    from .training import ContextSink

POLL_S = 1.0  # how often the launching process relays finished epochs
# after Ctrl-C or a Ray cancel, how long the workers get to exit before they are killed (under the Ray executor's
# own 30 s grace, so the workers are gone before Ray kills this process)
STOP_GRACE_S = 15.0
FINAL = "final.pt"
WANT_STATE = "want-state"


def _rank() -> int:
    """This process's DDP rank as torch.distributed.run sets it (-1: not a DDP worker), read when needed."""
    return int(os.environ.get("RANK", -1))


@dataclass
class SpoolSink:
    """In a DDP worker: rank 0 writes each epoch and the final model into `folder` (atomically); other ranks
    write nothing."""

    folder: Path
    describe: Callable[[nn.Module], dict]

    def epoch_end(self, epoch: int, metrics: dict[str, float], state: Callable[[], dict | None]) -> None:
        if _rank() in (-1, 0):
            wanted = state() if (self.folder / WANT_STATE).exists() else None
            save_checkpoint(
                {"epoch": epoch, "metrics": metrics, "state": wanted}, self.folder / f"epoch-{epoch:06d}.pt"
            )

    def finish(self, model: nn.Module, metrics: dict[str, float], epoch: int) -> None:
        if _rank() in (-1, 0):
            save_checkpoint({"epoch": epoch, "metrics": metrics, "model": self.describe(model)}, self.folder / FINAL)


class SpoolRelay:
    """In the launching process: hand the workers' spooled epochs and final model to the stage's ContextSink."""

    def __init__(self, folder: Path, sink: ContextSink, rebuild: Callable[[dict], nn.Module], start_epoch: int):
        self.folder = folder
        self.sink = sink
        self.rebuild = rebuild
        self.next_epoch = start_epoch + 1
        folder.mkdir(parents=True, exist_ok=True)
        self.ask_for_state()

    def pump(self) -> int:
        """Relay every finished epoch not relayed yet, in order, and say whether the next one's state is due; how
        many were relayed."""
        relayed = 0
        # save_checkpoint writes ".epoch-*" temporaries and renames: "epoch-*" files are complete
        for path in sorted(self.folder.glob("epoch-*.pt")):
            payload = _load(path)
            epoch = int(payload["epoch"])
            # a state the cadence no longer wants (one was just saved) is dropped; one it wants but the worker
            # was not asked for in time comes with a later epoch
            self.sink.epoch_end(epoch, dict(payload["metrics"]), lambda: payload["state"])  # noqa: B023  (called at once)
            path.unlink()
            self.next_epoch = epoch + 1
            relayed += 1
        self.ask_for_state()
        return relayed

    def ask_for_state(self) -> None:
        flag = self.folder / WANT_STATE
        if self.sink.state_due(self.next_epoch):
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def finish(self) -> None:
        path = self.folder / FINAL
        if not path.is_file():
            raise RuntimeError("the DDP training workers exited without writing the trained model")
        payload = _load(path)
        self.sink.finish(self.rebuild(payload["model"]), dict(payload["metrics"]), int(payload["epoch"]))


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def launches_workers(trainer: Any) -> bool:
    """Whether this trainer trains in DDP worker processes (Ultralytics decides: several devices, not a worker)."""
    return bool(trainer.ddp)


def worker_command(trainer: Any) -> tuple[list[str], str]:
    """Ultralytics' own DDP launch: it writes the state file and the worker script; (command, script path)."""
    from ultralytics.utils.dist import generate_ddp_command

    return generate_ddp_command(trainer)


def train_in_workers(trainer: Any, relay: SpoolRelay) -> None:
    """Run the DDP workers to the end, relaying their epochs as they finish; Ctrl-C stops them, keeping the epochs
    they finished."""
    from ultralytics.utils.dist import ddp_cleanup

    # what Ultralytics' own DDP branch of train() does before launching
    trainer.args.rect = False
    script = None
    try:
        command, script = worker_command(trainer)
        process = subprocess.Popen(command, preexec_fn=_die_with_parent)
        try:
            code = _wait_relaying(process, relay)
        except BaseException:
            _stop(process)
            # keep the epochs the workers finished; the error being raised is the one to report
            with contextlib.suppress(Exception):
                relay.pump()
            raise
        relay.pump()
        if code != 0:
            raise RuntimeError(f"the DDP training workers exited with code {code} (their output is above)")
        relay.finish()
    finally:
        if script is not None:
            ddp_cleanup(trainer, str(script))


def _wait_relaying(process: subprocess.Popen, relay: SpoolRelay) -> int:
    while True:
        try:
            return process.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            relay.pump()


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (torch.distributed.run passes it to its workers), then SIGKILL: also if a second Ctrl-C comes."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _die_with_parent() -> None:
    """In the launcher's child, before exec (Linux): SIGTERM it when this process dies, even by SIGKILL, so no
    workers are left holding the GPUs."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
