"""A folder of images with same-named `.txt` captions: `cat.png` + `cat.txt`.

Bad files never stop a run: unreadable, truncated or empty images and captions without an image
are skipped and counted by reason. Images of any mode (grayscale, palette, CMYK, 16-bit, RGBA) are
converted to RGB, then centre-cropped to a square and resized (paper appendix A.2 preprocessing).
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

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


def load_image(path: Path) -> Image.Image:
    """Fully decode an image (so truncated files fail here), with Pillow's bomb check as error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            image.load()
            return image.copy()


class ImageCaptionFolder(Dataset):
    """Image-caption pairs from a folder (searched recursively), decoded once into memory.

    Items are dicts: `image` (3, S, S) float in [0, 1], `caption` str, `index` int. The whole set
    is kept as uint8, which suits the small sets this loader is for; large sets use shards.
    """

    def __init__(self, root: str | Path, image_size: int, background: tuple[int, int, int] = (0, 0, 0)) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data folder {self.root} does not exist")
        self.report = ScanReport()
        images, captions = [], []
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            suffix = path.suffix.lower()
            if suffix == ".txt":
                if not any(path.with_suffix(s).exists() or path.with_suffix(s.upper()).exists()
                           for s in IMAGE_SUFFIXES):
                    self.report.skipped["caption without image"] += 1
                continue
            if suffix not in IMAGE_SUFFIXES:
                continue
            caption_path = path.with_suffix(".txt")
            if not caption_path.exists():
                self.report.skipped["image without caption"] += 1
                continue
            if path.stat().st_size == 0:
                self.report.skipped["empty image file"] += 1
                continue
            try:
                image = center_square(to_rgb(load_image(path), background), image_size)
            except (Image.DecompressionBombWarning, Image.DecompressionBombError):
                self.report.skipped["image over the decompression-bomb limit"] += 1
                continue
            except (OSError, ValueError, SyntaxError):
                self.report.skipped["unreadable image"] += 1
                continue
            try:
                caption = caption_path.read_text(encoding="utf-8").strip()
            except UnicodeDecodeError:
                self.report.skipped["caption not UTF-8"] += 1
                continue
            images.append(np.asarray(image, dtype=np.uint8))
            captions.append(caption)
        self.report.kept = len(images)
        if not images:
            raise ValueError(f"no readable image-caption pairs in {self.root} ({self.report})")
        if self.report.skipped:
            log.warning("%s: %s", self.root, self.report)
        self.images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        self.captions = captions

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index].float() / 255, "caption": self.captions[index],
                "index": index}
