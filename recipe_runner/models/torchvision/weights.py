"""Trained weights for classifiers: a local state-dict file, or a torchvision weights name from the local hub cache.

Loaded with `torch.load(weights_only=True)` only: a file that needs code unpickled is refused (a user's file is
trusted to hold weights, not to run code). Nothing is downloaded: a torchvision name is found in
`$TORCH_HOME/hub/checkpoints` (torch.hub's folder) or reported missing, naming the file and the folder.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config_base import ConfigProblem

if TYPE_CHECKING:
    import torch

USUAL_KEYS = ("state_dict", "model_state_dict", "model")  # where training scripts put the state dict in a checkpoint
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's: the default normalisation


@dataclass(frozen=True)
class Preprocess:
    """Image preparation, scaled to the recipe's imgsz: a square resize (the default), or the weights' own
    shorter-side resize then centre crop (ratio = resize_size / crop_size of `weights.transforms()`)."""

    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD
    resize_ratio: float | None = None
    interpolation: str = "bilinear"
    origin: str = "default"

    def transform(self, imgsz: int, train: bool) -> Any:
        from torchvision import transforms as T

        if self.resize_ratio is None:
            steps: list[Any] = [T.Resize((imgsz, imgsz))]
        else:
            mode = T.InterpolationMode(self.interpolation)
            steps = [T.Resize(round(imgsz * self.resize_ratio), interpolation=mode), T.CenterCrop(imgsz)]
        if train:
            steps.append(T.RandomHorizontalFlip())
        return T.Compose([*steps, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def record(self) -> dict[str, Any]:
        resize = (
            "square resize to imgsz"
            if self.resize_ratio is None
            else f"shorter side to round(imgsz * {self.resize_ratio:.4f}), then centre crop imgsz"
        )
        return {
            "from": self.origin,
            "resize": resize,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a file holding one, or a checkpoint dict holding one under a usual key."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ConfigProblem(
            "weights",
            f"{path} needs Python code unpickled to load ({first}); it is refused: save "
            "the weights alone, torch.save(model.state_dict(), path)",
        ) from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise ConfigProblem("weights", f"cannot read weights file {path}: {exc}") from None
    state = _state_dict_in(payload)
    if state is None:
        keys = ", ".join(map(str, list(payload)[:8])) if isinstance(payload, dict) else type(payload).__name__
        raise ConfigProblem(
            "weights",
            f"{path} holds no state dict (a mapping of names to tensors, at the top or "
            f"under {', '.join(USUAL_KEYS)}); found: {keys}",
        )
    # saved from a DataParallel/DDP wrapper: every name starts with 'module.'
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _state_dict_in(payload: Any) -> dict[str, Any] | None:
    import torch

    def is_state(value: Any) -> bool:
        return (
            isinstance(value, dict)
            and bool(value)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
        )

    if is_state(payload):
        return dict(payload)
    if isinstance(payload, dict):
        return next((dict(payload[k]) for k in USUAL_KEYS if is_state(payload.get(k))), None)
    return None


def hub_weights(source: str, name: str) -> tuple[Path, Any]:
    """(the file in the local hub cache, torchvision's weights entry) for `name` of architecture `source`."""
    import torch
    import torchvision

    from ...registry import did_you_mean

    try:
        enum = torchvision.models.get_model_weights(source)
    except (ValueError, KeyError):
        raise ConfigProblem(
            "weights", f"torchvision has no named weights for '{source}'; give a local weights file instead"
        ) from None
    names = [w.name for w in enum] + ["DEFAULT"]
    if name not in names:
        raise ConfigProblem(
            "weights",
            f"'{name}' is not a weights name of {source}{did_you_mean(name, names)} (known: {', '.join(names)})",
        )
    weights = enum[name]
    filename = weights.url.rsplit("/", 1)[-1]
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / filename
    if not path.is_file():
        raise ConfigProblem(
            "weights",
            f"{source} weights {weights.name} are not in the local torch hub cache: put "
            f"{filename} in {folder} (set TORCH_HOME to use another cache; torchvision "
            f"publishes it at {weights.url}); nothing is downloaded",
        )
    return path, weights


def weights_preprocess(weights: Any) -> Preprocess:
    """The preprocessing of torchvision's `weights.transforms()` (ImageClassification), as a Preprocess."""
    t = weights.transforms()
    crop, resize = _first(t.crop_size), _first(t.resize_size)
    return Preprocess(
        tuple(float(v) for v in t.mean),
        tuple(float(v) for v in t.std),
        resize / crop if crop and resize else None,
        t.interpolation.value,
        f"{weights.__class__.__name__}.{weights.name}.transforms()",
    )


def _first(value: Any) -> int | None:
    if isinstance(value, (list, tuple)):
        return int(value[0]) if value else None
    return int(value) if value else None
