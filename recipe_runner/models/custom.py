"""The `custom` family: the user's own `nn.Module`, a class or factory named `path/to/file.py:Name` or
`package.module:Name`, for classification on an ImageFolder (trained, pruned, quantized and exported as the
torchvision family does).

Importing it runs the recipe author's own code, which is why only a module bound at plan time is ever imported:
a stage checkpoint rebuilds by calling that local factory and applying its stored architecture snapshot (shapes
and plain attributes, models/_shapes.py), never by a name or code read from the tracking store.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..config_base import ConfigProblem
from ..persistence.checkpoints import sha256_of
from ..registry import did_you_mean
from .base import ModelDescription
from .torchvision import TorchvisionFamily


def import_factory(source: str) -> Callable[..., Any]:
    """The class or factory `source` names; every failure is a ConfigProblem on `model.source`."""
    module_name, _, name = source.rpartition(":")
    if module_name.endswith(".py"):
        module = _import_file(Path(module_name))
    else:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # the user's module may raise anything while it is imported
            raise ConfigProblem(
                "source", f"cannot import module '{module_name}': {type(exc).__name__}: {exc}"
            ) from None
    names = vars(module)
    if name not in names:
        # the classes and functions the module itself defines (not what it imported)
        own = [
            n
            for n, v in names.items()
            if not n.startswith("_")
            and (inspect.isclass(v) or inspect.isfunction(v))
            and v.__module__ == module.__name__
        ]
        listed = f" (it defines: {', '.join(own)})" if own else ""
        raise ConfigProblem("source", f"{module_name} has no '{name}'{did_you_mean(name, own)}{listed}")
    factory = names[name]
    if not callable(factory):
        raise ConfigProblem("source", f"{module_name}:{name} is a {type(factory).__name__}, not a class or function")
    return factory


def _import_file(path: Path) -> Any:
    """The file as a module of its own (named by its content, so an edited file is a new module)."""
    if not path.is_file():
        raise ConfigProblem("source", f"module file {path} not found")
    module_name = f"_recipe_runner_custom_{path.stem}_{sha256_of(path)[:16]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigProblem("source", f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look classes up by their module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise ConfigProblem("source", f"importing {path} raised {type(exc).__name__}: {exc}") from None
    return module


def _accepts(factory: Callable[..., Any], keyword: str) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class CustomFamily(TorchvisionFamily):
    name = "custom"

    def check_source(self, source: str) -> None:
        """Import the factory and call it with `args` (a missing file or name, or a raising constructor, is a
        located error at plan time)."""
        self.skeleton(source)

    def _factory(self) -> Callable[..., Any]:
        return self._memo("factory", lambda: import_factory(self.model.source))

    def _construct(self, source: str, num_classes: int) -> nn.Module:
        """factory(**args), given `num_classes` when it takes it and args do not set it; a head of another class
        count is replaced (the caller seeds the RNG)."""
        factory = self._factory()
        args = dict(self.model.args)
        if "num_classes" not in args and _accepts(factory, "num_classes"):
            args["num_classes"] = num_classes
        # as the recipe writes it (num_classes, when the runner passes it, comes from the data)
        shown = f"{self.model.source.rpartition(':')[2]}({', '.join(f'{k}={v!r}' for k, v in self.model.args.items())})"
        try:
            model = factory(**args)
        except Exception as exc:  # the user's constructor may raise anything
            raise ConfigProblem("args", f"{shown} raised {type(exc).__name__}: {exc}") from None
        if not isinstance(model, nn.Module):
            raise ConfigProblem("source", f"{shown} returned a {type(model).__name__}, not a torch.nn.Module")
        heads = self.output_layers(model)
        if not heads or not isinstance(heads[0], (nn.Linear, nn.Conv2d)):
            raise ConfigProblem("source", f"{shown} has no Linear or Conv2d layer to serve as its classifier head")
        if _classes(heads[0]) != num_classes:
            self._replace_head(model, num_classes)
        model._rr_source, model._rr_num_classes = source, num_classes
        return model

    def _shapes_of(self, source: str, num_classes: int) -> nn.Module:
        # on the CPU, not the meta device (user code may compute with tensors while it builds): custom models are
        # small as a rule
        return self._construct(source, num_classes)

    def rebuild(self, description: dict[str, Any]) -> nn.Module:
        """From the factory bound at plan time, whatever source the description names: code is never imported
        by a name read from a checkpoint (the cache key already pins the module file's content)."""
        envelope = ModelDescription.from_dict(description, self.name)
        return self._restore(self._construct(self.model.source, int(envelope.fields["num_classes"])), envelope)


def _classes(head: nn.Module) -> int:
    return int(head.out_features if isinstance(head, nn.Linear) else head.out_channels)
