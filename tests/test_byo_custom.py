"""The custom family: a user's own nn.Module from a file or a package, trained and pruned by DepGraph, rebuilt
from a plain-data checkpoint (factory + architecture snapshot, no pickled code) into identical outputs; bad
sources are located errors at plan time; reproduce refuses a module that is not the one the run imported."""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import cli, local_uri, stage_runs

from recipe_runner.models import ModelRef
from recipe_runner.models.custom import CustomFamily
from recipe_runner.persistence import load_checkpoint, save_checkpoint
from recipe_runner.reproduce import ReproduceError, check_model_file

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_model"
DATA = "builtin:shapes-cls?train=64&val=32&imgsz=32"


def _recipe(folder: Path, model: str, stages: str) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(
        textwrap.dedent("""\
        version: 1
        name: byo-custom
        model:
        {model}
        data: {data}
        defaults: {{imgsz: 32, batch: 16}}
        stages:
        {stages}
        """).format(model=textwrap.indent(model, "  "), data=DATA, stages=textwrap.indent(stages, "  "))
    )
    return path


@pytest.fixture
def data(workspace: Path):
    from recipe_runner.data import resolve_data

    return resolve_data(DATA, "classify")


def _bound(source: str, **args) -> CustomFamily:
    family = CustomFamily()
    family.bind(ModelRef("custom", source, None, args))
    return family


def test_a_file_module_trains_in_a_recipe_that_starts_with_prune_and_rebuilds_from_the_store(workspace: Path):
    (workspace / "models").mkdir()
    shutil.copy(EXAMPLE / "net.py", workspace / "models" / "net.py")
    recipe = _recipe(
        workspace,
        "family: custom\nsource: models/net.py:Net\nargs: {in_channels: 3}",
        "prune: {type: prune, method: depgraph, ratio: 0.5}\nft: {type: finetune, epochs: 1}",
    )
    assert cli("run", recipe).exit_code == 0
    # the finetune stage again, from the prune stage's checkpoint in MLflow: the factory rebuilt, then the snapshot
    again = cli("run", recipe, "--force", "ft")
    assert again.exit_code == 0, again.output
    assert "[reuse]  prune" in again.output
    runs = {r.data.tags["recipe_runner.node_id"]: r for r in stage_runs(local_uri(workspace))}
    assert runs["ft"].info.status == "FINISHED"
    assert runs["ft"].data.metrics["params"] == runs["prune"].data.metrics["params"] < 0.6 * 62_000
    # an edited module file is another model: nothing is reused
    (workspace / "models" / "net.py").write_text((EXAMPLE / "net.py").read_text() + "\n# edited\n")
    plan = cli("plan", recipe)
    assert plan.exit_code == 0 and "reuse" not in plan.output


def test_depgraph_pruned_custom_model_rebuilds_into_identical_outputs(workspace: Path, data):
    from recipe_runner.pruning import METHODS, plan_steps

    family = _bound(str(EXAMPLE / "net.py") + ":Net")
    model = family.build("net.py:Net", data, seed=0)
    assert model.fc3.out_features == data.num_classes == 4  # Net takes num_classes: the data's count is passed
    method = METHODS.get("depgraph")
    config = method.config(method="depgraph", ratio=0.5, imgsz=32)
    pruned = method.prune_step(model, family, data, config, plan_steps(0.5, 1)[0])
    assert pruned.conv2.out_channels < 16 and pruned.fc1.in_features < 16 * 6 * 6
    path = workspace / "ckpt.pt"
    sha = save_checkpoint({"model": family.describe(pruned)}, path)
    # another family instance, as in another process: the factory imported again, the snapshot applied
    rebuilt = _bound(str(EXAMPLE / "net.py") + ":Net").rebuild(load_checkpoint(path, sha)["model"])
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), pruned.eval()(x))


def test_a_package_factory_with_args_and_weights(workspace: Path, data, monkeypatch: pytest.MonkeyPatch):
    package = workspace / "site" / "mynets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "small.py").write_text(
        textwrap.dedent("""\
        from torch import nn

        def make(width=8, classes=3):  # a factory whose class count is not called num_classes
            return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(width, classes))
        """)
    )
    monkeypatch.syspath_prepend(str(workspace / "site"))
    family = _bound("mynets.small:make", width=6)
    model = family.build("mynets.small:make", data, seed=0)
    assert model[0].out_channels == 6 and model[4].out_features == 4  # the head is fitted to the data's 4 classes
    # weights for the module as its args build it (3 classes): loaded, and the head replaced with a note
    torch.manual_seed(5)
    from mynets.small import make

    trained = make(width=6).state_dict()
    torch.save({"state_dict": trained}, workspace / "w.pth")
    weighted = CustomFamily()
    weighted.bind(ModelRef("custom", "mynets.small:make", str(workspace / "w.pth"), {"width": 6}))
    [note] = weighted.model_notes(data)
    assert "3 classes" in note
    built = weighted.build("mynets.small:make", data, seed=0)
    assert torch.equal(built[0].weight, trained["0.weight"]) and built[4].out_features == 4
    # in a recipe: keyed by the module file's content and the arguments
    from recipe_runner.model_ref import model_identity
    from recipe_runner.persistence import sha256_of
    from recipe_runner.recipe import load_recipe

    recipe = load_recipe(
        _recipe(workspace, "family: custom\nsource: mynets.small:make\nargs: {width: 6}", "ev: {type: evaluate}")
    )
    identity = model_identity(recipe)
    assert identity["source"] == f"module:mynets.small:sha256:{sha256_of(package / 'small.py')}:make"
    assert identity["args"] == {"width": 6}


@pytest.mark.parametrize(
    "model, line, words",
    [
        ("family: custom\nsource: net.py:Nope", 5, "has no 'Nope' (it defines: Net)"),
        ("family: custom\nsource: missing.py:Net", 5, "module file 'missing.py' not found"),
        ("family: custom\nsource: net.py:Net\nargs: {in_channels: -1}", 6, "Net(in_channels=-1) raised RuntimeError"),
        ("family: custom\nsource: net.py:Net\nweights: nowhere.pth", 6, "weights file 'nowhere.pth' not found"),
    ],
)
def test_bad_custom_models_are_located_errors_before_anything_runs(workspace: Path, model: str, line: int, words: str):
    shutil.copy(EXAMPLE / "net.py", workspace / "net.py")
    result = cli("plan", _recipe(workspace, model, "ev: {type: evaluate}"))
    assert result.exit_code == 2, result.output
    assert f"recipe.yaml:{line}:" in result.stderr and words in result.stderr, result.stderr
    assert not (workspace / "mlflow.db").exists()


def test_reproduce_imports_a_custom_module_only_if_it_is_the_one_the_run_imported(workspace: Path):
    from recipe_runner.model_ref import module_identity

    shutil.copy(EXAMPLE / "net.py", workspace / "net.py")
    lock = {
        "model": {"family": "custom", "source": "net.py:Net"},
        "model_identity": {"source": f"{module_identity(str(workspace / 'net.py'))}:Net"},
    }
    check_model_file(lock)  # the same file: fine
    (workspace / "net.py").write_text("raise SystemExit('imported')\n")  # another file under the same name
    before = set(sys.modules)
    with pytest.raises(ReproduceError, match="not the one the original run imported"):
        check_model_file(lock)
    assert set(sys.modules) == before  # hashed, never imported
    (workspace / "net.py").unlink()
    with pytest.raises(ReproduceError, match="is missing"):
        check_model_file(lock)
