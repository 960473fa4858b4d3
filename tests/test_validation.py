"""`recipe validate` / `recipe run` on malformed recipes: exit 2, `FILE:LINE:COL: message`, nothing started.

The corpus is tests/malformed/, one mistake per file; the line the error must point at is marked
in the file with a trailing `# <-` comment and listed in CASES with the words the message must hold.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import cli, count_runs

from recipe_runner.stages import STAGES

HERE = Path(__file__).parent
MALFORMED = HERE / "malformed"
RECIPES = sorted((HERE.parent / "recipes").glob("*.yaml"))
VALID = RECIPES[0]  # resnet18_depgraph.yaml: has a prune stage named 'prune'

# file stem -> (line the error points at, words the message must contain)
CASES: dict[str, tuple[int, str]] = {
    "yaml_syntax": (8, "YAML syntax error: this [ is not closed"),
    "yaml_bad_indent": (8, "check this line's indentation"),
    "duplicate_top_key": (6, "duplicate key 'seed' (first defined at line 5)"),
    "duplicate_stage_key": (9, "duplicate key 'epochs' (first defined at line 8)"),
    "duplicate_stage_id": (8, "duplicate key 'train' (first defined at line 6)"),
    "unknown_top_key": (5, "unknown key 'notes'"),
    "unknown_top_key_typo": (3, "unknown key 'modle'; did you mean 'model'?"),
    "unknown_stage_key": (11, "stages.prune.ratoi: unknown key 'ratoi'; did you mean 'ratio'?"),
    "stage_type_typo": (7, "unknown stage type 'trian'; did you mean 'train'?"),
    "stage_type_not_a_name": (7, "unknown stage type"),
    "missing_stage_type": (
        6,
        "missing required key 'type' (known: benchmark, evaluate, export, prune, quantize, "
        "train, finetune, sparse-train)",
    ),
    "prune_method_typo": (10, "unknown method 'depgraf'; did you mean 'depgraph'?"),
    "prune_missing_method": (8, "missing required key 'method' (known: depgraph, slim, l1-unstructured, low-rank)"),
    "importance_typo": (11, "(got 'grop-l2'); did you mean 'group-l2'?"),
    "epochs_wrong_type": (8, "stages.train.epochs: Input should be a valid integer"),
    "ratio_too_big": (11, "stages.prune.ratio: Input should be less than 1 (got 1.5)"),
    "ratio_zero": (11, "stages.prune.ratio: Input should be greater than 0 (got 0)"),
    "epochs_zero": (8, "stages.train.epochs: Input should be greater than or equal to 1 (got 0)"),
    "max_layer_ratio_too_big": (11, "stages.prune.max_layer_ratio: Input should be less than 1 (got 1.5)"),
    "target_macs_with_ratio": (8, "give one of ratio, target_macs and target_params (got ratio and target_macs)"),
    "target_macs_unstructured": (8, "target_macs needs a method that removes channels (depgraph, slim)"),
    "max_map_drop_too_big": (11, "max_map_drop: Input should be less than or equal to 1 (got 2)"),
    "device_bad": (8, "stages.train.device.1: Input should be a valid integer"),
    "from_unknown": (11, "stages.prune.from: no stage named 'trian'; did you mean 'train'?"),
    "from_not_a_string": (8, "stages.train.from: Input should be a valid string"),
    "from_cycle": (8, "cycle: a -> b -> a"),
    "from_self": (10, "cycle: ft -> ft"),
    "python_object_tag": (8, "YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed"),
    "python_name_tag": (8, "YAML tag 'tag:yaml.org,2002:python/name:os.system' is not allowed"),
    "missing_version": (1, "missing required key 'version'"),
    "wrong_version": (1, "version: Input should be 1 (got 2)"),
    "missing_stages": (1, "missing required key 'stages'"),
    "empty_stages": (5, "stages: needs at least 1 entry"),
    "empty_file": (1, "the recipe is empty"),
    "not_a_mapping": (1, "a recipe must be a mapping"),
    "defaults_unknown_key": (7, "defaults.epoch: no stage type accepts this key; did you mean 'epochs'?"),
    "sweep_empty": (11, "sweep must be a non-empty list"),
    "sweep_repeated": (11, "sweep lists 0.3 more than once"),
    "sweep_in_defaults": (6, "a sweep in defaults would sweep every stage on its own"),
    "sweep_out_of_range": (11, "stages.prune.ratio: Input should be less than 1 (got 1.2)"),
    "custom_source_without_name": (5, "custom source 'models/net.py' must be path/to/file.py:Name"),
    "bad_model_family": (4, "unknown model family 'torchvison'; did you mean 'torchvision'?"),
    "stage_not_mapping": (6, "a stage must be a mapping with at least 'type' (got 'train')"),
    "bad_stage_id": (8, "stage id 'prune 50%' must start with a letter or digit"),
    "custom_tag": (8, "YAML tag '!env' is not allowed"),
    "bad_recipe_name": (2, "recipe name 'my experiment' must start with a letter or digit"),
    "export_bad_opset": (10, "stages.onnx.opset: Input should be greater than or equal to 11 (got 7)"),
    "finetune_from_export": (12, "a 'finetune' stage takes a PyTorch model, but 'onnx' (export) gives a model file"),
    "prune_from_int8": (13, "a 'prune' stage takes a PyTorch model, but 'int8' (quantize) gives a model file"),
    "prune_from_benchmark_of_int8": (
        12,
        "a 'finetune' stage takes a PyTorch model, but 'bench' (benchmark) gives a model file",
    ),
    "quantize_mode_int3": (
        10,
        "stages.int8.mode: Input should be 'int8-static', 'int8-dynamic', 'fp16' or 'int8-qat' (got 'int3')",
    ),
    "calibration_images_zero": (
        10,
        "stages.int8.calibration_images: Input should be greater than or equal to 1 (got 0)",
    ),
    "openvino_fp16": (11, "stages.int8.mode: backend openvino does mode int8-static only (got 'fp16')"),
    "negative_seed": (3, "seed: Input should be greater than or equal to 0 (got -1)"),
    "sparse_penalty_typo": (10, "stages.sparse.penalty: Input should be 'bn-l1' or 'group-l2' (got 'l3')"),
    "sparse_negative_strength": (
        11,
        "stages.sparse.strength: Input should be greater than or equal to 0 (got -0.0001)",
    ),
    "invalid_date": (5, "description: '2024-02-30' is not a valid timestamp (a date must exist"),
    "int_tag_not_int": (5, "seed: 'abc' is not a valid int"),
    "bool_tag_maybe": (10, "stages.onnx.dynamic: 'maybe' is not a valid bool"),
    "timestamp_tag_not_a_time": (8, "stages.train.epochs: 'x' is not a valid timestamp"),
    "empty_model": (3, "model: names no model"),
    "recursive_alias": (6, "an alias refers to a block that contains it (a recursive alias)"),
    "billion_laughs": (9, "the recipe expands to more than 10000 values"),
    "top_level_list_after_comment": (3, "a recipe must be a mapping"),
    "sweep_over_device": (8, "stages.train.device: 'device' is not part of a stage's cache key"),
    "sweep_copy_refuses_key": (11, "stages.prune.importance: unknown key 'importance' (in the sweep copy method=slim)"),
}
LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<message>\S.*)$")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cwd whose MLflow store (sqlite, via MLFLOW_TRACKING_URI) must stay empty."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECIPE_RUNNER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path / "mlflow.db"


def test_every_corpus_file_has_a_case():
    files = {p.stem for p in MALFORMED.glob("*.yaml")}
    assert files == set(CASES)
    assert len(files) >= 24


@pytest.mark.parametrize("stem", sorted(CASES))
def test_marker_comment_matches_the_table(stem: str):
    """The `# <-` comment in the file marks the same line as CASES (files without one point at line 1)."""
    lines = (MALFORMED / f"{stem}.yaml").read_text().splitlines()
    marked = [n for n, text in enumerate(lines, 1) if "# <-" in text] or [1]
    assert marked == [CASES[stem][0]]


@pytest.mark.parametrize("stem", sorted(CASES))
def test_validate_points_at_the_line_with_a_useful_message(stem: str):
    line, words = CASES[stem]
    path = MALFORMED / f"{stem}.yaml"
    result = cli("validate", path)
    assert result.exit_code == 2, result.output
    problems = [LOCATED.match(text) for text in result.stderr.strip().splitlines()]
    assert problems and all(problems), f"every line must be FILE:LINE:COL: message\n{result.stderr}"
    assert all(p["file"] == str(path) for p in problems), result.stderr
    at_line = [p["message"] for p in problems if int(p["line"]) == line]
    assert at_line, f"nothing reported at line {line}:\n{result.stderr}"
    assert any(words in message for message in at_line), f"expected {words!r} at line {line}:\n{result.stderr}"
    assert "ok" not in result.stdout


@pytest.mark.parametrize("stem", sorted(CASES))
def test_run_of_a_malformed_recipe_starts_no_mlflow_run(stem: str, store: Path):
    line, _ = CASES[stem]
    result = cli("run", MALFORMED / f"{stem}.yaml")
    assert result.exit_code == 2, result.output
    assert f"{stem}.yaml:{line}:" in result.stderr
    assert count_runs(store) == 0
    assert not store.exists(), "a bad recipe must fail before the tracking store is opened"


def test_the_installed_command_exits_2_with_located_lines_on_stderr(tmp_path: Path):
    """Through the real entry point, not the in-process runner: stdout stays clean, stderr has the line."""
    path = MALFORMED / "unknown_stage_key.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "recipe_runner.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.strip() == f"{path}:11:5: stages.prune.ratoi: unknown key 'ratoi'; did you mean 'ratio'?"


@pytest.mark.parametrize(
    "override, words",
    [
        ("stages.prune.ratio=abc", "stages.prune.ratio: Input should be a valid number"),
        ("stages.prune.ratio=1.5", "stages.prune.ratio: Input should be less than 1 (got 1.5)"),
        ("stages.prune.ratoi=0.3", "unknown key 'ratoi'; did you mean 'ratio'?"),
        ("stages.prune.ratio", "expected --set dotted.key=value"),
        ("=0.3", "expected --set dotted.key=value"),
        ("stages.prune.type=prnue", "unknown stage type 'prnue'; did you mean 'prune'?"),
        ("seed=!!int abc", "value is not valid: 'abc' is not a valid int"),
        ("stages.prune.ratio=!!bool maybe", "'maybe' is not a valid bool"),
        ("description=2024-02-30", "'2024-02-30' is not a valid timestamp"),
        ("description=!!python/object/apply:os.system [echo]", "is not allowed"),
        ("description=[&x [*x]]", "recursive alias"),
    ],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_set_exits_2_like_a_bad_recipe(command: str, override: str, words: str, store: Path):
    result = cli(command, VALID, "--set", override)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"--set {override}: "), result.stderr
    assert words in result.stderr, result.stderr
    assert not store.exists()


def test_good_set_still_validates():
    result = cli("validate", VALID, "--set", "stages.prune.ratio=0.3", "--set", "defaults.batch=8")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_validate(path: Path):
    result = cli("validate", path)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{path}: ok")


def test_validation_imports_neither_torch_nor_ultralytics():
    code = f"""
