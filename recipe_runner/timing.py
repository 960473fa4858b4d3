"""Where the runner's own time goes: named sections, summed per process, written as JSON when asked.

bench/overhead.py sets $RECIPE_RUNNER_TIMINGS to a file path and reads the sections back, to split the runner's
extra wall time (MLflow, checkpoints, evaluations, measurements) from the training a hand-written script does too.
Sections nest; each keeps only its exclusive time (an MLflow upload inside an epoch checkpoint counts as MLflow),
so the totals add up without double counting. Only the main thread's time counts (the lease heartbeat's calls
overlap it and would count twice). Timing is two perf_counter calls per section: always on.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

ENV = "RECIPE_RUNNER_TIMINGS"

_totals: dict[str, float] = defaultdict(float)
_counts: dict[str, int] = defaultdict(int)
# per open section: the time its nested sections took, to subtract from its own
_stack: list[float] = []


@contextmanager
def section(name: str) -> Iterator[None]:
    """Add the block's exclusive wall time to `name`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    start = time.perf_counter()
    _stack.append(0.0)
    try:
        yield
    finally:
        nested = _stack.pop()
        elapsed = time.perf_counter() - start
        _totals[name] += elapsed - nested
        _counts[name] += 1
        if _stack:
            _stack[-1] += elapsed


F = TypeVar("F", bound=Callable)


def timed(name: str, per_function: bool = False) -> Callable[[F], F]:
    """Decorator form of `section`; `per_function` names the section `name.function` (mlflow.log_artifact)."""

    def wrap(fn: F) -> F:
        label = f"{name}.{fn.__name__}" if per_function else name

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with section(label):
                return fn(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap


def totals() -> dict[str, dict[str, float]]:
    return {name: {"seconds": round(_totals[name], 4), "calls": _counts[name]} for name in sorted(_totals)}


def write_if_asked() -> None:
    """Write the sections to $RECIPE_RUNNER_TIMINGS, if set (the benchmark's channel; nothing else reads it)."""
    path = os.environ.get(ENV)
    if path:
        Path(path).write_text(json.dumps(totals(), indent=2))
