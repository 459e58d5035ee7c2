"""The `shapes` benchmark generator: compositional zero-shot text-to-image.

This implements the contract in ``docs/shapes.md`` (the project's test of the paper's
zero-shot claim, §3): 64x64 images of one or two coloured shapes on black, with a caption, where
every colour and every shape is seen in training but four colour-shape pairs
(:data:`HELD_OUT_PAIRS`) never are. The split ``test-zero-shot`` asks for exactly those pairs.

Geometry is defined at the benchmark resolution of 64 px; :func:`render` scales every length by
``image_size / 64`` for other sizes. Rasterisation (anti-aliasing off) is done by
:func:`shape_template`, which the evaluator (:mod:`dalle.evaluate.shapes`) reuses for template IoU.
Every template fills its bounding box exactly (each edge row/column has at least one pixel), so the
bounding box the parser measures on a clean render equals the generator's box.

Everything is deterministic: :func:`generate` derives one random stream per ``(seed, split)`` and
only uses ``Generator.integers``, so output is identical across runs and platforms for a given
numpy version.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
from PIL import Image

from dalle.errors import DalleError

__all__ = [
    "PALETTE",
    "SHAPES",
    "SIZES",
    "RELATIONS",
    "HELD_OUT_PAIRS",
    "SPLITS",
    "BENCHMARK_SIZE",
    "MIN_GAP",
    "RELATION_MARGIN",
    "ShapeObject",
    "Scene",
    "shape_template",
    "shape_mask",
    "render",
    "caption",
    "relation_between",
    "sample_scene",
    "generate_scenes",
    "generate",
    "write_shapes",
]

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (40, 190, 70),
    "cyan": (40, 200, 220),
    "blue": (40, 80, 230),
    "purple": (150, 70, 200),
    "white": (240, 240, 240),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SIZES: dict[str, int] = {"small": 12, "large": 24}
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("green", "triangle"), ("yellow", "circle"), ("purple", "square"), ("blue", "cross")}
)
SPLITS: tuple[str, ...] = ("train", "test-seen", "test-zero-shot")

BENCHMARK_SIZE = 64
MIN_GAP = 2  # px of empty space required between two bounding boxes
RELATION_MARGIN = 8.0  # px a centre offset must reach for a relation to be used in a caption

# Colour-shape pairs in a fixed order, so that sampling by index is reproducible.
_ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in PALETTE for s in SHAPES)
_SEEN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in _ALL_PAIRS if p not in HELD_OUT_PAIRS)
_HELD_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in _ALL_PAIRS if p in HELD_OUT_PAIRS)
_SIZE_NAMES: tuple[str, ...] = tuple(SIZES)
_MAX_PLACEMENT_TRIES = 100_000
_T = TypeVar("_T")


class HasCenter(Protocol):
    """Anything with a bounding-box centre ``(x, y)`` in pixels (y grows downwards)."""

    @property
    def center(self) -> tuple[float, float]: ...


@dataclass(frozen=True)
class ShapeObject:
    """One object; its bounding box is ``[x0, x0 + side) x [y0, y0 + side)`` at 64 px scale."""

    color: str
    shape: str
    size: str
    x0: int
    y0: int
    side: int

    def __post_init__(self) -> None:
        if self.color not in PALETTE:
            raise DalleError(f"unknown colour {self.color!r}; expected one of {list(PALETTE)}")
        if self.shape not in SHAPES:
            raise DalleError(f"unknown shape {self.shape!r}; expected one of {list(SHAPES)}")
        if self.size not in SIZES:
            raise DalleError(f"unknown size {self.size!r}; expected one of {list(SIZES)}")
        if self.side != SIZES[self.size]:
            raise DalleError(f"a {self.size} object has side {SIZES[self.size]}, got {self.side}")

    @property
    def center(self) -> tuple[float, float]:
        """Centre of the bounding box as floats ``(x, y)``."""
        return (self.x0 + self.side / 2, self.y0 + self.side / 2)

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` with exclusive ``x1, y1``."""
        return (self.x0, self.y0, self.x0 + self.side, self.y0 + self.side)