import sys
from typer.testing import CliRunner
from recipe_runner.cli import app
for path in {[str(p) for p in RECIPES]!r} + [{str(MALFORMED / "ratio_too_big.yaml")!r}]:
    CliRunner().invoke(app, ["validate", path], catch_exceptions=False)
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ("torch", "torchvision", "ultralytics"))
assert not heavy, heavy
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def schema() -> dict:
    result = cli("schema")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_schema_names_every_stage_type(schema: dict):
    text = json.dumps(schema)
    for name in STAGES.names():
        assert f'"const": "{name}"' in text or f'"{name}"' in text, name
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"version", "name", "model", "data", "stages"} <= set(schema["required"])


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_schema_accepts_the_shipped_recipes(schema: dict, path: Path):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)


def test_schema_rejects_an_out_of_range_ratio(schema: dict):
    jsonschema = pytest.importorskip("jsonschema")
    recipe = yaml.safe_load((MALFORMED / "ratio_too_big.yaml").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(recipe, schema)


def test_a_missing_optional_backend_is_a_located_error_at_plan_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: Path
):
    """`backend: openvino` without the extra installed: `plan` and `run` say how to install it, at the key's line."""
    import recipe_runner.quantization as quantization

    monkeypatch.setattr(
        quantization,
        "missing_backend",
        lambda name: (
            f"backend '{name}' needs openvino, nncf, which is not installed: pip install 'recipe-runner[openvino]'"
        ),
    )
    recipe = tmp_path / "ov.yaml"
    recipe.write_text(
        "version: 1\nname: ov\nmodel: lenet\ndata: builtin:shapes-cls?train=8&val=4&imgsz=32\nstages:\n"
        "  train: {type: train, epochs: 1}\n  int8:\n    type: quantize\n    backend: openvino\n"
    )
    assert cli("validate", recipe).exit_code == 0  # the text is fine; what is installed is plan's business
    for command in ("plan", "run"):
        result = cli(command, recipe)
        assert result.exit_code == 2, result.output
        assert f"{recipe}:9:5: stages.int8.backend: backend 'openvino' needs openvino" in result.stderr
        assert "pip install 'recipe-runner[openvino]'" in result.stderr
    assert not store.exists()
