"""Print the stages of the newest run of a recipe side by side, from MLflow (what `mlflow ui` shows, as text).

    python examples/compare_runs.py resnet18-depgraph [--tracking-uri sqlite:///mlflow.db]
"""
from __future__ import annotations

import argparse

from mlflow.tracking import MlflowClient

from recipe_runner import tracking as T

COLUMNS = ["top1", "mAP50", "mAP50-95", "macs", "params", "sparsity", "size_mb", "latency_ms", "epochs_trained"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="the recipe name (or tracking.experiment)")
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args()
    client = MlflowClient(T.resolve_uri(args.tracking_uri, None))
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no experiment named {args.experiment!r}")
    parents = client.search_runs([experiment.experiment_id], f"tags.`{T.ROLE}` = 'recipe'", order_by=["attributes.start_time DESC"],
                                 max_results=1)
    if not parents:
        raise SystemExit("no recipe runs yet")
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'",
                                  order_by=["attributes.start_time ASC"])
    shown = [c for c in COLUMNS if any(c in r.data.metrics for r in children)]
    print(f"{'stage':40} {'action':7} " + " ".join(f"{c:>12}" for c in shown))
    for run in children:
        action = "reused" if run.data.tags.get(T.ROLE) == "reused" else "ran"
        values = [run.data.metrics.get(c) for c in shown]
        print(f"{run.data.tags[T.NODE_ID]:40} {action:7} " + " ".join(f"{v:12.4g}" if v is not None else f"{'-':>12}" for v in values))


if __name__ == "__main__":
    main()
