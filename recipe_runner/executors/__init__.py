"""Executors: where the engine's ready stages run. The engine schedules (parents first, the error policy); an
executor only runs what it is given, through a StageRunner (never the Engine itself), and reports what is done.

    sequential  in this process, one stage at a time, in plan order (the default; no extra dependency)
    ray         each stage a Ray task, branches in parallel (`pip install "recipe-runner[ray]"`)

Registered here and nowhere else: `make(name, address)` is what the CLI calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol

from ..outcomes import StageFailed, StageReport

if TYPE_CHECKING:
    from ..persistence import StageRun
    from ..planner import Plan, PlannedStage

#: a done node's output as another process reaches it: the finished run holding it (None if it is only in this
#: process's memory) and the metrics its run logged
KnownOutput = tuple[Optional["StageRun"], dict[str, float]]


class StageRunner(Protocol):
    """What runs one planned stage whose parent is done (the engine is one): claim, reuse, resume or run, record.
    An executor gets this, never the Engine."""

    @property
    def plan(self) -> Plan:
        """The plan being run (its stage order, its graph, its tracker)."""

    def announce(self, line: str) -> None:
        """Tell the user one line."""

    def run_stage(self, planned: PlannedStage, parent_run_id: str, workdir: Path) -> StageReport:
        """Reuse, resume or run one stage in this process; StageFailed if it failed."""

    def known_output(self, node_id: str) -> KnownOutput:
        """Where a done node's output is, for a stage run in another process."""

    def elsewhere(self) -> RunnerFactory:
        """A picklable function that builds the same kind of runner in another process, from the plan (with its
        own tracker) and the done outputs the stage reads."""


#: builds a StageRunner in another process (a Ray worker): plan, announce, and node id -> its known output
RunnerFactory = Callable[["Plan", Callable[[str], None], dict[str, KnownOutput]], StageRunner]


class ExecutorUnavailable(RuntimeError):
    """An executor cannot be used here (its extra is not installed, its cluster cannot be reached): a usage error."""


@dataclass
class Done:
    """One stage the executor finished: its report, or the failure (never both)."""

    planned: PlannedStage
    report: StageReport | None = None
    error: StageFailed | None = None
    # the finished run that holds the stage's output, when the stage ran in another process: its children
    # fetch the checkpoint (or file) from the tracking store through it, never from driver memory
    source: StageRun | None = None


class Executor(ABC):
    """Runs ready stages. Used as a context manager around Engine.run (whoever builds an Engine gives it one):
    entering may start things (a cluster, a tracking server) and may give the plan a tracker that takes concurrent
    writers; leaving stops them."""

    name = ""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def prepare(self, plan: Plan) -> Plan:
        """The plan the engine should run (default: as it is)."""
        return plan

    @abstractmethod
    def submit(self, runner: StageRunner, planned: PlannedStage, parent_run_id: str, workdir: Path) -> None:
        """Start (or queue) one stage whose parent is done; `runner` runs it (here, or rebuilt elsewhere)."""

    @abstractmethod
    def wait(self) -> list[Done]:
        """Block until at least one submitted stage is done; return every stage done since the last call."""

    @abstractmethod
    def cancel(self) -> None:
        """Stop every submitted stage (Ctrl-C, SIGTERM, or a failure under on_error='stop'): their stage runs end
        KILLED, so a re-run resumes them."""


def _sequential(address: str | None) -> Executor:
    from .sequential import SequentialExecutor

    if address:
        raise ExecutorUnavailable("--address needs --executor ray")
    return SequentialExecutor()


def _ray(address: str | None) -> Executor:
    from .ray_executor import RayExecutor

    return RayExecutor(address)


EXECUTORS: dict[str, Callable[[str | None], Executor]] = {"sequential": _sequential, "ray": _ray}


def make(name: str, address: str | None = None) -> Executor:
    """The executor registered under `name`; ExecutorUnavailable (one line for the user) if it cannot be used."""
    if name not in EXECUTORS:
        raise ExecutorUnavailable(f"unknown executor '{name}' (choose from: {', '.join(EXECUTORS)})")
    return EXECUTORS[name](address)
