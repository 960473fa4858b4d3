"""Every malformed recipe in tests/recipes_bad/ exits 2 with `file:LINE:COL: message` and starts nothing.

Each file's first line says what is expected: `# expect: LINE: words the message must contain`.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli, count_runs

BAD = sorted((Path(__file__).parent / "recipes_bad").glob("*.yaml"))
RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def expectation(path: Path) -> tuple[int, str]:
    match = re.match(r"# expect: (\d+): (.+)", path.read_text().splitlines()[0])
    assert match, f"{path.name} needs a first line '# expect: LINE: message'"
    return int(match.group(1)), match.group(2).strip()


def test_corpus_is_large_enough():
    assert len(BAD) >= 20


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_validate_reports_file_line_and_message(path: Path):
    line, words = expectation(path)
    result = cli("validate", path)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    located = [l for l in lines if l.startswith(f"{path}:{line}:")]
    assert located, f"no problem reported at line {line}:\n{result.stderr}"
    assert any(words in l for l in located), f"expected {words!r} at line {line}:\n{result.stderr}"
    assert all(re.match(rf"{re.escape(str(path))}:\d+:\d+: \S", l) for l in lines), result.stderr


@pytest.mark.parametrize("path", BAD[::3], ids=[p.stem for p in BAD[::3]])
def test_run_of_a_bad_recipe_starts_nothing(path: Path, workspace: Path):
    result = cli("run", path)
    assert result.exit_code == 2
    assert count_runs(workspace / "mlflow.db") == 0
    assert not (workspace / "mlflow.db").exists()


@pytest.mark.parametrize("override, words", [
    ("stages.prune.ratio=abc", "stages.prune.ratio: Input should be a valid number"),
    ("stages.prune.ratio=1.5", "less than 1"),
    ("stages.prune.ratoi=0.3", "unknown key 'ratoi'; did you mean 'ratio'?"),
    ("stages.prnue.ratio=0.3", "'stages.prnue' does not exist in stages; did you mean 'prune'?"),
    ("stages.prune.ratio", "expected --set dotted.key=value"),
    ("stages.prune.ratio=[0.3", "not valid YAML"),
])
def test_bad_set_is_reported_like_a_bad_recipe(override: str, words: str, workspace: Path):
    recipe = RECIPES[0]
    for command in ("validate", "run"):
        result = cli(command, recipe, "--set", override)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(f"--set {override}: ") and words in result.stderr, result.stderr
    assert not (workspace / "mlflow.db").exists()


def test_set_overrides_are_applied():
    result = cli("validate", RECIPES[0], "--set", "stages.prune.ratio=0.6", "--set", "tracking.experiment=other")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_are_valid(path: Path):
    result = cli("validate", path)
    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout


def test_validation_imports_neither_torch_nor_ultralytics():
    code = ("import sys; from recipe_runner.recipe import load_recipe; from recipe_runner.graph import compile_graph; "
            f"compile_graph(load_recipe({str(RECIPES[0])!r})); "
            "bad = [m for m in ('torch', 'ultralytics', 'torchvision', 'mlflow') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_schema_is_json_schema_for_every_stage_type():
    result = cli("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    stage_types = {d["properties"]["type"].get("const") for d in schema["$defs"].values() if "type" in d.get("properties", {})}
    assert {"train", "finetune", "prune", "evaluate", "export"} <= stage_types
    assert schema["additionalProperties"] is False


def test_schema_accepts_shipped_recipes_and_rejects_a_bad_one():
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    schema = json.loads(cli("schema").stdout)
    for path in RECIPES:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load((Path(__file__).parent / "recipes_bad" / "06_unknown_stage_key.yaml").read_text()),
                            schema)
