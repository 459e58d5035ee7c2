"""Property tests for the `shapes` benchmark: generator, parser and evaluator (docs/shapes.md)."""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy import ndimage

from dalle.data import shapes as gen
from dalle.data.shapes import (
    HELD_OUT_PAIRS,
    PALETTE,
    RELATIONS,
    SHAPES,
    SIZES,
    SPLITS,
    Scene,
    ShapeObject,
    caption,
    generate,
    generate_scenes,
    relation_between,
    render,
    sample_scene,
    shape_mask,
    write_shapes,
)
from dalle.evaluate.shapes import (
    CaptionSpec,
    ObjectSpec,
    ParsedObject,
    evaluate,
    match,
    parse_caption,
    parse_image,
    score_image,
)

_OBJ = rf"a ({'|'.join(SIZES)}) ({'|'.join(PALETTE)}) ({'|'.join(SHAPES)})"
CAPTION_RE = re.compile(rf"{_OBJ}(?: ({'|'.join(RELATIONS)}) {_OBJ})?")
EIGHT = np.ones((3, 3), dtype=bool)
N_PARSE = 300  # scenes per split for the parser-accuracy tests


@pytest.fixture(scope="module")
def scenes() -> dict[str, list[Scene]]:
    return {split: list(generate_scenes(split, 2000, seed=7)) for split in SPLITS}


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _noisy(image: Image.Image, rng: np.random.Generator, sigma: float = 8.0) -> np.ndarray:
    noise = rng.normal(0.0, sigma, size=(image.height, image.width, 3))
    return np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_same_bytes_and_splits_differ() -> None:
    first = [(_png(im), text) for im, text in generate("train", 20, seed=3)]
    again = [(_png(im), text) for im, text in generate("train", 20, seed=3)]
    assert first == again
    other_split = [(_png(im), text) for im, text in generate("test-seen", 20, seed=3)]
    other_seed = [(_png(im), text) for im, text in generate("train", 20, seed=4)]
    assert first != other_split
    assert first != other_seed


def test_golden_stream_is_stable() -> None:
    # Pins the benchmark: a change here silently changes every published number.
    digest = hashlib.sha256()
    for image, text in generate("test-zero-shot", 10, seed=0):
        digest.update(np.asarray(image).tobytes())
        digest.update(text.encode())
    assert digest.hexdigest() == "40d20adfdf15a498f978a14c41241edcf45d197b64f17a529cdaaeaa2bb036cb"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="split"):
        sample_scene(np.random.default_rng(0), "validation")
    with pytest.raises(ValueError, match="seed"):
        next(generate("train", 1, seed=-1))


# --- splits -----------------------------------------------------------------------------------


def test_held_out_pairs_only_in_zero_shot(scenes: dict[str, list[Scene]]) -> None:
    for split in ("train", "test-seen"):
        pairs = {(o.color, o.shape) for s in scenes[split] for o in s.objects}
        assert not pairs & HELD_OUT_PAIRS
        # every colour and every shape is still seen
        assert {c for c, _ in pairs} == set(PALETTE)
        assert {s for _, s in pairs} == set(SHAPES)
    zero_shot = scenes["test-zero-shot"]
    assert all(any((o.color, o.shape) in HELD_OUT_PAIRS for o in s.objects) for s in zero_shot)
    assert {(o.color, o.shape) for s in zero_shot for o in s.objects} >= HELD_OUT_PAIRS
    counts = {k: sum(len(s.objects) == k for s in zero_shot) for k in (1, 2)}
    assert min(counts.values()) > 800  # 1 and 2 objects are equally likely
    both = sum(
        all((o.color, o.shape) in HELD_OUT_PAIRS for o in s.objects)
        for s in zero_shot
        if len(s.objects) == 2
    )
    assert 0.02 < both / counts[2] < 0.14  # expected 16/240 under the documented distribution


# --- captions ---------------------------------------------------------------------------------


