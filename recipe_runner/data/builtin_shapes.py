"""Offline generated datasets of coloured shapes on noisy backgrounds, deterministic from `seed`.

builtin:shapes-cls  one shape per image, ImageFolder layout (train/<class>/, val/<class>/)
builtin:shapes      several shapes per image, Ultralytics YOLO layout with data.yaml
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._resolve import BUILTINS, Builtin

SHAPES = ["circle", "square", "triangle", "cross"]


def _draw(draw, kind: str, cx: float, cy: float, r: float, colour: tuple) -> None:
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        w = max(1.0, r / 3)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)


def _canvas(rng: np.random.Generator, size: int):
    from PIL import Image

    base = rng.integers(0, 120, size=3)
    noise = rng.integers(-25, 25, size=(size, size, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _colour(rng: np.random.Generator) -> tuple:
    return tuple(int(c) for c in rng.integers(130, 256, size=3))


def _check_classes(options: dict) -> int:
    n = options["classes"]
    if not 2 <= n <= len(SHAPES):
        from ._resolve import DataError

        raise DataError(f"classes must be between 2 and {len(SHAPES)}")
    return n


def _images(options: dict):
    """(split, index, rng, blank image) for every image of both splits, drawn from one seeded generator."""
    size = options["imgsz"]
    rng = np.random.default_rng(options["seed"])
    for split in ("train", "val"):
        for i in range(options[split]):
            yield split, i, rng, _canvas(rng, size)


def generate_classification(folder: Path, options: dict) -> list[str]:
    from PIL import ImageDraw

    names = SHAPES[: _check_classes(options)]
    size = options["imgsz"]
    for split, i, rng, image in _images(options):
        label = i % len(names)
        r = rng.uniform(0.18, 0.4) * size
        cx, cy = rng.uniform(r, size - r, size=2)
        _draw(ImageDraw.Draw(image), names[label], cx, cy, r, _colour(rng))
        out = folder / split / names[label]
        out.mkdir(parents=True, exist_ok=True)
        image.save(out / f"{i:05d}.png")
    return names


def generate_detection(folder: Path, options: dict) -> list[str]:
    from PIL import ImageDraw

    names = SHAPES[: _check_classes(options)]
    size = options["imgsz"]
    write_detection_layout(folder, names)
    for split, i, rng, image in _images(options):
        draw = ImageDraw.Draw(image)
        lines, boxes = [], []
        for _ in range(int(rng.integers(1, options["objects"] + 1))):
            for _attempt in range(20):  # place without heavy overlap, so every label is visible
                r = rng.uniform(0.08, 0.22) * size
                cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
                box = (cx - r, cy - r, cx + r, cy + r)
                if all(iou(box, b) < 0.1 for b in boxes):
                    break
            else:
                continue
            label = int(rng.integers(len(names)))
            boxes.append(box)
            _draw(draw, names[label], cx, cy, r, _colour(rng))
            lines.append(f"{label} {cx / size:.6f} {cy / size:.6f} {2 * r / size:.6f} {2 * r / size:.6f}")
        image.save(folder / "images" / split / f"{i:05d}.png")
        (folder / "labels" / split / f"{i:05d}.txt").write_text("\n".join(lines) + "\n")
    return names


def write_detection_layout(folder: Path, names: list[str]) -> None:
    """The Ultralytics layout a generator fills: images/ and labels/ per split, and data.yaml naming the classes."""
    for split in ("train", "val"):
        (folder / "images" / split).mkdir(parents=True)
        (folder / "labels" / split).mkdir(parents=True)
    names_yaml = "\n".join(f"  {i}: {n}" for i, n in enumerate(names))
    (folder / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames:\n{names_yaml}\n")


def iou(a: tuple, b: tuple) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


BOUNDS = {"train": (0, 100_000), "val": (0, 100_000), "imgsz": (16, 2048), "objects": (1, 64)}
BUILTINS.register("shapes-cls")(
    Builtin(
        "classify", {"train": 128, "val": 32, "imgsz": 32, "classes": 4, "seed": 0}, 1, generate_classification, BOUNDS
    )
)
BUILTINS.register("shapes")(
    Builtin(
        "detect",
        {"train": 64, "val": 16, "imgsz": 160, "classes": 3, "objects": 3, "seed": 0},
        1,
        generate_detection,
        BOUNDS,
    )
)
