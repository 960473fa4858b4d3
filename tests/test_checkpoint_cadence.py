"""How often training stages write resumable epoch checkpoints (`checkpoint_every`), and that it is not in the key."""

from __future__ import annotations

from pathlib import Path

from conftest import cli, local_uri, stage_runs, write_recipe
from mlflow.tracking import MlflowClient

from recipe_runner import persistence as T
from recipe_runner.persistence import EpochCadence


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_auto_cadence_keeps_checkpoints_near_three_percent_of_the_time():
    clock = Clock()
    cadence = EpochCadence("auto", clock=clock)
    assert cadence.due(1)  # the first is always written: it measures the cost
    started = clock.now = 10.0
    clock.now = 11.0  # the checkpoint took 1 s: the next one waits until 1 / 0.03 = 33 s have passed
    cadence.written(1, started)
    clock.now = 11.0 + 20
    assert not cadence.due(2)
    clock.now = 11.0 + 34
    assert cadence.due(3)
    # a cheap checkpoint (a small model) is due after every epoch of a few seconds
    cadence.written(3, clock.now - 0.05)
    clock.now += 2.0
    assert cadence.due(4)


def test_every_n_epochs():
    cadence = EpochCadence(3)
    assert cadence.due(1)
    cadence.written(1, cadence.clock())
    assert [cadence.due(e) for e in (2, 3, 4)] == [False, False, True]


def test_checkpoint_every_sets_the_saved_epochs_and_stays_out_of_the_cache_key(workspace: Path):
    recipe = write_recipe(workspace, "  train: {type: train, epochs: 5, checkpoint_every: 2}")
    assert cli("run", recipe).exit_code == 0
    (run,) = stage_runs(local_uri(workspace))
    client = MlflowClient(local_uri(workspace))
    # epochs 1, 3 and 5 were written, to slots 0, 1, 0 in turn (not epoch % 2, which put all three in slot 1, each
    # overwriting the one the tags named); the tags name the last
    assert (run.data.tags[T.EPOCH], run.data.tags[T.EPOCH_SLOT]) == ("5", "0")
    saved = {f.path for f in client.list_artifacts(run.info.run_id, "epoch")}
    assert saved == {"epoch/0", "epoch/1"}
    history = client.get_metric_history(run.info.run_id, "epochs_trained")
    assert history and history[-1].value == 5
    # a different cadence is the same stage: reused, not trained again
    write_recipe(workspace, "  train: {type: train, epochs: 5, checkpoint_every: 1}")
    result = cli("run", recipe)
    assert result.exit_code == 0 and "reuse" in result.output