def test_captions_follow_grammar_and_round_trip(scenes: dict[str, list[Scene]]) -> None:
    for split in SPLITS:
        for scene in scenes[split][:500]:
            text = caption(scene)
            assert CAPTION_RE.fullmatch(text), text
            spec = parse_caption(text)
            assert spec.relation == scene.relation
            named = tuple(ObjectSpec(o.color, o.shape, o.size) for o in scene.objects)
            assert spec.objects == named


def test_parse_caption_optional_size_and_relations() -> None:
    assert parse_caption("a red circle") == CaptionSpec((ObjectSpec("red", "circle", None),), None)
    for relation in RELATIONS:
        spec = parse_caption(f"a small cyan cross {relation} a white square")
        assert spec.relation == relation
        assert spec.objects == (
            ObjectSpec("cyan", "cross", "small"),
            ObjectSpec("white", "square", None),
        )


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a red circle.",
        "A red circle",
        "a pink circle",
        "a red hexagon",
        "a huge red circle",
        "a red circle near a blue square",
        "a red circle to the left of",
        "red circle",
        "a red circle above a blue square above a green cross",
    ],
)
def test_bad_caption_raises(bad: str) -> None:
    with pytest.raises(ValueError, match="outside the shapes grammar"):
        parse_caption(bad)


# --- geometry ---------------------------------------------------------------------------------