@dataclass(frozen=True)
class Scene:
    """One or two objects; ``relation`` describes ``objects[0]`` relative to ``objects[1]``."""

    objects: tuple[ShapeObject, ...]
    relation: str | None

    def __post_init__(self) -> None:
        if len(self.objects) not in (1, 2):
            raise DalleError(f"a scene holds 1 or 2 objects, got {len(self.objects)}")
        if len(self.objects) == 1 and self.relation is not None:
            raise DalleError("a one-object scene has no relation")
        if len(self.objects) == 2 and self.relation not in RELATIONS:
            raise DalleError(
                f"a two-object scene needs a relation in {RELATIONS}, got {self.relation!r}"
            )


@lru_cache(maxsize=512)
def shape_template(shape: str, width: int, height: int) -> np.ndarray:
    """Filled ``shape`` drawn in a ``width`` x ``height`` box, as a read-only bool array (h, w).

    Pixel ``(i, j)`` (column, row) is tested at its centre ``(i + 0.5, j + 0.5)``:

    * circle: the inscribed ellipse (centre inside or on it);
    * square: every pixel;
    * triangle: apex at ``(w/2, 0)``, base on the bottom edge. A row is filled where the triangle
      is at the row's *lower* edge: with a pure centre test the apex row of an even-sided box
      would be empty and the drawn shape would not fill its nominal bounding box;
    * cross: vertical bar columns ``[round(w/3), round(2w/3))`` and horizontal bar rows
      ``[round(h/3), round(2h/3))``; ``round`` never sees an exact half here, so both bars are
      centred (``round(2s/3) == s - round(s/3)``).
    """
    if shape not in SHAPES:
        raise DalleError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")
    if width < 1 or height < 1:
        raise DalleError(f"template box must be at least 1x1, got {width}x{height}")
    xc = np.arange(width, dtype=np.float64)[None, :] + 0.5
    yc = np.arange(height, dtype=np.float64)[:, None] + 0.5
    if shape == "circle":
        rx, ry = width / 2, height / 2
        mask = ((xc - rx) / rx) ** 2 + ((yc - ry) / ry) ** 2 <= 1.0
    elif shape == "square":
        mask = np.ones((height, width), dtype=bool)
    elif shape == "triangle":
        half_width_at_row_bottom = (width / 2) * (yc + 0.5) / height
        mask = np.abs(xc - width / 2) <= half_width_at_row_bottom
    else:  # cross
        cols = np.zeros(width, dtype=bool)
        cols[round(width / 3) : round(2 * width / 3)] = True
        rows = np.zeros(height, dtype=bool)
        rows[round(height / 3) : round(2 * height / 3)] = True
        mask = cols[None, :] | rows[:, None]
    mask = np.ascontiguousarray(np.broadcast_to(mask, (height, width)), dtype=bool)
    mask.flags.writeable = False  # cached and shared: callers must not modify it
    return mask


def shape_mask(shape: str, side: int) -> np.ndarray:
    """Filled ``shape`` in a ``side`` x ``side`` box (bool, read-only): :func:`shape_template`."""
    return shape_template(shape, side, side)


def render(scene: Scene, image_size: int = BENCHMARK_SIZE) -> Image.Image:
    """Draw ``scene`` as an RGB image on black; lengths scale by ``image_size / 64``."""
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise DalleError(f"image_size must be a positive integer, got {image_size!r}")
    scale = image_size / BENCHMARK_SIZE
    canvas = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.bbox
        if x0 < 0 or y0 < 0 or x1 > BENCHMARK_SIZE or y1 > BENCHMARK_SIZE:
            raise DalleError(f"object outside the {BENCHMARK_SIZE}x{BENCHMARK_SIZE} canvas: {obj}")
        x0, y0 = round(x0 * scale), round(y0 * scale)
        side = max(1, round(obj.side * scale))
        # Rounding at odd scales can push a box one pixel past the edge: clip it.
        h, w = min(side, image_size - y0), min(side, image_size - x0)
        canvas[y0 : y0 + h, x0 : x0 + w][shape_mask(obj.shape, side)[:h, :w]] = PALETTE[obj.color]
    return Image.fromarray(canvas, mode="RGB")


