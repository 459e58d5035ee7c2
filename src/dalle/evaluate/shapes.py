"""Parser and evaluator for the `shapes` benchmark (``docs/shapes.md``, "Parsing an image").

:func:`parse_image` turns an image into objects (colour, shape, size, bounding box) following the
contract step by step; :func:`parse_caption` reads a caption of the docs/shapes.md grammar;
:func:`score_image` and :func:`evaluate` judge images against captions.

Images that are not 64x64 are resized to 64x64 with bilinear filtering before parsing, because
every threshold of the contract (15 px objects, 12 votes, 18 px size split) is stated at 64 px.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

from dalle.data.shapes import (
    BENCHMARK_SIZE,
    PALETTE,
    RELATIONS,
    SHAPES,
    SIZES,
    relation_between,
    shape_template,
)
from dalle.errors import DalleError

__all__ = [
    "ParsedObject",
    "ObjectSpec",
    "CaptionSpec",
    "MatchResult",
    "parse_image",
    "parse_caption",
    "match",
    "score_image",
    "evaluate",
    "METRICS",
]

BRIGHTNESS_THRESHOLD = 60
MIN_OBJECT_PIXELS = 15
MIN_COLOR_VOTES = 12
EDGE_CUT = 0.5  # kept pixels: brightness >= EDGE_CUT * peak
CORE_CUT = 0.8  # voting pixels: brightness >= CORE_CUT * peak
PEAK_PERCENTILE = 90
LARGE_MIN_SIDE = 18
METRICS: tuple[str, ...] = ("full", "count", "color", "shape", "size", "relation")

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_COLOR_NAMES: tuple[str, ...] = tuple(PALETTE)
_PALETTE_RGB = np.array([PALETTE[c] for c in _COLOR_NAMES], dtype=np.float32)


@dataclass(frozen=True)
class ParsedObject:
    """An object found in an image; ``bbox = (x0, y0, x1, y1)`` with exclusive ``x1, y1``."""

    color: str
    shape: str
    size: str
    bbox: tuple[int, int, int, int]
    center: tuple[float, float]
    n_pixels: int


@lru_cache(maxsize=4096)
def _templates(width: int, height: int) -> np.ndarray:
    """All shape templates for one box, stacked as (len(SHAPES), h, w) bool."""
    stack = np.stack([shape_template(s, width, height) for s in SHAPES])
    stack.flags.writeable = False
    return stack


def _as_rgb64(image: Image.Image | np.ndarray) -> np.ndarray:
    """The image as a 64x64x3 uint8 array (other sizes are resized bilinearly)."""
    if isinstance(image, Image.Image):
        pil = image if image.mode == "RGB" else image.convert("RGB")
        if pil.size != (BENCHMARK_SIZE, BENCHMARK_SIZE):
            pil = pil.resize((BENCHMARK_SIZE, BENCHMARK_SIZE), Image.Resampling.BILINEAR)
        return np.asarray(pil, dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise DalleError(f"expected an HxWx3 uint8 array, got shape {arr.shape} dtype {arr.dtype}")
    if arr.shape[:2] != (BENCHMARK_SIZE, BENCHMARK_SIZE):
        return _as_rgb64(Image.fromarray(arr, mode="RGB"))
    return arr


def _make_object(part: np.ndarray, color: str, offset: tuple[int, int]) -> ParsedObject:
    """Step 4 of the contract for one object mask (a crop; ``offset`` = its (x, y) in the image)."""
    rows = np.flatnonzero(part.any(axis=1))
    cols = np.flatnonzero(part.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    pixels = part[r0:r1, c0:c1]
    height, width = r1 - r0, c1 - c0
    templates = _templates(width, height)
    inter = np.count_nonzero(templates & pixels, axis=(1, 2))
    union = np.count_nonzero(templates | pixels, axis=(1, 2))
    shape = SHAPES[int(np.argmax(inter / union))]  # ties go to the first shape in SHAPES order
    x0, y0 = offset[0] + c0, offset[1] + r0
    x1, y1 = x0 + width, y0 + height
    return ParsedObject(
        color=color,
        shape=shape,
        size="small" if max(width, height) < LARGE_MIN_SIDE else "large",
        bbox=(x0, y0, x1, y1),
        center=((x0 + x1) / 2, (y0 + y1) / 2),
        n_pixels=int(np.count_nonzero(pixels)),
    )


def parse_image(image: Image.Image | np.ndarray) -> list[ParsedObject]:
    """All objects in ``image`` per docs/shapes.md, sorted by bounding box (top, then left).

    Accepts a PIL image (converted to RGB) or an HxWx3 uint8 array; sizes other than 64x64 are
    resized to 64x64 (bilinear) first.
    """
    rgb = _as_rgb64(image)
    bright = rgb.max(axis=2)
    labels, _ = ndimage.label(bright >= BRIGHTNESS_THRESHOLD, structure=_EIGHT_CONNECTED)
    found: list[ParsedObject] = []
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        blob = labels[window] == index
        b = bright[window]
        peak = float(np.percentile(b[blob], PEAK_PERCENTILE))
        kept = blob & (b >= EDGE_CUT * peak)
        if np.count_nonzero(kept) < MIN_OBJECT_PIXELS:
            continue
        core = kept & (b >= CORE_CUT * peak)
        core_rgb = rgb[window][core].astype(np.float32)
        dist2 = ((core_rgb[:, None, :] - _PALETTE_RGB[None, :, :]) ** 2).sum(axis=2)
        votes = dist2.argmin(axis=1)
        tally = np.bincount(votes, minlength=len(_COLOR_NAMES))
        colors = np.flatnonzero(tally >= MIN_COLOR_VOTES)
        if colors.size == 0:
            colors = np.array([int(tally.argmax())])
        if colors.size == 1:
            assigned = np.where(kept, colors[0], -1)
        else:
            # Each kept pixel takes the colour of its nearest core pixel that votes for an object
            # colour, so a soft edge or a touching neighbour is split along the colour boundary.
            vote_map = np.full(b.shape, -1, dtype=np.int64)
            vote_map[core] = votes
            voting = np.isin(vote_map, colors)
            nearest = ndimage.distance_transform_edt(
                ~voting, return_distances=False, return_indices=True
            )
            assigned = np.where(kept, vote_map[nearest[0], nearest[1]], -1)
        offset = (window[1].start, window[0].start)
        for color_index in colors:
            parts, n_parts = ndimage.label(assigned == color_index, structure=_EIGHT_CONNECTED)
            if n_parts == 0:
                continue
            sizes = np.bincount(parts.ravel())
            for part_index in np.flatnonzero(sizes[1:] >= MIN_OBJECT_PIXELS) + 1:
                found.append(_make_object(parts == part_index, _COLOR_NAMES[color_index], offset))
    found.sort(key=lambda o: (o.bbox[1], o.bbox[0]))
    return found


@dataclass(frozen=True)
class ObjectSpec:
    """One object named by a caption; ``size`` is ``None`` when the caption omits it."""

    color: str
    shape: str
    size: str | None


@dataclass(frozen=True)
class CaptionSpec:
    """A parsed caption; ``relation`` is that of ``objects[0]`` relative to ``objects[1]``."""

    objects: tuple[ObjectSpec, ...]
    relation: str | None


def _alternatives(words: Iterable[str]) -> str:
    return "|".join(re.escape(w) for w in words)


# "an" is accepted as well as the contract's "a" so that a hand-written "an orange circle" parses.
_OBJECT = rf"an? (?:({_alternatives(SIZES)}) )?({_alternatives(PALETTE)}) ({_alternatives(SHAPES)})"
_CAPTION_RE = re.compile(rf"{_OBJECT}(?: ({_alternatives(RELATIONS)}) {_OBJECT})?")
_GRAMMAR = (
    "'a [small|large] <colour> <shape>', optionally followed by "
    "'<relation> a [small|large] <colour> <shape>'"
)
_VOCABULARY = {"a", "an", *SIZES, *PALETTE, *SHAPES, *" ".join(RELATIONS).split()}


def parse_caption(text: str) -> CaptionSpec:
    """Parse a docs/shapes.md caption (surrounding whitespace ignored; otherwise exact, lower case).

    Raises ``ValueError`` naming the caption (and the first unknown word, if any) when it is
    outside the grammar.
    """
    if not isinstance(text, str):
        raise DalleError(f"caption must be a string, got {type(text).__name__}")
    found = _CAPTION_RE.fullmatch(text.strip())
    if found is None:
        unknown = [w for w in text.split() if w not in _VOCABULARY]
        hint = f" (unknown word {unknown[0]!r})" if unknown else ""
        raise DalleError(
            f"caption {text!r} is outside the shapes grammar{hint}: expected {_GRAMMAR}"
        )
    size1, color1, shape1, relation, size2, color2, shape2 = found.groups()
    objects = [ObjectSpec(color1, shape1, size1)]
    if relation is not None:
        objects.append(ObjectSpec(color2, shape2, size2))
    return CaptionSpec(tuple(objects), relation)


@dataclass(frozen=True)
class MatchResult:
    """Per-attribute verdicts for one image against one caption (see :func:`match`)."""

    count: bool
    color: bool
    shape: bool
    size: bool
    relation: bool
    full: bool


def _assignments(n_named: int, n_found: int) -> Iterable[tuple[tuple[int, int], ...]]:
    """Injective pairings (named index, found index) matching as many named objects as possible."""
    k = min(n_named, n_found)
    for named in itertools.combinations(range(n_named), k):
        for chosen in itertools.permutations(range(n_found), k):
            yield tuple(zip(named, chosen))


def match(parsed: Sequence[ParsedObject], spec: CaptionSpec) -> MatchResult:
    """Judge parsed objects against a caption.

    * ``count``: exactly as many objects as the caption names.
    * An assignment pairs named objects with distinct parsed objects (as many as possible). Its
      agreement is the number of (named object, attribute) pairs that agree, attributes being
      colour, shape and size (an omitted size always agrees), plus one if the relation holds by
      the centre rule (no margin) for a two-object caption. The assignment with the highest
      agreement is used (ties: the caption's order first); with two objects both orders are tried.
    * ``color``/``shape``/``size``: every named object is assigned and agrees on that attribute.
    * ``relation``: two objects: the relation holds for the assigned pair; one object: ``count``.
    * ``full`` (docs/shapes.md rule 5): all of the above. Since a fully correct assignment would have
      the highest possible agreement, this is true exactly when some assignment satisfies rule 5.
    """
    named = spec.objects
    best: tuple[int, list[bool], list[bool], list[bool], bool] | None = None
    for pairing in _assignments(len(named), len(parsed)):
        colors = [False] * len(named)
        shapes = [False] * len(named)
        sizes = [False] * len(named)
        for i, j in pairing:
            colors[i] = parsed[j].color == named[i].color
            shapes[i] = parsed[j].shape == named[i].shape
            sizes[i] = named[i].size is None or parsed[j].size == named[i].size
        relation = False
        if spec.relation is not None and len(pairing) == 2:
            by_name = dict(pairing)
            first, second = parsed[by_name[0]], parsed[by_name[1]]
            relation = relation_between(first, second, margin=0.0) == spec.relation
        agreement = sum(colors) + sum(shapes) + sum(sizes) + int(relation)
        if best is None or agreement > best[0]:
            best = (agreement, colors, shapes, sizes, relation)
    count = len(parsed) == len(named)
    assert best is not None  # there is always at least the empty assignment
    _, colors, shapes, sizes, relation = best
    color_ok, shape_ok, size_ok = all(colors), all(shapes), all(sizes)
    relation_ok = relation if spec.relation is not None else count
    full = count and color_ok and shape_ok and size_ok and relation_ok
    return MatchResult(count, color_ok, shape_ok, size_ok, relation_ok, full)


def score_image(image: Image.Image | np.ndarray, caption: str | CaptionSpec) -> MatchResult:
    """Parse ``image`` and judge it against ``caption`` (see :func:`match` for the verdicts)."""
    spec = caption if isinstance(caption, CaptionSpec) else parse_caption(caption)
    return match(parse_image(image), spec)


def evaluate(
    images: Iterable[Image.Image | np.ndarray], captions: Iterable[str | CaptionSpec]
) -> dict[str, float]:
    """Mean accuracies ``full, count, color, shape, size, relation`` over pairs, plus ``n``.

    Raises ``ValueError`` if the two iterables differ in length. With no pairs, every accuracy
    is NaN and ``n`` is 0.
    """
    totals = dict.fromkeys(METRICS, 0)
    n = 0
    missing = object()
    for image, text in itertools.zip_longest(images, captions, fillvalue=missing):
        if image is missing or text is missing:
            raise DalleError("images and captions must have the same length")
        result = score_image(image, text)  # type: ignore[arg-type]
        for key in METRICS:
            totals[key] += bool(getattr(result, key))
        n += 1
    out: dict[str, float] = {key: (totals[key] / n if n else math.nan) for key in METRICS}
    out["n"] = n
    return out
