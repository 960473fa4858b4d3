"""What a run reports: one stage's report, a stage's failure, a run that ended FAILED, a search with no feasible
trial. Plain types that import nothing of the engine, so the executors (below the engine) can build them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StageReport:
    node_id: str
    action: str  # reuse | resume | run, or under keep-going: failed | skipped
    run_id: str
    metrics: dict[str, float]
    seconds: float
    error: str = ""  # failed: the error; skipped: which failed stage it depends on


class StageFailed(RuntimeError):
    def __init__(self, node_id: str, error: BaseException, run_id: str = ""):
        self.node_id = node_id
        self.error = error
        self.run_id = run_id
        # an error raised in another process travels by name (executors.RemoteError): its class may not exist here
        kind = getattr(error, "kind", None) or type(error).__name__
        super().__init__(f"stage '{node_id}' failed: {kind}: {error}")


class RunFailed(RuntimeError):
    """Under on_error='keep-going': the run went on past failed stages and ended FAILED; `reports` has every stage,
    the failed ones (action 'failed') and their descendants (action 'skipped', no run started) included."""

    def __init__(self, reports: list[StageReport]):
        self.reports = reports
        self.failed = [r for r in reports if r.action == "failed"]
        self.skipped = [r for r in reports if r.action == "skipped"]
        super().__init__(
            f"{len(self.failed)} stage(s) failed, {len(self.skipped)} skipped: "
            + "; ".join(r.error for r in self.failed)
        )


class SearchFailed(RuntimeError):
    """No trial met every constraint (or every trial failed): the run ends FAILED, the trials are kept.
    `reports` holds every finished stage (the shared ones and the trials'), so a caller of Engine.run (a benchmark)
    can still read what each trial measured, as RunFailed gives them."""

    def __init__(self, message: str, reports: list[StageReport]):
        self.reports = reports
        super().__init__(message)