def _describe(obj: ShapeObject) -> str:
    return f"a {obj.size} {obj.color} {obj.shape}"


def caption(scene: Scene) -> str:
    """The docs/shapes.md caption: ``a {size} {color} {shape}[ {relation} a {size} {color} {shape}]``."""
    if len(scene.objects) == 1:
        return _describe(scene.objects[0])
    first, second = scene.objects
    return f"{_describe(first)} {scene.relation} {_describe(second)}"


def relation_between(a: HasCenter, b: HasCenter, margin: float = RELATION_MARGIN) -> str | None:
    """The relation that clearly holds for ``a`` relative to ``b`` by bounding-box centres.

    Left/right needs ``|dx| >= margin`` and ``|dx| > |dy|``; above/below needs ``|dy| >= margin``
    and ``|dy| > |dx|`` (y grows downwards). Otherwise ``None``. With ``margin=0`` this is the
    evaluator's centre rule. At most one relation can hold for an ordered pair.
    """
    (ax, ay), (bx, by) = a.center, b.center
    dx, dy = ax - bx, ay - by
    if abs(dx) >= margin and abs(dx) > abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    if abs(dy) >= margin and abs(dy) > abs(dx):
        return "above" if dy < 0 else "below"
    return None


def _box_gap(a: ShapeObject, b: ShapeObject) -> int:
    """Empty pixels between two boxes along their most separating axis (<= 0: overlap/touch)."""
    return max(
        b.x0 - (a.x0 + a.side),
        a.x0 - (b.x0 + b.side),
        b.y0 - (a.y0 + a.side),
        a.y0 - (b.y0 + b.side),
    )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DalleError(f"unknown split {split!r}; expected one of {list(SPLITS)}")


def _pick(rng: np.random.Generator, items: Sequence[_T]) -> _T:
    return items[int(rng.integers(len(items)))]


def _draw_pairs(rng: np.random.Generator, split: str, n_objects: int) -> list[tuple[str, str]]:
    """Colour-shape pairs for one scene.

    ``train``/``test-seen``: each pair uniform over the 28 seen pairs. ``test-zero-shot``: exactly
    the distribution of uniform pairs (over all 32) conditioned on at least one held-out pair,
    sampled without rejection. One object: uniform over the 4 held-out pairs. Two objects: the
    cases (held-out, seen), (seen, held-out), (held-out, held-out) have 4*28 : 28*4 : 4*4 outcomes,
    so they are drawn with weights 112 : 112 : 16 and then filled uniformly.
    """
    if split != "test-zero-shot":
        return [_pick(rng, _SEEN_PAIRS) for _ in range(n_objects)]
    if n_objects == 1:
        return [_pick(rng, _HELD_PAIRS)]
    n_seen, n_held = len(_SEEN_PAIRS), len(_HELD_PAIRS)
    w_first, w_second = n_held * n_seen, n_seen * n_held
    r = int(rng.integers(w_first + w_second + n_held * n_held))
    first_held = r < w_first or r >= w_first + w_second
    second_held = r >= w_first
    return [
        _pick(rng, _HELD_PAIRS if first_held else _SEEN_PAIRS),
        _pick(rng, _HELD_PAIRS if second_held else _SEEN_PAIRS),
    ]


def _place(rng: np.random.Generator, color: str, shape: str, size: str) -> ShapeObject:
    side = SIZES[size]
    limit = BENCHMARK_SIZE - side + 1  # x0 in [0, 64 - side] keeps the box inside the canvas
    return ShapeObject(color, shape, size, int(rng.integers(limit)), int(rng.integers(limit)), side)


