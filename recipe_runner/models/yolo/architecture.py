"""The allow-list a YOLO architecture description must pass before Ultralytics sees it.

Why: a stage checkpoint comes from a tracking store other people can write to, and rebuilding it
hands its architecture dict to Ultralytics' `parse_model`, which `eval`s the `activation` string,
looks each layer's module name up in `ultralytics.nn.tasks`' globals (so a name such as
`load_checkpoint` calls that function with the row's arguments), and resolves string arguments
through its own `locals()`. `torch.load(weights_only=True)` keeps code out of the unpickling, not out
of this dict. So only what Ultralytics' own detection yamls use is let through: known top-level
keys, layer modules that are `nn.Module` classes, activations from a fixed grammar, and plain
literal arguments within sane bounds. Everything else is refused before any model code runs.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ...persistence.checkpoints import CheckpointError

# Every layer module the detection yamls shipped with Ultralytics 8.4 use (v3, v5, v6, v8, v9, v10, 11, 12, 26 and
# their p2/p6/ghost variants); tests/test_yolo_arch.py checks that every shipped detection yaml passes.
ULTRALYTICS_MODULES = frozenset(
    {
        "A2C2f",
        "AConv",
        "ADown",
        "Bottleneck",
        "C2",
        "C2PSA",
        "C2f",
        "C2fCIB",
        "C3",
        "C3Ghost",
        "C3k2",
        "CBFuse",
        "CBLinear",
        "Concat",
        "Conv",
        "Detect",
        "ELAN1",
        "GhostConv",
        "PSA",
        "RepNCSPELAN4",
        "SCDown",
        "SPP",
        "SPPELAN",
        "SPPF",
        "v10Detect",
    }
)
TORCH_MODULES = frozenset({"nn.ConvTranspose2d", "nn.Identity", "nn.MaxPool2d", "nn.Upsample", "nn.ZeroPad2d"})
# String arguments Ultralytics resolves itself: 'nc' from its locals, 'None' by literal_eval, the rest stay strings.
ARG_STRINGS = frozenset({"nc", "None", "nearest", "anchors"})
# `activation` is eval'd: only a torch.nn activation class with no argument, one number or inplace=True.
ACTIVATION = re.compile(
    r"(torch\.)?nn\.(SiLU|ReLU|ReLU6|LeakyReLU|Hardswish|Hardsigmoid|GELU|Mish|Sigmoid|Tanh|ELU"
    r"|Identity)\((\d{1,3}(\.\d{1,6})?|inplace=True)?\)"
)
# Bounds well above the shipped yamls (at most 43 layers, n 18, args 2048, multiples 1.5) and far below
# what would exhaust memory when the model is built.
MAX_LAYERS = 256
MAX_REPEATS = 64
MAX_NUMBER = 8192
MAX_MULTIPLE = 4.0
MAX_CLASSES = 100_000
_SCALE_NAME = re.compile(r"[a-z0-9]{0,4}")
YAML_FILE = re.compile(r"[A-Za-z0-9_./+\-]{1,995}\.ya?ml", re.IGNORECASE)


class ArchitectureError(CheckpointError, ValueError):
    """A YOLO architecture description that is not on the allow-list: not trusted, never built."""


def check_architecture(cfg: Any, where: str = "checkpoint") -> None:
    """Raise ArchitectureError unless `cfg` is a detection architecture dict made only of allow-listed parts."""

    def refuse(detail: str) -> ArchitectureError:
        return ArchitectureError(
            f"{where}: YOLO architecture refused (not on recipe-runner's allow-list of "
            f"Ultralytics detection layers): {detail}"
        )

    if not isinstance(cfg, dict):
        raise refuse(f"expected a mapping, got {type(cfg).__name__}")
    checks = {
        "nc": _check_nc,
        "scales": _check_scales,
        "scale": _check_scale,
        "depth_multiple": _check_multiple,
        "width_multiple": _check_multiple,
        "activation": _check_activation,
        "end2end": _check_optional_bool,
        "inplace": _check_optional_bool,
        "reg_max": _check_reg_max,
        "yaml_file": _check_yaml_file,
        "channels": _check_channels,
        "ch": _check_channels,
        "backbone": _check_layers,
        "head": _check_layers,
    }
    for key, value in cfg.items():
        if key not in checks:
            raise refuse(f"unknown key {str(key)[:40]!r}")
        problem = checks[key](value)
        if problem:
            raise refuse(f"{key}: {problem}")
    if not isinstance(cfg.get("backbone"), list) or not isinstance(cfg.get("head"), list) or "nc" not in cfg:
        raise refuse("'nc', 'backbone' and 'head' are required")
    if len(cfg["backbone"]) + len(cfg["head"]) > MAX_LAYERS:
        raise refuse(f"more than {MAX_LAYERS} layers")
    for i, row in enumerate(cfg["backbone"] + cfg["head"]):
        problem = _check_row(row)
        if problem:
            raise refuse(f"layer {i}: {problem}")


def check_description(description: Any) -> None:
    """A whole YOLO stage-checkpoint description: the architecture plus the plain fields rebuild reads."""
    if not isinstance(description, dict):
        raise ArchitectureError("checkpoint: the model description is not a mapping")
    check_architecture(description.get("yaml"))
    names = description.get("names") or []
    if (
        _check_nc(description.get("nc"))
        or not isinstance(names, list)
        or len(names) > description["nc"]
        or not all(isinstance(n, str) and len(n) <= 200 for n in names)
    ):
        raise ArchitectureError("checkpoint: 'nc' or 'names' of the model description is not a sane class list")
    if not isinstance(description.get("split_c2f", False), bool):
        raise ArchitectureError("checkpoint: 'split_c2f' must be true or false")


def _number(value: Any, low: float, high: float, integer: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        return False
    return math.isfinite(value) and low <= value <= high


def _check_nc(value: Any) -> str | None:
    return None if _number(value, 1, MAX_CLASSES, integer=True) else f"must be a class count, got {value!r:.40}"


def _check_scales(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > 16:
        return "must map scale names to [depth, width, max_channels]"
    for name, triple in value.items():
        if (
            not (isinstance(name, str) and _SCALE_NAME.fullmatch(name))
            or not isinstance(triple, list)
            or len(triple) != 3
        ):
            return f"bad entry {str(name)[:20]!r}"
        depth, width, channels = triple
        if not (
            _number(depth, 0, MAX_MULTIPLE) and _number(width, 0, MAX_MULTIPLE) and _number(channels, 1, MAX_NUMBER)
        ):
            return f"numbers out of range in {str(name)[:20]!r}"
    return None


def _check_scale(value: Any) -> str | None:
    return None if value is None or (isinstance(value, str) and _SCALE_NAME.fullmatch(value)) else "not a scale name"


def _check_multiple(value: Any) -> str | None:
    return None if _number(value, 0, MAX_MULTIPLE) and value > 0 else f"must be in (0, {MAX_MULTIPLE}]"


def _check_activation(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and ACTIVATION.fullmatch(value)):
        return None
    return f"{str(value)[:60]!r} is not a plain torch.nn activation such as nn.SiLU() or nn.LeakyReLU(0.1)"


def _check_optional_bool(value: Any) -> str | None:
    return None if value is None or isinstance(value, bool) else "must be true or false"


def _check_reg_max(value: Any) -> str | None:
    return None if _number(value, 1, 64, integer=True) else "must be an integer in 1..64"


def _check_yaml_file(value: Any) -> str | None:
    # it reaches Ultralytics' trainer as `model`, where a *.pt name or a URL would be loaded, and its DDP launcher
    # writes it into a Python script: a plain path only (no quotes, spaces, colons or escapes)
    ok = isinstance(value, str) and YAML_FILE.fullmatch(value) is not None
    return (
        None
        if ok
        else (f"{str(value)[:60]!r} is not a local .yaml file name (letters, digits, '_', '-', '.', '+', '/')")
    )


def _check_channels(value: Any) -> str | None:
    return None if _number(value, 1, 16, integer=True) else "must be an input channel count (1..16)"


def _check_layers(value: Any) -> str | None:
    return None if isinstance(value, list) else "must be a list of layers"


def _check_row(row: Any) -> str | None:
    """One `[from, repeats, module, args]` row."""
    if not isinstance(row, list) or len(row) != 4:
        return "must be [from, repeats, module, args]"
    source, repeats, module, args = row
    sources = source if isinstance(source, list) else [source]
    if not sources or len(sources) > 16 or not all(_number(s, -MAX_LAYERS, MAX_LAYERS, integer=True) for s in sources):
        return f"'from' must be layer indices, got {str(source)[:60]!r}"
    if not _number(repeats, 1, MAX_REPEATS, integer=True):
        return f"repeats must be 1..{MAX_REPEATS}, got {str(repeats)[:20]!r}"
    problem = _check_module(module)
    if problem:
        return problem
    if not isinstance(args, list) or len(args) > 16:
        return "args must be a short list"
    for arg in args:
        items = arg if isinstance(arg, list) else [arg]
        if isinstance(arg, list) and (len(arg) > 16 or any(isinstance(a, list) for a in arg)):
            return "list arguments must be short lists of numbers"
        for item in items:
            if not (
                item is None
                or isinstance(item, bool)
                or _number(item, -MAX_NUMBER, MAX_NUMBER)
                or (isinstance(item, str) and item in ARG_STRINGS)
            ):
                return f"argument {str(item)[:60]!r} is not a plain number, bool, None or one of {sorted(ARG_STRINGS)}"
    return None


def _check_module(name: Any) -> str | None:
    """An allow-listed name that also resolves, the way parse_model resolves it, to an nn.Module class."""
    if not isinstance(name, str) or (name not in ULTRALYTICS_MODULES and name not in TORCH_MODULES):
        return f"module {str(name)[:60]!r} is not an allowed layer"
    import torch.nn
    from ultralytics.nn import tasks

    found = getattr(torch.nn, name[3:], None) if name.startswith("nn.") else vars(tasks).get(name)
    if not (isinstance(found, type) and issubclass(found, torch.nn.Module)):
        return f"module {name!r} is not an nn.Module class in this Ultralytics"
    return None
