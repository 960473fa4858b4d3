"""`recipe ui`: MLflow's web UI opened where a recipe's runs are compared, not on its GenAI home page.

MLflow 3.17 lands a new visitor on the GenAI overview, and its runs table shows a recipe run as one collapsed row
with no metric. Two pieces of URL state, read from MLflow's own UI code and checked in a real Chromium
(tests/test_ui_screenshot.py), open the comparison instead:
- `workflowType=machine_learning` opens the "Model training" view, and `compareRunsMode=CHART` its chart view;
- `viewStateShareKey=<key>` loads a *shared view*: a JSON UI state kept in the experiment tag
  `mlflow.sharedViewState.<key>` (what MLflow's own "share" button writes). Ours filters the charts to the
  recipe runs' `pipeline/*` metrics (one step per stage, the recipe runs overlaid; records.py) and preselects the
  stages' metrics as table columns, for when the user switches to the table and expands a recipe run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import webbrowser
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from . import persistence as T
from .persistence import LocalServer, is_file_store, needs_server
from .persistence.records import PIPELINE_METRICS, PIPELINE_PREFIX

SHARED_VIEW_TAG = "mlflow.sharedViewState."  # + key: the experiment tag MLflow's UI reads a shared view from
ML_VIEW = "workflowType=machine_learning"  # the "Model training" view instead of the GenAI overview


class UiError(ValueError):
    """The store cannot be shown in MLflow's UI by this command (exit 2)."""


@dataclass
class Landing:
    experiment_id: str
    share_key: str | None  # None when the store refused the experiment tag: the link still opens the charts

    def link(self, base: str) -> str:
        query = f"{ML_VIEW}&compareRunsMode=CHART" + (f"&viewStateShareKey={self.share_key}" if self.share_key else "")
        return f"{base.rstrip('/')}/#/experiments/{self.experiment_id}/runs?{query}"


def view_state(metric_names: list[str]) -> dict[str, Any]:
    """The shared view: the recipe runs' `pipeline/*` charts, and the stage metrics (the primary one first), what
    each stage did and the recipe run's overrides as table columns next to MLflow's Dataset and Models."""
    ordered = sorted(
        metric_names,
        key=lambda m: (m in PIPELINE_METRICS, PIPELINE_METRICS.index(m) if m in PIPELINE_METRICS else 0, m),
    )
    columns = [
        "attributes.`Dataset`",
        "attributes.`Models`",
        *(f"metrics.`{m}`" for m in ordered),
        f"tags.`{T.ACTION}`",
        "params.`overrides`",
    ]
    # a regular expression: size_mb follows params, and without it the primary metric, MACs and params fit in
    # one row of charts beside the run list (MLflow orders charts by name)
    return {"chartsSearchFilter": f"^{PIPELINE_PREFIX}(?!size_mb$)", "selectedColumns": columns}


def share(client: Any, experiment_id: str, state: dict[str, Any]) -> str | None:
    """Store `state` as a shared view of the experiment and return its key (named by its content, so showing the
    same recipe again writes the same tag), or None when the store refuses (a read-only server)."""
    from mlflow.exceptions import MlflowException

    text = json.dumps(state, sort_keys=True)
    key = "recipe-runner-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    try:
        client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key, text)
    except MlflowException:
        return None
    return key


def landing(client: Any, runs: list[Any]) -> Landing:
    """Where the link lands for these recipe runs (compare.RecipeRun, newest first): their experiment's chart view,
    with the stage metrics the recipe runs chart."""
    experiment_id = runs[0].experiment_id
    names: set[str] = set()
    for run in runs[:20]:
        metrics = client.get_run(run.run_id).data.metrics
        names.update(k[len(PIPELINE_PREFIX) :] for k in metrics if k.startswith(PIPELINE_PREFIX))
    return Landing(experiment_id, share(client, experiment_id, view_state(sorted(names))))


@contextmanager
def served(uri: str) -> Iterator[tuple[str, LocalServer | None]]:
    """The web address of the store at `uri`: a server's own, or a local `mlflow server` on a free loopback port
    in front of a local store (sqlite or folder), stopped on exit."""
    if uri.startswith(("http://", "https://")):
        yield uri, None
        return
    if not (needs_server(uri) or is_file_store(uri)):
        raise UiError(f"cannot serve {uri} in MLflow's UI: give a local store (sqlite:/// or a folder) or a server")
    server = LocalServer(uri)
    try:
        yield server.start(), server
    finally:
        server.stop()


def has_display() -> bool:
    """Whether a graphical browser can open: without one, `webbrowser` would start a text browser in the terminal."""
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_browser(url: str) -> bool:
    """Open `url` in the user's browser where there is a display; never fails (the link is printed anyway)."""
    if not has_display():
        return False
    try:
        return webbrowser.open(url)
    except Exception:  # a broken browser setting must not stop the server the link points to
        return False
