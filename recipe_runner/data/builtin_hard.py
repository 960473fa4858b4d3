"""builtin:shapes-hard: a generated detection set where accuracy binds (builtin:shapes saturates a YOLOv8n).

Why it is harder: classes are (shape, colour) pairs, so neither cue alone names a class (a red circle and a
blue circle are two classes, and a green circle is a distractor, never labelled); objects range from a few
pixels to a quarter of the image (log-uniform, so small ones are common); they overlap (up to IoU 0.35, the
smaller drawn on top); polygons are rotated a little; and every background is textured (stripes, checks or a
gradient, plus noise) and cluttered with lines and unlabelled shapes. Deterministic from `seed`, like the
other builtins.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ._resolve import BUILTINS, Builtin, DataError
from .builtin_shapes import iou, write_detection_layout

SHAPES = ["circle", "square", "triangle", "cross", "ring", "star"]
COLOURS = {
    "red": (215, 45, 40),
    "blue": (45, 95, 230),
    "green": (40, 185, 70),
    "yellow": (230, 205, 45),
    "orange": (245, 120, 25),
    "white": (225, 225, 225),
}
# classes in order: `classes: n` takes the first n; every shape of the first eight comes in two colours
CLASSES = [(shape, colour) for shape in ("circle", "square", "triangle", "cross") for colour in ("red", "blue")] + [
    ("ring", "green"),
    ("star", "yellow"),
    ("ring", "orange"),
    ("star", "white"),
]
# object radius as a fraction of the image side, drawn log-uniformly
RADIUS = (0.03, 0.22)
MAX_IOU = 0.35


def _background(rng: np.random.Generator, size: int):
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    kind = int(rng.integers(3))
    if kind == 0:  # stripes at a random angle and frequency
        angle, frequency = rng.uniform(0, math.pi), rng.uniform(3, 14)
        pattern = np.sin(2 * math.pi * frequency * (x * math.cos(angle) + y * math.sin(angle)))
    elif kind == 1:  # checks
        cells = int(rng.integers(3, 10))
        pattern = ((np.floor(x * cells) + np.floor(y * cells)) % 2) * 2 - 1
    else:
        pattern = x * rng.uniform(-1.5, 1.5) + y * rng.uniform(-1.5, 1.5)
    base, amplitude = rng.uniform(25, 120, size=3), rng.uniform(10, 40, size=3)
    pixels = base + pattern[..., None] * amplitude + rng.normal(0, 14, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _clutter(draw, rng: np.random.Generator, size: int) -> None:
    """Lines and arcs in muted colours: edges a detector must learn to ignore."""
    for _ in range(int(rng.integers(3, 9))):
        colour = tuple(int(c) for c in rng.integers(40, 200, size=3))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, size=4))
        if rng.random() < 0.6:
            draw.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(1, 4)))
        else:
            box = [min(x0, x1), min(y0, y1), max(x0, x1) + 2, max(y0, y1) + 2]
            draw.arc(box, float(rng.uniform(0, 360)), float(rng.uniform(0, 360)), fill=colour, width=2)


def _outline(kind: str, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    """The polygon of a square, triangle, cross or star of radius `r`, turned by `turn` radians."""
    if kind == "square":
        points = [(r * math.cos(a), r * math.sin(a)) for a in (0.25 * math.pi * k for k in (1, 3, 5, 7))]
    elif kind == "triangle":
        points = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2 + 2 * math.pi * k / 3 for k in range(3))]
    elif kind == "star":
        points = [
            ((r if k % 2 == 0 else 0.45 * r) * math.cos(a), (r if k % 2 == 0 else 0.45 * r) * math.sin(a))
            for k, a in ((k, -math.pi / 2 + math.pi * k / 5) for k in range(10))
        ]
    else:  # cross: a plus sign with arms a third of r wide
        w = r / 3
        points = [
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
            (-r, -w),
            (-w, -w),
            (-w, -r),
        ]
    c, s = math.cos(turn), math.sin(turn)
    return [(cx + px * c - py * s, cy + px * s + py * c) for px, py in points]


def _place(rng: np.random.Generator, size: int, kind: str) -> tuple[list, tuple[float, float, float, float]]:
    """A random shape inside the image: (what to draw, its tight box)."""
    r = size * math.exp(rng.uniform(math.log(RADIUS[0]), math.log(RADIUS[1])))
    # a turned square reaches r * sqrt(2) at most; keep every shape inside the image
    cx, cy = rng.uniform(1.45 * r + 1, size - 1.45 * r - 1, size=2)
    if kind in ("circle", "ring"):
        return [cx - r, cy - r, cx + r, cy + r], (cx - r, cy - r, cx + r, cy + r)
    points = _outline(kind, cx, cy, r, rng.uniform(-0.35, 0.35))
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return points, (min(xs), min(ys), max(xs), max(ys))


def _paint(draw, kind: str, geometry: list, colour: tuple) -> None:
    if kind == "circle":
        draw.ellipse(geometry, fill=colour)
    elif kind == "ring":
        draw.ellipse(geometry, outline=colour, width=max(2, round((geometry[2] - geometry[0]) / 7)))
    else:
        draw.polygon(geometry, fill=colour)


def _jitter(rng: np.random.Generator, colour: tuple) -> tuple:
    """The named colour, shaded (0.8-1.1) and per-channel noisy (+-12); the ranges of two named colours never
    overlap in every channel (the closest pair, yellow and orange, stays apart in green)."""
    shade = rng.uniform(0.8, 1.1)
    return tuple(int(np.clip(c * shade + rng.integers(-12, 13), 0, 255)) for c in colour)


def _check_classes(options: dict) -> int:
    n = options["classes"]
    if not 2 <= n <= len(CLASSES):
        raise DataError(f"classes must be between 2 and {len(CLASSES)}")
    return n


def generate(folder: Path, options: dict) -> list[str]:
    from PIL import ImageDraw

    classes = CLASSES[: _check_classes(options)]
    names = [f"{colour}-{shape}" for shape, colour in classes]
    distractors = [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in classes]
    size = options["imgsz"]
    rng = np.random.default_rng(options["seed"])
    write_detection_layout(folder, names)
    for split in ("train", "val"):
        for i in range(options[split]):
            image = _background(rng, size)
            draw = ImageDraw.Draw(image)
            _clutter(draw, rng, size)
            items: list[tuple[int, str, str, list, tuple]] = []  # (label or -1, shape, colour, geometry, box)
            wanted = [int(rng.integers(len(classes))) for _ in range(int(rng.integers(1, options["objects"] + 1)))]
            wanted += [-1] * int(rng.integers(0, options["distractors"] + 1))
            for label in wanted:
                shape, colour = classes[label] if label >= 0 else distractors[int(rng.integers(len(distractors)))]
                for _attempt in range(20):
                    geometry, box = _place(rng, size, shape)
                    if all(iou(box, other[4]) < MAX_IOU for other in items):
                        items.append((label, shape, colour, geometry, box))
                        break
            # big ones first: a small object is never hidden under a big one
            items.sort(key=lambda item: -(item[4][2] - item[4][0]) * (item[4][3] - item[4][1]))
            lines = []
            for label, shape, colour, geometry, box in items:
                _paint(draw, shape, geometry, _jitter(rng, COLOURS[colour]))
                if label >= 0:
                    x0, y0, x1, y1 = box
                    lines.append(
                        f"{label} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} "
                        f"{(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}"
                    )
            image.save(folder / "images" / split / f"{i:05d}.png")
            (folder / "labels" / split / f"{i:05d}.txt").write_text("\n".join(lines) + "\n" if lines else "")
    return names


BUILTINS.register("shapes-hard")(
    Builtin(
        "detect",
        {"train": 400, "val": 100, "imgsz": 160, "classes": 8, "objects": 8, "distractors": 3, "seed": 0},
        1,
        generate,
    )
)
