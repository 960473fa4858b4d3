"""`recipe ui` without a browser: the link and the shared view it stores (the page itself: test_ui_screenshot.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli, local_uri
from mlflow.tracking import MlflowClient

from recipe_runner import compare as C
from recipe_runner import persistence as T
from recipe_runner import ui as U


def _recipe_run(client: MlflowClient, experiment_id: str, metrics: dict[str, float]) -> str:
    run = client.create_run(experiment_id, tags={T.ROLE: "recipe"}, run_name="tiny @ now")
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    return run.info.run_id


def test_the_link_lands_on_the_charts_of_the_recipe_runs_pipeline_metrics(workspace: Path):
    client = MlflowClient(local_uri(workspace))
    experiment_id = client.create_experiment("tiny")
    _recipe_run(client, experiment_id, {"pipeline/macs": 2.0, "pipeline/top1": 0.5, "pipeline/size_mb": 0.1})
    _recipe_run(client, experiment_id, {"pipeline/params": 10.0, "pipeline/top1": 0.4, "loss": 1.0})

    where = U.landing(client, C.resolve(client, [], every_run=True))
    assert where.experiment_id == experiment_id
    link = where.link("http://127.0.0.1:5000/")
    assert link == (
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        f"&compareRunsMode=CHART&viewStateShareKey={where.share_key}"
    )
    # the shared view MLflow's UI reads for that key: the primary metric first, then MACs, params, size
    state = json.loads(client.get_experiment(experiment_id).tags[U.SHARED_VIEW_TAG + str(where.share_key)])
    assert state["selectedColumns"] == [
        "attributes.`Dataset`",
        "attributes.`Models`",
        "metrics.`top1`",
        "metrics.`macs`",
        "metrics.`params`",
        "metrics.`size_mb`",
        "tags.`recipe_runner.action`",
        "params.`overrides`",
    ]
    assert state["chartsSearchFilter"] == "^pipeline/(?!size_mb$)"
    # the same view again is the same tag, not one more
    assert U.landing(client, C.resolve(client, [], every_run=True)).share_key == where.share_key
    assert sum(k.startswith(U.SHARED_VIEW_TAG) for k in client.get_experiment(experiment_id).tags) == 1


def test_a_server_is_shown_as_it_is_and_other_stores_are_refused():
    with U.served("https://mlflow.example.com") as (base, server):
        assert (base, server) == ("https://mlflow.example.com", None)
    with pytest.raises(U.UiError, match="cannot serve databricks"):
        with U.served("databricks"):
            pass


def test_no_store_or_no_recipe_run_is_exit_2_and_starts_nothing(workspace: Path):
    result = cli("ui", "--no-browser")
    assert result.exit_code == 2 and "no MLflow store at" in result.stderr
    MlflowClient(local_uri(workspace)).create_experiment("empty")
    result = cli("ui", "empty", "--no-browser")
    assert result.exit_code == 2 and "experiment 'empty' holds no recipe runs" in result.stderr
