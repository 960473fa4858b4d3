"""Which files a user dataset consists of, found the way the libraries that read it find them.

One place for it, because both the pre-flight checks (`_user.py`) and the data fingerprint
(`_fingerprint.py`) must agree with what Ultralytics and torchvision actually read: a file the
trainer reads but the fingerprint skips is a stale cache; a file the fingerprint hashes but nobody
reads (an mlflow.db beside the data.yaml) is a cache that never hits.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# ultralytics.data.utils.IMG_FORMATS (8.4) and torchvision.datasets.folder.IMG_EXTENSIONS, copied so that
# validation and planning need neither library; tests/test_data_fingerprint.py checks them against both.
DETECT_IMAGE_SUFFIXES = frozenset(
    {".avif", ".bmp", ".dng", ".heic", ".heif", ".jp2", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"}
)
CLASSIFY_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"})
DETECT_SPLITS = ("train", "val", "test")


def dataset_root(yaml_path: Path, content: dict[str, Any]) -> Path:
    """`path:` of a data.yaml, relative to the yaml's folder (what users expect; the runner hands Ultralytics
    an absolute copy, see models/yolo/environment.resolved_data_yaml)."""
    root = Path(str(content.get("path") or ".")).expanduser()
    return root if root.is_absolute() else yaml_path.parent / root


def split_sources(root: Path, entry: Any) -> list[Path]:
    """The folders / txt lists one split names (one entry or a list of them), resolved against the root."""
    sources = []
    for item in entry if isinstance(entry, list) else [entry]:
        where = Path(str(item)).expanduser()
        sources.append(where if where.is_absolute() else root / where)
    return sources


# Paths are plain strings below: pathlib costs several times the stat calls themselves on 100k-image datasets.
def folder_images(folder: Path) -> Iterator[str]:
    """Images under a split folder as Ultralytics globs them (`**/*.*`: hidden files and folders skipped)."""
    for current, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in DETECT_IMAGE_SUFFIXES:
                yield os.path.join(current, name)


def listed_images(listing: Path) -> list[tuple[str, str]]:
    """(line as written, image path) of a txt list: './x' is relative to the list's folder, anything else is taken
    as written (Ultralytics' rule), and lines that do not name an image are ignored, as Ultralytics ignores them."""
    found = []
    for line in listing.read_text(encoding="utf-8-sig").splitlines():
        line = line.strip()
        if line and os.path.splitext(line)[1].lower() in DETECT_IMAGE_SUFFIXES:
            found.append((line, os.path.join(listing.parent, line[2:]) if line.startswith("./") else line))
    return found


def label_path(image: str) -> str:
    """Ultralytics' img2label_paths: the last `/images/` becomes `/labels/`, the suffix `.txt`."""
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return labels.join(str(image).rsplit(images, 1)).rsplit(".", 1)[0] + ".txt"


def image_folder_classes(split: Path) -> list[str]:
    """Class folders of an ImageFolder split; hidden folders (.ipynb_checkpoints) are not classes."""
    return sorted(e.name for e in os.scandir(split) if e.is_dir() and not e.name.startswith("."))


def class_images(folder: Path) -> Iterator[str]:
    """Images of one class as torchvision's ImageFolder walks them (recursive, following links)."""
    for current, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() in CLASSIFY_IMAGE_SUFFIXES:
                yield os.path.join(current, name)