def _components(image: Image.Image) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (x0, y0, x1, y1) of 8-connected non-black parts of a clean render."""
    labels, _ = ndimage.label(np.asarray(image).max(axis=2) > 0, structure=EIGHT)
    return [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels)]


def test_rendered_geometry(scenes: dict[str, list[Scene]]) -> None:
    for split in SPLITS:
        for scene in scenes[split][:400]:
            image = render(scene)
            pixels = np.asarray(image)
            lit = pixels.max(axis=2) > 0
            # inside the canvas and no overlap: every drawn pixel is accounted for exactly once
            assert lit.sum() == sum(shape_mask(o.shape, o.side).sum() for o in scene.objects)
            boxes = _components(image)
            # >= 2 px apart: objects stay separate components, each filling its own box exactly
            assert sorted(boxes) == sorted(o.bbox for o in scene.objects)
            for obj in scene.objects:
                x0, y0, x1, y1 = obj.bbox
                assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
                drawn = pixels[y0:y1, x0:x1][shape_mask(obj.shape, obj.side)]
                assert (drawn == PALETTE[obj.color]).all()
            if len(scene.objects) == 2:
                a, b = scene.objects
                gap = max(b.x0 - a.bbox[2], a.x0 - b.bbox[2], b.y0 - a.bbox[3], a.y0 - b.bbox[3])
                assert gap >= 2
                (ax, ay), (bx, by) = a.center, b.center
                dx, dy = ax - bx, ay - by
                expected = {
                    "to the left of": dx <= -8 and abs(dx) > abs(dy),
                    "to the right of": dx >= 8 and abs(dx) > abs(dy),
                    "above": dy <= -8 and abs(dy) > abs(dx),
                    "below": dy >= 8 and abs(dy) > abs(dx),
                }
                assert expected[scene.relation], (scene, dx, dy)
                assert relation_between(a, b) == scene.relation


def test_relation_between_rule() -> None:
    def at(x: int, y: int) -> ShapeObject:
        return ShapeObject("red", "square", "small", x, y, 12)

    assert relation_between(at(0, 0), at(8, 0)) == "to the left of"
    assert relation_between(at(8, 0), at(0, 0)) == "to the right of"
    assert relation_between(at(0, 0), at(0, 9)) == "above"
    assert relation_between(at(0, 9), at(0, 0)) == "below"
    assert relation_between(at(0, 0), at(7, 0)) is None  # under the margin
    assert relation_between(at(0, 0), at(10, 10)) is None  # diagonal: |dx| == |dy|
    assert relation_between(at(0, 0), at(7, 0), margin=0) == "to the left of"


# --- templates --------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [12, 24, 9, 16])
def test_templates(side: int) -> None:
    for shape in SHAPES:
        mask = shape_mask(shape, side)
        assert mask.shape == (side, side) and mask.dtype == bool
        # fills its bounding box: a clean render's bbox is the generator's bbox
        assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
        assert (mask == mask[:, ::-1]).all()  # left-right symmetric
    assert shape_mask("square", side).all()
    third = round(side / 3)
    bar = side - 2 * third
    cross = shape_mask("cross", side)
    assert cross.sum() == 2 * bar * side - bar * bar
    assert not cross[0, 0] and cross[side // 2].all() and cross[:, side // 2].all()
    tri = shape_mask("triangle", side)
    widths = tri.sum(axis=1)
    assert widths[0] == (2 if side % 2 == 0 else 1)  # apex: one or two centre pixels on top
    assert tri[0, (side - 1) // 2] and tri[0, side // 2]
    assert widths[-1] == side and (np.diff(widths) >= 0).all()
    circle = shape_mask("circle", side)
    assert not circle[0, 0] and not circle[-1, -1] and (circle == circle.T).all()
    assert abs(circle.sum() - np.pi * side**2 / 4) < 0.1 * side**2


def test_template_square_and_cross_areas_at_benchmark_sizes() -> None:
    assert shape_mask("cross", 12).sum() == 144 - 4 * 16
    assert shape_mask("cross", 24).sum() == 576 - 4 * 64
    assert shape_mask("square", 24).sum() == 576


# --- parser -----------------------------------------------------------------------------------


def _accuracy(images: list, captions: list[str]) -> float:
    return evaluate(images, captions)["full"]


@pytest.mark.parametrize("split", SPLITS)
def test_parser_clean_blurred_noisy(split: str, scenes: dict[str, list[Scene]]) -> None:
    chosen = scenes[split][:N_PARSE]
    clean = [render(s) for s in chosen]
    captions = [caption(s) for s in chosen]
    assert _accuracy(clean, captions) >= 0.99
    blurred = [im.filter(ImageFilter.GaussianBlur(1)) for im in clean]
    assert _accuracy(blurred, captions) >= 0.95
    rng = np.random.default_rng(0)
    assert _accuracy([_noisy(im, rng) for im in clean], captions) >= 0.95


def test_parser_recovers_exact_boxes_on_clean_renders(scenes: dict[str, list[Scene]]) -> None:
    for scene in scenes["test-zero-shot"][:200]:
        parsed = parse_image(render(scene))
        got = sorted((p.bbox, p.color, p.shape, p.size) for p in parsed)
        want = sorted((o.bbox, o.color, o.shape, o.size) for o in scene.objects)
        assert got == want
        for p in parsed:
            assert p.center == ((p.bbox[0] + p.bbox[2]) / 2, (p.bbox[1] + p.bbox[3]) / 2)


def test_touching_objects_of_different_colours_are_two() -> None:
    red = ShapeObject("red", "square", "large", 8, 20, 24)
    blue = ShapeObject("blue", "circle", "large", 32, 20, 24)  # shares an edge with the square
    scene = Scene((red, blue), "to the left of")
    for image in (render(scene), render(scene).filter(ImageFilter.GaussianBlur(1))):
        parsed = parse_image(image)
        assert [(p.color, p.shape, p.size) for p in parsed] == [
            ("red", "square", "large"),
            ("blue", "circle", "large"),
        ]
        assert score_image(image, caption(scene)).full


def test_empty_and_tiny_images() -> None:
    assert parse_image(np.zeros((64, 64, 3), dtype=np.uint8)) == []
    speck = np.zeros((64, 64, 3), dtype=np.uint8)
    speck[10:13, 10:14] = PALETTE["white"]  # 12 px: under the 15 px minimum
    assert parse_image(speck) == []
    result = score_image(Image.new("RGB", (64, 64)), "a red circle")
    assert not any(vars(result).values())


def test_other_image_sizes_are_resized(scenes: dict[str, list[Scene]]) -> None:
    chosen = scenes["test-seen"][:60]
    captions = [caption(s) for s in chosen]
    for size in (128, 256):
        images = [render(s, image_size=size) for s in chosen]
        assert images[0].size == (size, size)
        assert _accuracy(images, captions) >= 0.99
    as_arrays = [np.asarray(render(s)) for s in chosen]
    assert _accuracy(as_arrays, captions) == 1.0


# --- matching ---------------------------------------------------------------------------------


def _obj(color: str, shape: str, size: str, x0: int, y0: int) -> ParsedObject:
    side = SIZES[size]
    bbox = (x0, y0, x0 + side, y0 + side)
    return ParsedObject(color, shape, size, bbox, (x0 + side / 2, y0 + side / 2), side * side)


def test_match_semantics() -> None:
    left, right = _obj("red", "circle", "small", 0, 0), _obj("blue", "square", "large", 30, 0)
    good = parse_caption("a small red circle to the left of a large blue square")
    assert match([right, left], good).full  # order of the parsed list does not matter
    swapped = match(
        [left, right], parse_caption("a small red circle to the right of a large blue square")
    )
    assert swapped.count and swapped.color and swapped.shape and swapped.size
    assert not swapped.relation
    assert not swapped.full
    wrong_shape = match([left, right], parse_caption("a red cross to the left of a blue square"))
    assert wrong_shape.color and wrong_shape.size and wrong_shape.relation and not wrong_shape.shape
    extra = match([left, right], parse_caption("a small red circle"))
    assert not extra.count and extra.color and extra.shape and not extra.relation and not extra.full
    missing = match([left], good)
    assert not missing.count and not missing.color and not missing.relation
    either_size = parse_caption("a red circle")
    assert match([left], either_size).full
    assert match([_obj("red", "circle", "large", 0, 0)], either_size).full


def test_evaluate_keys_and_lengths() -> None:
    pairs = list(generate("test-seen", 5, seed=1))
    result = evaluate([im for im, _ in pairs], [t for _, t in pairs])
    assert set(result) == {"full", "count", "color", "shape", "size", "relation", "n"}
    assert result["n"] == 5 and result["full"] == 1.0
    with pytest.raises(ValueError, match="same length"):
        evaluate([im for im, _ in pairs], [t for _, t in pairs][:4])


# --- writing ----------------------------------------------------------------------------------


def test_write_shapes(tmp_path: Path) -> None:
    counts = {"train": 3, "test-zero-shot": 2}
    out = tmp_path / "new" / "shapes"
    assert write_shapes(out, counts, seed=5) == counts
    for split, n in counts.items():
        expected = list(generate(split, n, seed=5))
        files = sorted(p.name for p in (out / split).iterdir())
        stems = [f"{i:06d}" for i in range(n)]
        assert files == sorted([f"{s}.png" for s in stems] + [f"{s}.txt" for s in stems])
        for i, (image, text) in enumerate(expected):
            assert (out / split / f"{i:06d}.txt").read_bytes() == text.encode("utf-8")
            with Image.open(out / split / f"{i:06d}.png") as written:
                assert written.mode == "RGB"
                assert (np.asarray(written) == np.asarray(image)).all()


def test_write_shapes_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OSError, match="not a directory"):
        write_shapes(a_file, {"train": 1})
    with pytest.raises(ValueError, match="split"):
        write_shapes(tmp_path / "x", {"valid": 1})
    # Tests may run as root, for whom a read-only directory is still writable: fake the check.
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(gen.os, "access", lambda *args, **kwargs: False)
    with pytest.raises(PermissionError, match=re.escape(str(locked))):
        write_shapes(locked, {"train": 1})
    assert os.listdir(locked) == []
