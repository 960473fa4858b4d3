"""Turn a recipe's `data:` string into a dataset on disk plus a fingerprint for cache keys."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

from ..registry import Registry, did_you_mean


class DataError(ValueError):
    """The dataset named by the recipe cannot be used."""


@dataclass
class DataSource:
    spec: str
    task: str  # "classify": an ImageFolder root with train/ and val/; "detect": an Ultralytics data.yaml
    path: Path
    fingerprint: str
    names: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class Builtin:
    task: str
    defaults: dict[str, int]
    version: int  # bump when the generator's output changes, so cache keys change with it
    generate: Callable[[Path, dict[str, int]], list[str]]  # (empty folder, options) -> class names
    # option -> (least, most) it may be; others: 0..2**32-1 (a typo of a few digits must not generate for hours)
    bounds: dict[str, tuple[int, int]] = field(default_factory=dict)


BUILTINS: Registry[Builtin] = Registry("builtin dataset")


def cache_root() -> Path:
    return Path(os.environ.get("RECIPE_RUNNER_CACHE") or Path.home() / ".cache" / "recipe-runner")


def _parse_builtin(spec: str) -> tuple[str, Builtin, dict[str, int]]:
    name, _, query = spec[len("builtin:") :].partition("?")
    if name not in BUILTINS:
        raise DataError(
            f"unknown builtin dataset '{name}'{did_you_mean(name, BUILTINS.names())} "
            f"(known: {', '.join(BUILTINS.names())})"
        )
    builtin = BUILTINS.get(name)
    options = dict(builtin.defaults)
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in builtin.defaults:
            raise DataError(
                f"builtin:{name} has no option '{key}'{did_you_mean(key, builtin.defaults)} "
                f"(options: {', '.join(builtin.defaults)})"
            )
        try:
            options[key] = int(value)
        except ValueError:
            raise DataError(f"builtin:{name} option '{key}' must be an integer, got '{value}'") from None
        least, most = builtin.bounds.get(key, (0, 2**32 - 1))
        if not least <= options[key] <= most:
            raise DataError(f"builtin:{name} option '{key}' must be between {least} and {most}, got {options[key]}")
    return name, builtin, options


def fingerprint_data(spec: str, base: Path = Path(".")) -> str:
    """A hash that changes when the data changes: generator options for builtins; for a user dataset the content
    of exactly the files it consists of (see _fingerprint.py for the rule and why content, not mtimes)."""
    if spec.startswith("builtin:"):
        h = hashlib.sha256()
        name, builtin, options = _parse_builtin(spec)
        h.update(repr((name, builtin.version, sorted(options.items()))).encode())
        return h.hexdigest()[:16]
    from ._fingerprint import fingerprint_path

    return fingerprint_path(_user_path(spec, base), cache_root())[0]


def _user_path(spec: str, base: Path) -> Path:
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else (base / path)
    if not path.exists():
        raise DataError(f"dataset path '{spec}' does not exist")
    return path.resolve()


def resolve_data(spec: str, task: str, base: Path = Path(".")) -> DataSource:
    """Generate a builtin dataset on first use (atomically, in the cache folder) or check a user path."""
    fingerprint = fingerprint_data(spec, base)
    if spec.startswith("builtin:"):
        name, builtin, options = _parse_builtin(spec)
        if builtin.task != task:
            raise DataError(f"builtin:{name} is a {builtin.task} dataset; this model family needs a {task} dataset")
        folder = cache_root() / "datasets" / f"{name}-{fingerprint}"
        if not (folder / "names.txt").exists():
            _generate(builtin, options, folder)
        names = (folder / "names.txt").read_text().split()
        path = folder / "data.yaml" if task == "detect" else folder
        return DataSource(spec, task, path, fingerprint, names)
    path = _user_path(spec, base)
    from ._user import inspect_user_dataset

    return DataSource(spec, task, path, fingerprint, inspect_user_dataset(path, task))


def _generate(builtin: Builtin, options: dict[str, int], folder: Path) -> None:
    """Generate into a private temp folder, then rename it into place in one step. Two processes that generate the
    same dataset at once each write their own copy; the first rename wins and the loser discards its copy (the
    generators are deterministic, so both copies are equal). Readers never see a half-written folder."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        names = builtin.generate(tmp, options)
        (tmp / "names.txt").write_text("\n".join(names) + "\n")
        try:
            # rename(2) onto an existing non-empty folder fails: that is the "someone else won" signal
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "names.txt").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


from . import builtin_hard, builtin_shapes  # noqa: E402,F401  (registration)
