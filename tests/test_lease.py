"""Lease decisions, the claim protocol and concurrent dataset generation, without training (fast)."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

from conftest import cli, write_recipe
from mlflow.tracking import MlflowClient

from recipe_runner import persistence as T
from recipe_runner.data import _resolve as R
from recipe_runner.persistence import leases as L

NOW = 1_000_000.0


def run(
    run_id: str,
    status: str = "RUNNING",
    host: str = "other",
    pid: int = 42,
    age: float = 0.0,
    interval: float = 30,
    **extra: str,
) -> T.StageRun:
    tags = {**L.lease_tags(L.Owner(host, pid, "tok"), NOW - age, interval), **extra}
    return T.StageRun(run_id, status, tags, {}, {})


def live(r: T.StageRun, alive: bool = True) -> bool:
    return L.is_live(r, NOW, pid_space="here", alive=lambda pid: alive)


def test_a_lease_is_live_while_running_with_a_fresh_heartbeat_and_a_living_local_pid():
    assert live(run("a", age=10))
    assert not live(run("a", age=91))  # three missed 30 s beats
    assert live(run("a", age=91, interval=100))  # the owner's own interval counts, not the reader's
    assert not live(run("a", status="FINISHED"))
    assert not live(run("a", status="FAILED"))
    assert not live(run("a", host="here"), alive=False)  # same host, pid gone: dead at once
    assert live(run("a", host="here"))
    assert live(run("a", host="other"), alive=False)  # a pid on another host cannot be checked
    in_a_container = run("a", host="here")
    in_a_container.tags[T.LEASE_PID_SPACE] = "here pid:[4026532000]"
    assert live(in_a_container, alive=False)  # nor one in another pid namespace that shares the host name
    assert not live(T.StageRun("a", "RUNNING", {}, {}, {}))  # no lease: an older runner, nobody to wait for
    assert not live(T.StageRun("a", "RUNNING", {T.LEASE_HEARTBEAT: "soon", T.LEASE_PID: "1"}, {}, {}))


def test_a_garbled_lease_is_nobodys():
    """Lease tags are written by whoever can write to the store: one write must not make a lease live for ever
    (every reader would wait on it) nor crash the readers."""
    for garbled in (
        {T.LEASE_HEARTBEAT: "inf"},
        {T.LEASE_HEARTBEAT: "nan"},
        {T.LEASE_INTERVAL: "nan"},
        {T.LEASE_INTERVAL: "1e12"},
        {T.LEASE_HEARTBEAT: str(NOW + 10_000)},
        {T.LEASE_INTERVAL: "-30"},
    ):
        assert not live(run("a", **garbled)), garbled
    for pid in ("0", "-1", str(2**64)):  # os.kill would overflow on the last
        assert not L.is_live(run("a", host="here", **{T.LEASE_PID: pid}), NOW, pid_space="here"), pid


def test_decide_reuses_waits_withdraws_and_claims():
    def decide(runs, **kw):
        return L.decide(runs, NOW, pid_space="here", alive=lambda pid: pid != 13, **kw)

    finished = run("f", status="FINISHED", **{T.CHECKPOINT_SHA: "x"})
    holder = run("h", age=5)
    stale = run("s", host="here", pid=13, **{T.EPOCH_SHA: "e"})  # newest first: stale is newer than failed
    failed = run("x", status="FAILED", **{T.EPOCH_SHA: "e"})
    assert decide([holder, finished]) == L.Decision("reuse", finished)
    assert decide([holder, stale]) == L.Decision("wait", holder)
    assert decide([run("mine"), holder], mine="mine") == L.Decision("withdraw", holder)
    assert decide([run("mine"), stale, failed], mine="mine") == L.Decision("claim", stale)
    # a cut-off attempt with no epoch checkpoint is not resumed, but reported dead (to be marked KILLED)
    nothing_saved = run("n", host="here", pid=13)
    assert decide([run("mine"), nothing_saved, failed], mine="mine") == L.Decision("claim", failed, (nothing_saved,))
    assert decide([run("mine"), failed], mine="mine") == L.Decision("claim", failed)
    assert decide([run("mine")], mine="mine") == L.Decision("claim", None)
    assert decide([holder, finished, failed], forced=True) == L.Decision("claim", None)


class FakeStore:
    """An in-memory tracking store with read-after-write consistency, as one SQL database behind a server gives."""

    uri, experiment_name = "fake://", "fake"

    def __init__(self, runs: list[T.StageRun] = ()):
        self.runs, self.lock, self.deleted, self.reads = list(runs), threading.Lock(), [], 0
        self.ids = itertools.count(1)
        self.after_start = lambda run_id: None
        self.on_read = lambda n: None

    def runs_for(self, cache_key: str) -> list[T.StageRun]:
        self.reads += 1
        with self.lock:
            snapshot = [T.StageRun(r.run_id, r.status, dict(r.tags), {}, {}) for r in reversed(self.runs)]
        self.on_read(self.reads)  # after the read: a hook that blocks holds the reader between its read and its write
        return snapshot

    def start_run(self, name: str, tags: dict, parent_id=None) -> str:
        with self.lock:
            run_id = f"{name}-{next(self.ids)}"
            self.runs.append(T.StageRun(run_id, "RUNNING", dict(tags), {}, {}))
        self.after_start(run_id)
        return run_id

    def delete(self, run_id: str) -> None:
        with self.lock:
            self.runs = [r for r in self.runs if r.run_id != run_id]
            self.deleted.append(run_id)

    def finish(self, run_id: str) -> None:
        with self.lock:
            for r in self.runs:
                if r.run_id == run_id:
                    r.status, r.tags[T.CHECKPOINT_SHA] = "FINISHED", "sha"


def test_two_claims_that_see_each_other_both_withdraw_then_exactly_one_wins():
    store = FakeStore()
    # the worst interleaving: both read an empty store, both write their claims, both read back, then both act
    barrier, seen = threading.Barrier(2), {"read": [], "start": []}

    def in_step(event: str, times: int) -> None:
        seen[event].append(threading.current_thread().name)
        if seen[event].count(threading.current_thread().name) <= times:
            barrier.wait(timeout=10)

    store.on_read = lambda n: in_step("read", 2)
    store.after_start = lambda run_id: in_step("start", 1)
    claims: dict[str, L.Claim] = {}
    lines: list[str] = []

    def contender(name: str, delay: float) -> None:
        claims[name] = L.acquire(store, name, "key", {}, None, announce=lines.append, sleep=lambda s: time.sleep(delay))

    threads = [threading.Thread(target=contender, args=(n, d), name=n) for n, d in (("a", 0.01), ("b", 0.3))]
    for t in threads:
        t.start()
    deadline = time.time() + 10
    while not any(c.run_id for c in claims.values()) and time.time() < deadline:
        time.sleep(0.01)
    winners = [c for c in claims.values() if c.run_id]
    assert len(winners) == 1 and len(store.deleted) >= 2  # the first round: both withdrew
    store.finish(winners[0].run_id)
    for t in threads:
        t.join(timeout=10)
    loser = next(c for c in claims.values() if not c.run_id)
    assert loser.reuse.run_id == winners[0].run_id  # the other one reused the winner's result
    assert [r.run_id for r in store.runs] == [winners[0].run_id]
    for c in claims.values():
        c.release()


def test_a_waiter_announces_the_owner_once_then_reuses_or_takes_over():
    holder = run("h", host="elsewhere", pid=7, **{T.EPOCH_SHA: "e"})
    holder.tags[T.LEASE_HEARTBEAT] = f"{time.time():.3f}"
    store = FakeStore([holder])
    store.on_read = lambda n: store.finish("h") if n == 4 else None
    lines: list[str] = []
    claim = L.acquire(store, "train", "key", {}, None, announce=lines.append, sleep=lambda s: None)
    assert claim.reuse.run_id == "h" and claim.run_id is None
    assert lines == ["[wait]   train  waiting for run h owned by elsewhere:7"]

    # the holder fails instead: the waiter claims the key and resumes the failed run's epoch checkpoint
    holder = run("h", host="elsewhere", pid=7, **{T.EPOCH_SHA: "e"})
    holder.tags[T.LEASE_HEARTBEAT] = f"{time.time():.3f}"
    store = FakeStore([holder])
    store.on_read = lambda n: setattr(holder, "status", "FAILED") if n == 3 else None
    claim = L.acquire(store, "train", "key", {"k": "v"}, None, announce=lines.append, sleep=lambda s: None)
    try:
        assert claim.resume.run_id == "h" and claim.run_id == "train-1"
        mine = store.runs[-1]
        assert mine.tags["k"] == "v" and mine.tags[T.LEASE_OWNER].startswith(f"{L.me()}:")
    finally:
        claim.release()


def test_heartbeat_refreshes_the_tag_until_stopped(tmp_path: Path):
    tracker = T.Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "lease")
    run_id = tracker.start_run("stage", L.lease_tags(L.me(), 0.0))
    beat = L.Heartbeat(tracker, run_id, interval=0.05).start()
    client = MlflowClient(tracker.uri)
    deadline = time.time() + 20
    while float(client.get_run(run_id).data.tags[T.LEASE_HEARTBEAT]) == 0.0 and time.time() < deadline:
        time.sleep(0.05)
    beat.stop()
    last = client.get_run(run_id).data.tags[T.LEASE_HEARTBEAT]
    assert float(last) > 0.0
    time.sleep(0.2)
    assert client.get_run(run_id).data.tags[T.LEASE_HEARTBEAT] == last  # stopped means stopped


def test_two_writers_of_one_builtin_dataset_end_with_one_complete_copy(tmp_path: Path):
    folder = tmp_path / "datasets" / "toy-1"
    calls = {"n": 0}

    def generate(out: Path, options: dict) -> list[str]:
        calls["n"] += 1
        (out / "a.txt").write_text(str(calls["n"]))
        if calls["n"] == 1:  # a second process generates the same dataset meanwhile and finishes first
            R._generate(toy, options, folder)
        return ["x", "y"]

    toy = R.Builtin("classify", {}, 1, generate)
    R._generate(toy, {}, folder)
    assert calls["n"] == 2
    assert (folder / "a.txt").read_text() == "2" and (folder / "names.txt").read_text() == "x\ny\n"
    assert [p.name for p in folder.parent.iterdir()] == ["toy-1"]  # the loser's temp copy is gone


def test_plan_shows_wait_for_a_live_lease_and_resume_for_a_stale_one(workspace: Path):
    from recipe_runner.planner import RunOptions, prepare

    recipe = write_recipe(workspace, "  train:\n    type: train\n    epochs: 2\n")
    plan = prepare(recipe, RunOptions())
    key = plan.stages[0].node.cache_key
    tags = {T.ROLE: "stage", T.CACHE_KEY: key, T.EPOCH_SHA: "e", **L.lease_tags(L.me(), time.time())}
    run_id = plan.tracker.start_run("train", tags)  # this test process "is training it"
    assert "wait" in cli("plan", recipe).output
    plan.tracker.set_tags(run_id, {T.LEASE_HEARTBEAT: f"{time.time() - 3600:.3f}"})
    assert "resume" in cli("plan", recipe).output
