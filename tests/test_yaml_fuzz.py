"""Property test: whatever text a recipe file or a `--set` value holds, `recipe validate` answers with exit 0 or 2
(located lines on stderr), never a traceback, and in bounded time.

Documents are built three ways: YAML-ish text from the characters that make YAML constructs (tags, anchors,
aliases, flow collections, dates), a valid recipe with one line replaced by such text, and a valid recipe with a
random value at a random key. Kept to a modest number of examples (about 15 s on an idle machine).
"""

from __future__ import annotations

import time
from pathlib import Path

from conftest import cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BASE = """\
version: 1
name: fuzz
seed: 0
model: lenet
data: builtin:shapes-cls?train=8&val=4&imgsz=32
defaults:
  imgsz: 32
stages:
  train:
    type: train
    epochs: 1
  prune:
    type: prune
    method: depgraph
    ratio: 0.5
  onnx:
    type: export
""".splitlines()

# pieces that reach the loader's edge cases: every standard tag, a Python tag, anchors/aliases, merge keys,
# dates that do not exist, special floats, flow collections and quotes
PIECES = [
    "!!int ",
    "!!bool ",
    "!!timestamp ",
    "!!float ",
    "!!str ",
    "!!map ",
    "!!seq ",
    "!!null ",
    "!!binary ",
    "!!python/object/apply:os.system ",
    "!env ",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "<<: ",
    "? ",
    "- ",
    ": ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "'",
    '"',
    "#",
    "\n",
    "\n  ",
    "2024-02-30",
    "2024-13-01",
    "1e999",
    ".nan",
    "-.inf",
    "~",
    "maybe",
    "abc",
    "0x1F",
    "0o17",
    "1_000",
    "yes",
    "---",
    "...",
    "%YAML 1.1\n",
    "|",
    ">",
    "\t",
    "type",
    "train",
    "stages",
    "sweep",
    "from",
    "epochs",
    "ratio",
    "model",
    "''",
    "\\u0000",
    "é",
]
yamlish = st.lists(st.sampled_from(PIECES) | st.text(max_size=4), max_size=30).map("".join)
KEYS = [
    "seed",
    "name",
    "model",
    "data",
    "description",
    "defaults.batch",
    "defaults.device",
    "tracking.experiment",
    "stages.train.epochs",
    "stages.train.from",
    "stages.prune.ratio",
    "stages.prune.method",
    "stages.prune",
    "stages.onnx.dynamic",
    "stages.onnx.opset",
    "stages",
    "stages.new.type",
    "version",
    "x.y.z",
]


@st.composite
def documents(draw) -> str:
    how = draw(st.sampled_from(["text", "line", "value"]))
    if how == "text":
        return draw(yamlish)
    lines = list(BASE)
    at = draw(st.integers(0, len(lines) - 1))
    if how == "line":
        lines[at] = draw(yamlish)
    else:
        key = lines[at].split(":")[0]
        lines[at] = f"{key}: {draw(yamlish)}"
    return "\n".join(lines) + "\n"


def _validate_answers_cleanly(path: Path, *args: str) -> None:
    started = time.monotonic()
    # catch_exceptions=False: any exception the CLI lets escape fails the test with its traceback
    result = cli("validate", path, *args)
    assert time.monotonic() - started < 10, "validate must answer in bounded time"
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert result.stderr.strip(), "exit 2 must say why"
        assert "Traceback" not in result.stderr


FAST = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@FAST
@given(text=documents())
def test_any_recipe_text_validates_or_is_a_located_error(text: str, tmp_path: Path):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _validate_answers_cleanly(path)


@FAST
@given(key=st.sampled_from(KEYS) | st.text(max_size=12), value=yamlish)
def test_any_set_value_validates_or_is_a_located_error(key: str, value: str, tmp_path: Path):
    path = tmp_path / "base.yaml"
    path.write_text("\n".join(BASE) + "\n")
    _validate_answers_cleanly(path, "--set", f"{key}={value}")
