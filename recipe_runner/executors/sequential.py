"""The default executor: every stage in this process, one at a time, in plan order — as the engine always ran."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..outcomes import StageFailed
from . import Done, Executor, StageRunner

if TYPE_CHECKING:
    from ..planner import PlannedStage


class SequentialExecutor(Executor):
    name = "sequential"

    def __init__(self) -> None:
        self._queue: list[tuple[StageRunner, PlannedStage, str, Path]] = []

    def submit(self, runner: StageRunner, planned: PlannedStage, parent_run_id: str, workdir: Path) -> None:
        self._queue.append((runner, planned, parent_run_id, workdir))

    def wait(self) -> list[Done]:
        # plan order (topological, file order among siblings): the order runs had before executors existed
        first = min(range(len(self._queue)), key=lambda i: self._queue[i][0].plan.stages.index(self._queue[i][1]))
        runner, planned, parent_run_id, workdir = self._queue.pop(first)
        try:
            return [Done(planned, report=runner.run_stage(planned, parent_run_id, workdir))]
        except StageFailed as exc:
            return [Done(planned, error=exc)]

    def cancel(self) -> None:
        # the running stage (this process) already marked its run KILLED on its way out; the rest never started
        self._queue.clear()
