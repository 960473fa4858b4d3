"""Leases: who is training a cache key right now, so two `recipe run`s on one tracking store never train it twice
and never mark each other's live run KILLED.

A stage run that trains carries its lease in its MLflow tags: the owner (host, pid and a random token per
process), the owner's heartbeat interval, and a heartbeat (unix seconds) that a background thread refreshes every
HEARTBEAT_S while the stage runs. A lease is live while its run is RUNNING, its heartbeat is younger than
MISSED_BEATS intervals, and, when the owner's pid is one this process can check (same host name and same pid
namespace, so two containers that share a host name do not judge each other's pids), its pid exists. Anything
else is stale: the owner died (SIGKILL, power loss, a lost machine) and the run may be taken over by resuming
its epoch checkpoint.

The decision is made when the engine reaches a stage, not only at plan time (`acquire`): reuse a FINISHED run,
wait for a live lease and then look again, or claim the key. The claim is a compare-and-check, because MLflow
has no transactions across runs: create my RUNNING run with my lease tags, then read every run of the key again.
If any other live lease shows up, withdraw (delete my run), wait a random moment and start over; otherwise the
key is mine. Two claimers can never both win on a store that is consistent for reads after writes (one SQL
database behind `mlflow server`): of two claims, the later one's read comes after the earlier one's write, so
the later one sees it and withdraws; the earlier one keeps its claim or withdraws too, and then both retry after
different random delays. Neither winner depends on clocks.

What remains: a heartbeat is the owner's wall clock read by another host, so clocks that disagree by more than
MISSED_BEATS intervals (90 s by default) make a live lease look stale; an owner that cannot reach the server for
that long (network partition, a suspended laptop) is presumed dead and its stage is taken over, while it keeps
training too (it does not check its lease again): then the key is trained twice. A run started by a runner
without leases has no heartbeat and counts as stale. A holder that hangs but keeps beating is waited for.
`--force` does not wait for anyone (it writes a lease, so others wait for it). A local sqlite file takes one writer
at a time: parallel runs belong on `mlflow server`.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .lookup import StageRun
from .tags import (
    CHECKPOINT_SHA,
    EPOCH_SHA,
    LEASE_HEARTBEAT,
    LEASE_HOST,
    LEASE_INTERVAL,
    LEASE_OWNER,
    LEASE_PID,
    LEASE_PID_SPACE,
)
from .tracker import Tracker

#: seconds between heartbeats; tests set RECIPE_RUNNER_HEARTBEAT_S to 1 so a dead owner goes stale quickly
HEARTBEAT_S = float(os.environ.get("RECIPE_RUNNER_HEARTBEAT_S") or 30)
#: a lease whose heartbeat is older than this many of its owner's intervals is stale
MISSED_BEATS = 3
#: the longest heartbeat interval a lease may declare
MAX_INTERVAL_S = 3600.0
#: how often a waiting process looks at the run it waits for
POLL_S = min(5.0, HEARTBEAT_S)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    token: str  # tells apart two processes that had the same pid (a reboot, a container restart)
    pid_space: str = ""  # where `pid` means this process: host name and pid namespace (default: the host name)

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


_ME: Owner | None = None


def me() -> Owner:
    """This process as a lease owner; a forked child gets its own pid and token."""
    global _ME
    if _ME is None or _ME.pid != os.getpid():
        _ME = Owner(socket.gethostname(), os.getpid(), secrets.token_hex(8), local_pid_space())
    return _ME


def local_pid_space() -> str:
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # e.g. "pid:[4026531836]": differs per container
    except OSError:  # not Linux
        namespace = ""
    return f"{socket.gethostname()} {namespace}".strip()


def lease_tags(owner: Owner, now: float, interval: float = HEARTBEAT_S) -> dict[str, str]:
    return {
        LEASE_OWNER: f"{owner}:{owner.token}",
        LEASE_HOST: owner.host,
        LEASE_PID: str(owner.pid),
        LEASE_PID_SPACE: owner.pid_space or owner.host,
        LEASE_HEARTBEAT: f"{now:.3f}",
        LEASE_INTERVAL: f"{interval:g}",
    }


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def is_live(run: StageRun, now: float, pid_space: str | None = None, alive: Callable[[int], bool] = pid_alive) -> bool:
    """Whether someone is training this run right now (see the module docstring for the rule)."""
    if run.status != "RUNNING":
        return False
    try:
        beat, interval = float(run.tags[LEASE_HEARTBEAT]), float(run.tags.get(LEASE_INTERVAL, HEARTBEAT_S))
        pid = int(run.tags[LEASE_PID])
    except (KeyError, ValueError):  # no lease (an older runner, a hand-made run) or a garbled one: nobody to wait for
        return False
    # garbled too, and nobody's: nan or inf, a beat further ahead than the clock tolerance, an interval of hours
    # (one write would make a lease live for ever), a pid no system has (os.kill would overflow)
    tolerance = MISSED_BEATS * interval
    if not (0 < interval <= MAX_INTERVAL_S and now - tolerance <= beat <= now + tolerance and 0 < pid < 2**31):
        return False
    # only a pid of this host and pid namespace can be checked; elsewhere the heartbeat alone decides
    return run.tags.get(LEASE_PID_SPACE) != (pid_space or local_pid_space()) or alive(pid)


@dataclass(frozen=True)
class Decision:
    action: str  # reuse | wait | claim | withdraw
    run: StageRun | None = None  # reuse: the finished run; wait/withdraw: the live lease; claim: what to resume
    # claim: other RUNNING runs of the key whose owner is gone (killed before, or without, an epoch checkpoint);
    # the claimer marks them KILLED once its stage is done, else they show as running forever
    dead: tuple[StageRun, ...] = ()


def decide(
    runs: list[StageRun],
    now: float,
    mine: str | None = None,
    forced: bool = False,
    pid_space: str | None = None,
    alive: Callable[[int], bool] = pid_alive,
    done: str = CHECKPOINT_SHA,
) -> Decision:
    """What to do with a cache key, given all its runs (newest first). `mine` is my claim run once written: then
    another live lease means withdraw, and nothing else means the claim holds. `done` is the tag a finished run
    of this stage type carries (tags.done_tag). Pure, for tests."""
    if not forced:
        finished = next((r for r in runs if r.status == "FINISHED" and done in r.tags), None)
        if finished is not None:
            return Decision("reuse", finished)
        live = [r for r in runs if r.run_id != mine and is_live(r, now, pid_space, alive)]
        if live:
            return Decision("withdraw" if mine else "wait", live[-1])  # the oldest: the one most likely to win
    resumable = (
        None
        if forced
        else next((r for r in runs if r.run_id != mine and r.status != "FINISHED" and EPOCH_SHA in r.tags), None)
    )
    dead = tuple(
        r
        for r in runs
        if r.run_id != mine and r.status == "RUNNING" and r is not resumable and not is_live(r, now, pid_space, alive)
    )
    return Decision("claim", resumable, dead)


class Heartbeat:
    """Refresh a run's heartbeat tag every `interval` seconds from a daemon thread, with its own MLflow client
    (clients are not shared across threads). A failed beat is logged, not raised: the stage must not die for it."""

    def __init__(self, tracker: Tracker, run_id: str, interval: float = HEARTBEAT_S):
        self.run_id, self.interval = run_id, interval
        self._tracker = Tracker(tracker.uri, tracker.experiment_name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{run_id[:8]}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 10)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._tracker.set_tags(self.run_id, {LEASE_HEARTBEAT: f"{time.time():.3f}"})
            except Exception as exc:  # a blip; MISSED_BEATS of them in a row and others may take over
                log.warning("lease heartbeat for run %s failed: %s", self.run_id[:8], exc)


@dataclass
class Claim:
    """The outcome of `acquire`: either a finished run to reuse, or my new RUNNING run (with a live heartbeat)
    and, if any, the unfinished run whose epoch checkpoint it should resume."""

    reuse: StageRun | None = None
    run_id: str | None = None
    resume: StageRun | None = None
    heartbeat: Heartbeat | None = None
    dead: tuple[StageRun, ...] = ()  # cut-off attempts with nothing to resume (see Decision.dead)

    def release(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()


def acquire(
    tracker: Tracker,
    name: str,
    cache_key: str,
    tags: dict[str, str],
    parent_id: str | None,
    forced: bool = False,
    announce: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    done: str = CHECKPOINT_SHA,
) -> Claim:
    """Reuse, wait, or claim `cache_key` at the moment its stage starts; returns once there is something to reuse
    or the key is mine. The claim protocol and its limits are in the module docstring."""
    waited_for: str | None = None
    while True:
        decision = decide(tracker.runs_for(cache_key), time.time(), forced=forced, done=done)
        if decision.action == "reuse":
            return Claim(reuse=decision.run)
        if decision.action == "wait":
            holder = decision.run
            if holder.run_id != waited_for:
                waited_for = holder.run_id
                owner = f"{holder.tags.get(LEASE_HOST, '?')}:{holder.tags.get(LEASE_PID, '?')}"
                announce(f"[wait]   {name}  waiting for run {holder.run_id[:8]} owned by {owner}")
            sleep(POLL_S)
            continue
        run_id = tracker.start_run(name, {**tags, **lease_tags(me(), time.time())}, parent_id)
        try:
            decision = decide(tracker.runs_for(cache_key), time.time(), mine=run_id, forced=forced, done=done)
            if decision.action == "claim":
                return Claim(
                    run_id=run_id, resume=decision.run, heartbeat=Heartbeat(tracker, run_id).start(), dead=decision.dead
                )
        except BaseException:
            tracker.delete(run_id)
            raise
        tracker.delete(run_id)  # someone else holds it or finished it: my claim never happened
        if decision.action == "reuse":
            return Claim(reuse=decision.run)
        # both claims saw each other and both withdrew: different random delays let one of them go first
        sleep(random.uniform(0.1, POLL_S))
