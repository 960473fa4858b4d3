"""What a person reads in MLflow: run names, the parent run's stage table and pipeline metrics, the dataset input.

Pure functions from the runner's objects to MLflow's: runs.py does the writes, the
engine decides when. Node ids and tags keep their exact form (they are how the runner
finds runs); only what a person reads is shortened here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

# per-stage metrics copied to the parent run, one step per stage in run order: the parent row gets its own
# chart, and two recipe runs overlay in MLflow's chart view (the primary metric is added by name)
PIPELINE_METRICS = ("macs", "params", "size_mb")
PIPELINE_PREFIX = "pipeline/"


def run_name(stage_id: str, sweep: dict[str, Any]) -> str:
    """`prune[ratio=0.3]` for the node `prune[prune.ratio=0.3]`: a sweep key loses its stage prefix unless two
    swept stages share the key (then both keep it, or the name would not say which stage's value it is)."""
    if not sweep:
        return stage_id
    short = {key: key.split(".", 1)[-1] for key in sweep}
    clashes = {s for s in short.values() if list(short.values()).count(s) > 1}
    parts = [f"{key if short[key] in clashes else short[key]}={value}" for key, value in sweep.items()]
    return f"{stage_id}[{','.join(parts)}]"


def parent_run_name(recipe_name: str, started: datetime | None = None) -> str:
    """The recipe's name and its local start time to the second: two runs of one recipe differ at a glance."""
    return f"{recipe_name} @ {(started or datetime.now()):%m-%d %H:%M:%S}"


def unique_name(name: str, taken: set[str]) -> str:
    """`name`, or `name #2`, `#3`, ... when taken: two recipe runs started within one second (a re-run that
    reuses every stage) must not share a name in MLflow's run list."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name} #{n}"
    return candidate


def pipeline_metrics(metrics: dict[str, float], primary: str) -> dict[str, float]:
    """One stage's point on the parent run's pipeline chart (only the metrics the stage logged)."""
    names = (primary, *PIPELINE_METRICS)
    return {PIPELINE_PREFIX + name: float(metrics[name]) for name in names if name in metrics}


@dataclass
class StageRow:
    """One line of the parent run's stage table."""

    name: str
    type: str
    action: str
    metrics: dict[str, float]


def stage_table(rows: Iterable[StageRow], primary: str) -> str:
    """A markdown table of the stages, for the parent run's description (MLflow renders it)."""
    lines = [
        f"| stage | type | action | {primary} | MACs | params | size |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        m = row.metrics
        size = f"{m['size_mb']:.3g} MB" if "size_mb" in m else "-"
        cells = [
            row.name,
            row.type,
            row.action,
            _number(m.get(primary), 4),
            _si(m.get("macs")),
            _si(m.get("params")),
            size,
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


# MLflow cuts a longer tag value (the description is the tag mlflow.note.content) wherever it falls, mid-row
NOTE_LIMIT = 8000


def description(recipe_description: str, table: str, status: str = "FINISHED", limit: int = NOTE_LIMIT) -> str:
    """The recipe's own `description:` first, then the stage table; a run that did not finish says so. A table too
    long for MLflow's limit (a search's trials) keeps the rows that fit and says how many it left out."""
    lines = table.split("\n")
    head, rows = lines[:2], lines[2:]
    for kept in range(len(rows), -1, -1):
        shown = "\n".join(head + rows[:kept])
        if kept < len(rows):
            left = len(rows) - kept
            shown += f"\n\n{left} more stage(s) not listed here (MLflow keeps {limit} characters): see the child runs."
        text = _joined(recipe_description, shown, status)
        if len(text) <= limit:
            return text
    return text[:limit]


def _joined(recipe_description: str, table: str, status: str) -> str:
    parts = [recipe_description.strip()] if recipe_description.strip() else []
    parts.append("### Stages\n\n" + table)
    if status != "FINISHED":
        parts.append(f"The run ended **{status}** before every stage was done.")
    return "\n\n".join(parts) + "\n"


def dataset_input(data: Any, context: str) -> Any:
    """The recipe's data as an MLflow DatasetInput: name, digest = the data fingerprint (the runner's cache keys
    use the same), source = the builtin spec or the resolved user path. A reference only: nothing is uploaded."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    if data.spec.startswith("builtin:"):
        name = data.spec[len("builtin:") :].partition("?")[0]
        source_type, source = "code", data.spec
    else:
        path = Path(data.path)
        # a data.yaml is named by its folder (coco8/data.yaml -> coco8); an ImageFolder root by itself
        name = path.parent.name if path.is_file() else path.name
        source_type, source = "local", str(path)
    profile = json.dumps({"task": data.task, "classes": len(data.names)})
    dataset = Dataset(
        name=name, digest=data.fingerprint, source_type=source_type, source=json.dumps({"uri": source}), profile=profile
    )
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _si(value: float | None) -> str:
    """1234567 -> 1.23 M: MACs and params are read by their order of magnitude."""
    if value is None:
        return "-"
    for scale, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " K")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"