def sample_scene(rng: np.random.Generator, split: str) -> Scene:
    """One random scene of ``split`` (see :func:`_draw_pairs` for the colour-shape distribution).

    The number of objects (1 or 2) and each size are uniform. Positions are uniform over legal
    placements: inside the canvas and, for two objects, boxes at least 2 px apart with a relation
    that clearly holds (8 px margin); this is done by rejection on independent uniform positions,
    which is exactly uniform over the legal pairs (acceptance >= ~25%). The objects are
    exchangeable, so the first-named object is a random one of the two, and the relation is the
    one that holds for it relative to the second.
    """
    _check_split(split)
    n_objects = int(rng.integers(1, 3))
    pairs = _draw_pairs(rng, split, n_objects)
    sizes = [_pick(rng, _SIZE_NAMES) for _ in range(n_objects)]
    if n_objects == 1:
        (color, shape), size = pairs[0], sizes[0]
        return Scene((_place(rng, color, shape, size),), None)
    for _ in range(_MAX_PLACEMENT_TRIES):
        a = _place(rng, *pairs[0], sizes[0])
        b = _place(rng, *pairs[1], sizes[1])
        if _box_gap(a, b) < MIN_GAP:
            continue
        relation = relation_between(a, b)
        if relation is not None:
            return Scene((a, b), relation)
    raise RuntimeError("could not place two objects; cannot happen at 64 px")  # pragma: no cover


def _split_rng(seed: int, split: str) -> np.random.Generator:
    """A stream that depends only on ``(seed, split)`` (crc32 is stable across runs/platforms)."""
    _check_split(split)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DalleError(f"seed must be a non-negative integer, got {seed!r}")
    entropy = [int(seed), zlib.crc32(split.encode("utf-8"))]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def generate_scenes(split: str, n: int, seed: int) -> Iterator[Scene]:
    """The first ``n`` scenes of ``split`` for ``seed`` (the scenes behind :func:`generate`)."""
    if n < 0:
        raise DalleError(f"n must be non-negative, got {n}")
    rng = _split_rng(seed, split)
    for _ in range(n):
        yield sample_scene(rng, split)


def generate(
    split: str, n: int, seed: int, image_size: int = BENCHMARK_SIZE
) -> Iterator[tuple[Image.Image, str]]:
    """``n`` deterministic ``(image, caption)`` pairs of ``split``; same args, same output."""
    for scene in generate_scenes(split, n, seed):
        yield render(scene, image_size), caption(scene)


def write_shapes(
    out_dir: str | os.PathLike[str],
    counts: dict[str, int],
    seed: int = 0,
    image_size: int = BENCHMARK_SIZE,
) -> dict[str, int]:
    """Write ``out_dir/<split>/<index:06d>.png`` plus a same-named ``.txt`` caption per sample.

    Captions are UTF-8 with no trailing newline. Each split uses its own stream, so the files of a
    split do not depend on which other splits are written. Returns the number written per split.
    Raises ``PermissionError`` if ``out_dir`` is not writable and ``NotADirectoryError`` if it is
    a file.
    """
    for split, n in counts.items():
        _check_split(split)
        if n < 0:
            raise DalleError(f"count for split {split!r} must be non-negative, got {n}")
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"shapes output path exists and is not a directory: {root}")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise type(e)(f"cannot create shapes output directory {root}: {e.strerror or e}") from e
    if not os.access(root, os.W_OK | os.X_OK):
        raise PermissionError(f"shapes output directory is not writable: {root}")
    written: dict[str, int] = {}
    for split, n in counts.items():
        split_dir = root / split
        split_dir.mkdir(exist_ok=True)
        done = 0
        for index, (image, text) in enumerate(generate(split, n, seed, image_size)):
            image.save(split_dir / f"{index:06d}.png")
            (split_dir / f"{index:06d}.txt").write_text(text, encoding="utf-8")
            done += 1
        written[split] = done
    return written
