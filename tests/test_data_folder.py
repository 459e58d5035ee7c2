import random

import numpy as np
import pytest
from PIL import Image

from dalle.data.captions import caption_variants, pick_caption
from dalle.data.folder import ImageCaptionFolder, read_captions


def write_pair(root, name, image, caption="a caption"):
    # CMYK images come as JPEG (PNG has no CMYK)
    image.save(root / f"{name}.{'jpg' if image.mode == 'CMYK' else 'png'}")
    (root / f"{name}.txt").write_text(caption)


def test_bad_files_are_skipped_and_counted(tmp_path):
    rgb = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    write_pair(tmp_path, "good", rgb)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "empty.txt").write_text("x")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "corrupt.txt").write_text("x")
    good_bytes = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good_bytes[: len(good_bytes) // 2])
    (tmp_path / "truncated.txt").write_text("x")
    (tmp_path / "orphan.txt").write_text("caption without image")
    rgb.save(tmp_path / "nocaption.png")
    (tmp_path / "latin1.png").write_bytes(good_bytes)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))

    data = ImageCaptionFolder(tmp_path, 8)
    assert len(data) == 1 and data.captions == ["a caption"]
    assert dict(data.report.skipped) == {
        "empty image file": 1, "unreadable image": 2, "caption without image": 1,
        "image without caption": 1, "caption not UTF-8": 1,
    }
    assert "skipped 6" in str(data.report)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "I;16", "LA"])
def test_modes_are_converted(tmp_path, mode):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (10, 14, 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)
    else:
        image = base.convert(mode)
    write_pair(tmp_path, "x", image)
    data = ImageCaptionFolder(tmp_path, 8)
    item = data[0]
    assert item["image"].shape == (3, 8, 8)
    assert 0 <= item["image"].min() and item["image"].max() <= 1


def test_16_bit_scales_to_full_range(tmp_path):
    image = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    write_pair(tmp_path, "x", image)
    assert float(ImageCaptionFolder(tmp_path, 4)[0]["image"].min()) == 1.0


def test_rgba_composited_on_background(tmp_path):
    array = np.zeros((4, 4, 4), np.uint8)
    array[..., 0] = 255  # red, fully transparent
    write_pair(tmp_path, "x", Image.fromarray(array, "RGBA"))
    assert float(ImageCaptionFolder(tmp_path, 4)[0]["image"].max()) == 0.0


def test_center_crop_and_resize(tmp_path):
    array = np.zeros((10, 30, 3), np.uint8)
    array[:, 10:20] = 255  # the central square is white, the sides black
    write_pair(tmp_path, "x", Image.fromarray(array))
    image = ImageCaptionFolder(tmp_path, 5)[0]["image"]
    assert float(image.min()) > 0.95


def test_decompression_bomb_is_skipped(tmp_path, monkeypatch):
    write_pair(tmp_path, "big", Image.new("RGB", (64, 64)))
    write_pair(tmp_path, "small", Image.new("RGB", (4, 4)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = ImageCaptionFolder(tmp_path, 4)
    assert len(data) == 1
    assert data.report.skipped["image over the decompression-bomb limit"] == 1


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageCaptionFolder(tmp_path / "nope", 8)
    with pytest.raises(ValueError, match="no readable"):
        ImageCaptionFolder(tmp_path, 8)


def test_a_caption_file_may_hold_variants_one_per_line(tmp_path):
    write_pair(tmp_path, "a", Image.new("RGB", (8, 8)), "a cat\n\n  a small cat: pet  \n")
    write_pair(tmp_path, "b", Image.new("RGB", (8, 8)), "a dog")
    dataset = ImageCaptionFolder(tmp_path, 8)
    assert dataset.captions == ["a cat", "a dog"]  # what is shown and evaluated: the first line
    assert dataset[0]["variants"] == "a cat\n\n  a small cat: pet" and dataset[1]["variants"] == "a dog"
    assert caption_variants(dataset[0]["variants"]) == ["a cat", "a small cat: pet"]
    assert list(read_captions(tmp_path)) == ["a cat", "a small cat: pet", "a dog"]
    draws = {pick_caption(dataset[0]["variants"], random.Random(seed)) for seed in range(20)}
    assert draws == {"a cat", "a small cat: pet"}
