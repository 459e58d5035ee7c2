"""A folder of images with same-named `.txt` captions: `cat.png` + `cat.txt`.

Bad files never stop a run: unreadable, truncated or empty images and captions without an image
are skipped and counted by reason. Images of any mode (grayscale, palette, CMYK, 16-bit, RGBA) are
converted to RGB, then centre-cropped to a square and resized (paper appendix A.2 preprocessing).
"""

from __future__ import annotations

import io
import logging
import tarfile
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dalle.data.captions import caption_variants, first_caption
from dalle.errors import DalleError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited onto `background`."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255, 0, 255).round().astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def center_square(image: Image.Image, size: int) -> Image.Image:
    """Crop the central square and resize it to size x size (bicubic)."""
    w, h = image.size
    side = min(w, h)
    if (w, h) != (side, side):
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image


@dataclass
class ScanReport:
    """What a folder scan found: how many pairs were kept and why others were skipped."""

    kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    def __str__(self) -> str:
        if not self.skipped:
            return f"{self.kept} image-caption pairs"
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        return f"{self.kept} image-caption pairs; skipped {sum(self.skipped.values())} ({reasons})"


# What `load_image` raises for an image over Pillow's decompression-bomb limit (it makes the warning
# an error) and for a file Pillow cannot decode.
IMAGE_TOO_LARGE = (Image.DecompressionBombWarning, Image.DecompressionBombError)
IMAGE_UNREADABLE = (OSError, ValueError, SyntaxError)


def load_image(source: Path | IO[bytes]) -> Image.Image:
    """Fully decode an image (so truncated files fail here), with Pillow's bomb check as error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as image:
            image.load()
            return image.copy()


def load_image_file(path: Path, name: str) -> Image.Image:
    """One image file the user gave as `name` (a flag), with every failure a message naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{name} {path} is not a file")
    try:
        return load_image(path)
    except IMAGE_TOO_LARGE:
        raise DalleError(f"{name} {path} is over Pillow's decompression-bomb limit") from None
    except IMAGE_UNREADABLE as e:
        raise DalleError(f"{name} {path} is not an image Pillow can read ({e})") from None


class SkippedPair(Exception):
    """An image-caption pair that cannot be used; its message is the reason counted in a report."""


def decode_pair(image: bytes, caption: bytes,
                background: tuple[int, int, int] = (0, 0, 0)) -> tuple[Image.Image, str]:
    """The RGB image and stripped caption from a pair's file contents; SkippedPair if unusable."""
    if not image:
        raise SkippedPair("empty image file")
    try:
        rgb = to_rgb(load_image(io.BytesIO(image)), background)
    except IMAGE_TOO_LARGE:
        raise SkippedPair("image over the decompression-bomb limit") from None
    except IMAGE_UNREADABLE:
        raise SkippedPair("unreadable image") from None
    try:
        return rgb, caption.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SkippedPair("caption not UTF-8") from None


def find_pairs(root: Path, report: ScanReport) -> Iterator[tuple[Path, Path]]:
    """(image, caption) paths under `root` in sorted order; orphans are counted in `report`."""
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        suffix = path.suffix.lower()
        if suffix == ".txt":
            if not any(path.with_suffix(s).exists() or path.with_suffix(s.upper()).exists()
                       for s in IMAGE_SUFFIXES):
                report.skipped["caption without image"] += 1
            continue
        if suffix not in IMAGE_SUFFIXES:
            continue
        caption_path = path.with_suffix(".txt")
        if not caption_path.exists():
            report.skipped["image without caption"] += 1
            continue
        yield path, caption_path


class ImageCaptionFolder(Dataset):
    """Image-caption pairs from a folder (searched recursively), decoded once into memory.

    Items are dicts: `image` (3, S, S) float in [0, 1], `caption` and `variants` str
    (`dalle.data.captions`), `index` int. The whole set is kept as uint8, which suits the small
    sets this loader is for; large sets use shards.
    """

    def __init__(self, root: str | Path, image_size: int, background: tuple[int, int, int] = (0, 0, 0)) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data folder {self.root} does not exist")
        self.report = ScanReport()
        images, captions = [], []
        for image_path, caption_path in find_pairs(self.root, self.report):
            try:
                image, caption = decode_pair(image_path.read_bytes(), caption_path.read_bytes(),
                                             background)
            except SkippedPair as e:
                self.report.skipped[str(e)] += 1
                continue
            images.append(np.asarray(center_square(image, image_size), dtype=np.uint8))
            captions.append(caption)
        self.report.kept = len(images)
        if not images:
            raise DalleError(f"no readable image-caption pairs in {self.root} ({self.report})")
        if self.report.skipped:
            log.warning("%s: %s", self.root, self.report)
        self.images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        self.variants = captions
        self.captions = [first_caption(text) for text in captions]

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index].float() / 255, "caption": self.captions[index],
                "variants": self.variants[index], "index": index}


def _shard_captions(folder: Path) -> Iterator[bytes]:
    """The bytes of every `.txt` member of the `*.tar` shards in `folder`, in order."""
    for shard in sorted(folder.glob("*.tar")):
        try:
            with tarfile.open(shard) as archive:
                for member in archive:
                    if member.isfile() and member.name.endswith(".txt"):
                        handle = archive.extractfile(member)
                        if handle is not None:
                            yield handle.read()
        except tarfile.TarError as e:
            raise DalleError(f"{shard} is not a readable tar shard ({e})") from None


def read_captions(path: str | Path) -> Iterator[str]:
    """Captions for tokenizer training: each `.txt` file under a folder, each `.txt` member of a
    folder of WebDataset shards (`*.tar`; the images are not read), or each line of one file;
    every variant of a caption file with several (`dalle.data.captions`).

    Captions that are not UTF-8 or are empty are skipped and counted in a warning at the end.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no caption source at {path}")
    skipped: Counter[str] = Counter()
    if path.is_file():
        with path.open("rb") as f:
            for line in f:
                try:
                    caption = line.decode("utf-8").strip()
                except UnicodeDecodeError:
                    skipped["line not UTF-8"] += 1
                    continue
                if caption:
                    yield caption
    else:
        files = sorted(path.rglob("*.txt"))
        raw = (file.read_bytes() for file in files) if files else _shard_captions(path)
        for data in raw:
            try:
                caption = data.decode("utf-8").strip()
            except UnicodeDecodeError:
                skipped["caption not UTF-8"] += 1
                continue
            if caption:
                yield from caption_variants(caption)
            else:
                skipped["empty caption"] += 1
    if skipped:
        log.warning("%s: skipped %s", path, ", ".join(f"{n} {why}" for why, n in skipped.items()))
