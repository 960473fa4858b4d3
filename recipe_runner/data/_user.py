"""Check a user's dataset folder before any training starts, and read its class names."""

from __future__ import annotations

import math
import os
from pathlib import Path

from . import _layout
from ._resolve import DataError


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
        classes = _layout.image_folder_classes(folder)
        if not classes:
            raise DataError(f"{folder}: no class folders")
        for c in classes:
            if next(_layout.class_images(folder / c), None) is None:
                raise DataError(f"{folder / c}: no images")
        if names is not None and classes != names:  # say which: class indices are assigned by sorted name
            only = [
                f"only in {sp}/: {', '.join(sorted(c))}"
                for sp, c in (("train", set(names) - set(classes)), ("val", set(classes) - set(names)))
                if c
            ]
            raise DataError(f"{root}: train/ and val/ have different classes ({'; '.join(only)})")
        names = classes
    return names


def _yolo_yaml(path: Path) -> list[str]:
    """An Ultralytics data.yaml, checked the way Ultralytics will read it, so mistakes surface before training."""
    import yaml

    if path.is_dir():
        raise DataError(f"{path}: a detection dataset is given as its data.yaml file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: an Ultralytics data.yaml must be a mapping with 'train', 'val' and 'names'")
    missing = [k for k in ("train", "val", "names") if k not in data]
    if missing:
        raise DataError(
            f"{path}: missing {', '.join(repr(k) for k in missing)} (an Ultralytics data.yaml needs "
            "'train', 'val' and 'names')"
        )
    names = _class_names(path, data["names"])
    if "nc" in data and data["nc"] != len(names):
        raise DataError(f"{path}: nc is {data['nc']} but 'names' lists {len(names)} classes")
    root = _layout.dataset_root(path, data)
    for split in ("train", "val"):
        images = _split_images(path, root, split, data[split])
        _check_labels(images, len(names))
    return names


def _class_names(path: Path, names) -> list[str]:
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DataError(f"{path}: 'names' keys must be the class ids 0..{len(names) - 1} (got {sorted(names)})")
        names = [names[k] for k in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: 'names' must be a non-empty list or an id -> name mapping")
    return [str(n) for n in names]


def _split_images(path: Path, root: Path, split: str, entry) -> list[Path]:
    """The images of a split: folders (searched recursively) or txt lists, one entry or a list of them."""
    images: list[Path] = []
    for item, where in zip(entry if isinstance(entry, list) else [entry], _layout.split_sources(root, entry)):
        if where.is_dir():
            images += [Path(p) for p in _layout.folder_images(where)]
        elif where.is_file() and where.suffix == ".txt":
            for line, image in _layout.listed_images(where):
                if not os.path.isfile(image):
                    raise DataError(f"{where}: lists '{line}', which does not exist")
                images.append(Path(image))
        else:
            raise DataError(f"{path}: {split}: '{item}' is neither a folder nor a .txt list (looked for {where})")
    if not images:
        raise DataError(f"{path}: {split}: no images found in {entry!r}")
    return images


def _check_labels(images: list[Path], num_classes: int) -> None:
    """Every class id in range: Ultralytics would drop such an image silently, with only a note in its cache."""
    for image in images:
        label = Path(_layout.label_path(str(image)))
        if not label.is_file():
            continue  # an image without labels is a background image
        for number, line in enumerate(label.read_text().splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            try:
                cls = float(fields[0])
            except ValueError:
                raise DataError(f"{label}:{number}: '{fields[0]}' is not a class id") from None
            # nan and inf parse as floats: not class ids either (int() of them raises)
            if not math.isfinite(cls) or cls != int(cls) or not 0 <= cls < num_classes:
                raise DataError(
                    f"{label}:{number}: class id {fields[0]} is outside 0..{num_classes - 1} "
                    f"(the data.yaml names {num_classes} classes)"
                )
