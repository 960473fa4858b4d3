"""The recipe's `model:` resolved on this machine: its local files found, and what the cache key knows of it.

A local file (a YOLO yaml or .pt, a weights file, a custom module's .py) enters the cache key by its sha256, so an
edited file reruns and the same file elsewhere (another folder, a colleague's machine) keeps its key. Relative
paths are looked up as `data:` is: in the working directory, else in the recipe's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .models import FAMILIES
from .models.base import ModelRef
from .persistence.checkpoints import sha256_of
from .recipe import CUSTOM_SOURCE, WEIGHTS_NAME, Recipe


def local_file(text: str, recipe: Recipe) -> Path | None:
    """The file `text` names: absolute as given, else in the working directory, else in the recipe's folder."""
    path = Path(text).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, recipe.path.parent / path]
    return next((c.resolve() for c in candidates if c.is_file()), None)


def _missing(text: str, recipe: Recipe, what: str) -> str:
    path = Path(text).expanduser()
    where = str(path) if path.is_absolute() else f"{Path.cwd() / path} nor {recipe.path.parent.resolve() / path}"
    return (
        f"{what} '{text}' not found (neither {where} exists)"
        if not path.is_absolute()
        else f"{what} '{text}' not found ({where} does not exist)"
    )


def resolve_model(recipe: Recipe) -> ModelRef:
    """The recipe's model with absolute paths; a missing weights file or custom module file is a located error."""
    spec = recipe.model
    source, weights = spec.source, spec.weights
    if spec.family == "custom":
        match = CUSTOM_SOURCE.fullmatch(source)
        module = match["module"] if match else ""
        if module.endswith(".py"):
            found = local_file(module, recipe)
            if found is None:
                raise recipe.located(("model", "source"), _missing(module, recipe, "module file"))
            source = f"{found}:{match['name']}"
    if weights is not None and not WEIGHTS_NAME.fullmatch(weights):
        found = local_file(weights, recipe)
        if found is None:
            raise recipe.located(("model", "weights"), _missing(weights, recipe, "weights file"))
        weights = str(found)
    return ModelRef(spec.family, source, weights, dict(spec.args))


def model_identity(recipe: Recipe, ref: ModelRef | None = None) -> dict[str, Any]:
    """What the cache key knows of the model: a local file (yaml, .pt, weights, a custom module) by its content, so
    an edited file reruns and `./net.yaml` equals `net.yaml`; a shipped name by its name. Keys left at their
    defaults are left out, so a recipe written before `weights`/`args` existed keeps its keys."""
    ref = ref or resolve_model(recipe)
    spec = recipe.model.model_dump(exclude_defaults=True)
    path = Path(spec["source"]).expanduser()
    if ref.family == "custom":
        module, _, name = ref.source.rpartition(":")
        spec["source"] = f"{module_identity(module)}:{name}"
    elif path.is_file():
        # a family may build from more than the file's bytes (Ultralytics: a scale taken from the file name)
        resolved = FAMILIES.get(ref.family).load().source_identity(str(path))
        spec["source"] = resolved or f"file-sha256:{sha256_of(path)}"
    if ref.weights is not None and not WEIGHTS_NAME.fullmatch(ref.weights):
        spec["weights"] = f"file-sha256:{sha256_of(Path(ref.weights))}"
    return spec


def module_identity(module: str) -> str:
    """A module file by its sha256; a package module by its file's sha256 and its distribution's version."""
    if module.endswith(".py"):
        return f"file-sha256:{sha256_of(Path(module))}"
    import importlib.util
    from importlib import metadata

    try:
        # finding a submodule imports its parent packages: the recipe author's own code (see the README)
        found = importlib.util.find_spec(module)
    except Exception:  # a parent package's own code may raise anything: check_source reports it, located
        found = None
    if found is None or not found.origin or not Path(found.origin).is_file():
        return f"module:{module}"  # check_source reports it as a located error
    top = module.partition(".")[0]
    versions = sorted({f"{d}=={metadata.version(d)}" for d in metadata.packages_distributions().get(top, [])})
    return f"module:{module}:sha256:{sha256_of(Path(found.origin))}" + (f":{','.join(versions)}" if versions else "")
