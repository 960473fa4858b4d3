"""What produced a stage: package versions and the runner's own version and git commit.

Recorded as tags on every stage run (the parent run's lock holds them too), because a reused stage
is only as reproducible as the code that made it: `recipe plan` and `recipe run` say when a stage
they reuse was made by other versions than the installed ones.
"""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

from .tags import VERSION_PREFIX

# name -> the distributions that provide it (Ultralytics also ships as ultralytics-opencv-headless)
TRACKED = {
    "recipe-runner": ("recipe-runner",),
    "torch": ("torch",),
    "torch-pruning": ("torch-pruning",),
    "ultralytics": ("ultralytics", "ultralytics-opencv-headless"),
    "onnxruntime": ("onnxruntime",),
    "onnx": ("onnx",),
    "openvino": ("openvino",),
    "nncf": ("nncf",),
}
COMMIT = "git_commit"  # the runner's own commit, when it runs from a git checkout


@functools.lru_cache(maxsize=1)
def runner_commit() -> str | None:
    """HEAD of the checkout the runner is imported from; None for an installed wheel (no pyproject.toml beside it)."""
    source = Path(__file__).resolve().parents[2]  # recipe_runner/persistence/versions.py -> the checkout
    if not (source / "pyproject.toml").is_file():
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def installed() -> dict[str, str]:
    """The tracked package versions of this environment, plus the runner's git commit when known."""
    found = {}
    for name, distributions in TRACKED.items():
        for distribution in distributions:
            try:
                found[name] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                pass
    commit = runner_commit()
    if commit:
        found[COMMIT] = commit
    return found


def version_tags() -> dict[str, str]:
    """MLflow tags for a stage run made here."""
    return {VERSION_PREFIX + name: value for name, value in installed().items()}


def recorded(tags: dict[str, str]) -> dict[str, str]:
    """The version tags of a run (to copy onto a run that reuses its model)."""
    return {key: value for key, value in tags.items() if key.startswith(VERSION_PREFIX)}


def differences(tags: dict[str, str]) -> list[str]:
    """'torch 2.13.0 (installed 2.14.1)' for each package version recorded on a run that differs from this
    environment. A run made before versions were recorded has none, and yields no difference. The runner's git
    commit is recorded but not called out: it changes with every commit while developing, and the runner's
    released version (`recipe-runner`) is compared."""
    notes, here = [], installed()
    for key, value in sorted(recorded(tags).items()):
        name = key[len(VERSION_PREFIX) :]
        if name != COMMIT and here.get(name) != value:
            notes.append(f"{name} {value} (installed {here.get(name, 'none')})")
    return notes
