"""Check a user's dataset folder before any training starts, and read its class names."""
from __future__ import annotations

from pathlib import Path

from ._resolve import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def inspect_user_dataset(path: Path, task: str) -> list[str]:
    if task == "classify":
        return _image_folder(path)
    return _yolo_yaml(path)


def _image_folder(root: Path) -> list[str]:
    """An ImageFolder root with train/<class>/*.png and val/<class>/*.png."""
    if not root.is_dir():
        raise DataError(f"{root}: a classification dataset must be a folder with train/ and val/ subfolders")
    names = None
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise DataError(f"{root}: missing '{split}/' (expected {split}/<class>/<image>)")
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if not classes:
            raise DataError(f"{folder}: no class folders")
        for c in classes:
            if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in (folder / c).iterdir()):
                raise DataError(f"{folder / c}: no images")
        if names is not None and classes != names:
            raise DataError(f"{root}: train/ and val/ have different classes")
        names = classes
    return names


def _yolo_yaml(path: Path) -> list[str]:
    import yaml

    if path.is_dir():
        raise DataError(f"{path}: a detection dataset is given as its data.yaml file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or "names" not in data or "train" not in data or "val" not in data:
        raise DataError(f"{path}: an Ultralytics data.yaml needs 'train', 'val' and 'names'")
    names = data["names"]
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    return [str(n) for n in names]
