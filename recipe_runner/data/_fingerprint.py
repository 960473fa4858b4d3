"""The fingerprint of a user dataset: exactly the files it consists of, by content, and fast on a re-run.

What counts (found by `_layout`, the way Ultralytics and torchvision find them):
- a data.yaml: its bytes, then per split (train, val, test) each folder or txt list it names: every
  image Ultralytics would read (by its name relative to that folder, or the list's bytes) and its label
  file (Ultralytics' images/ -> labels/ rule), or the label's absence;
- an ImageFolder root: per split (train, val), per class folder (hidden ones are not classes), every
  image torchvision would read, by its name relative to the split.
Nothing else: an mlflow.db, notes or Ultralytics' labels.cache beside the data change no key.

Files count by sha256, not by mtime: a copy of the same data on another machine, a fresh checkout or a
`touch` keeps the key (so a colleague's stages are reused through a shared tracking server), and an edit
that keeps the size is still seen. Hashing is cached per dataset in a manifest keyed by (path, size,
mtime_ns, ctime_ns), so only new or changed files are read again and a re-run over a big dataset only stats
its files. ctime is in the key because no tool can set it: an edit that restores size and mtime (rsync -t,
`touch -r`) still changes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from . import _layout

MANIFEST_VERSION = 2
# A file modified this recently may change again within the same mtime tick: hash it, but do not cache the
# hash (git's "racily clean" rule).
_RACY_NS = 2_000_000_000


class FileHashes:
    """sha256 of files, remembered between runs in a manifest under the cache folder: path -> [size, mtime_ns,
    ctime_ns, sha256]."""

    def __init__(self, manifest: Path):
        self.manifest = manifest
        self.known: dict[str, list] = {}
        self.seen: dict[str, list] = {}
        self.hashed = 0  # files actually read this time
        try:
            data = json.loads(manifest.read_text())
            if data.get("version") == MANIFEST_VERSION:
                self.known = data["files"]
        except (OSError, ValueError, KeyError, AttributeError):
            pass  # no manifest yet, or a damaged one: hash everything again

    def digest(self, path: str) -> str:
        stat = os.stat(path)
        key = path
        entry = self.known.get(key)
        if entry and entry[:3] == [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]:
            self.seen[key] = entry
            return entry[3]
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        self.hashed += 1
        if stat.st_mtime_ns < time.time_ns() - _RACY_NS:
            self.seen[key] = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, digest]
        return digest

    def save(self) -> None:
        """Keep only this run's files (a manifest never grows with deleted data); best effort, atomically."""
        if self.seen == self.known:
            return
        try:
            self.manifest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=self.manifest.parent)
            with os.fdopen(fd, "w") as f:
                json.dump({"version": MANIFEST_VERSION, "files": self.seen}, f)
            os.replace(tmp, self.manifest)
        except OSError:
            pass  # a read-only cache folder costs speed, not correctness


class _Digest:
    """A sha256 fed with unambiguous records."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()

    def add(self, *fields: Any) -> None:
        self.h.update(("\0".join(str(f) for f in fields) + "\n").encode())

    def hexdigest(self) -> str:
        return self.h.hexdigest()[:16]


def fingerprint_path(path: Path, cache: Path) -> tuple[str, int, int]:
    """(fingerprint, files counted, files read) of a data.yaml file or an ImageFolder root (resolved path)."""
    hashes = FileHashes(cache / "fingerprints" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:24]}.json")
    digest, count = _Digest(), 0
    if path.is_file():
        count = _data_yaml(path, hashes, digest)
    else:
        count = _image_folder(path, hashes, digest)
    hashes.save()
    return digest.hexdigest(), count, hashes.hashed


def _data_yaml(path: Path, hashes: FileHashes, digest: _Digest) -> int:
    import yaml

    text = path.read_bytes()
    digest.add("data.yaml", hashlib.sha256(text).hexdigest())
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError:
        return 1  # the checks in _user.py report it
    if not isinstance(content, dict):
        return 1
    root, count = _layout.dataset_root(path, content), 1
    for split in _layout.DETECT_SPLITS:
        if content.get(split) is None:
            continue
        for i, source in enumerate(_layout.split_sources(root, content[split])):
            digest.add("split", split, i)
            if source.is_dir():
                prefix = len(os.path.join(source, ""))
                for image in _layout.folder_images(source):
                    digest.add(image[prefix:], hashes.digest(image), _label(image, hashes))
                    count += 1
            elif source.is_file():
                digest.add("list", hashlib.sha256(source.read_bytes()).hexdigest())
                for line, image in _layout.listed_images(source):
                    known = hashes.digest(image) if os.path.isfile(image) else "missing"
                    digest.add(line, known, _label(image, hashes))
                    count += 1
            else:
                digest.add("missing")  # the checks in _user.py report it
    return count


def _label(image: str, hashes: FileHashes) -> str:
    try:
        return hashes.digest(_layout.label_path(image))
    except FileNotFoundError:
        return "-"  # a background image


def _image_folder(root: Path, hashes: FileHashes, digest: _Digest) -> int:
    count = 0
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            digest.add(split, "missing")
            continue
        prefix = len(os.path.join(folder, ""))
        for cls in _layout.image_folder_classes(folder):
            for image in _layout.class_images(folder / cls):
                digest.add(split, image[prefix:], hashes.digest(image))
                count += 1
    return count
