"""Small shared helpers: atomic file writes, device selection, image grids and captions."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dalle.errors import DalleError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()


def atomic_write(path: str | Path, data: bytes | Callable[[Path], None]) -> None:
    """Write `path` so that a crash at any moment leaves either the old file or the new one.

    `data` is the bytes to write, or a function that writes a given temporary path. The temporary
    file lives in the same directory (rename is atomic only within a filesystem), is fsynced, then
    renamed over `path`, and the directory is fsynced so the rename itself is durable.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        if callable(data):
            os.close(fd)
            fd = -1
            data(tmp)
            fd = os.open(tmp, os.O_RDWR)
        else:
            os.write(fd, data)
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; give the file normal permissions
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp.exists():
            tmp.unlink()


def ensure_writable_dir(directory: str | Path) -> Path:
    """Create `directory` if needed and check that we can write there, with a one-line error."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"cannot create output directory {directory}: {e.strerror}") from None
    if not directory.is_dir():
        raise NotADirectoryError(f"output path {directory} exists and is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"output directory {directory} is not writable")
    return directory


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`"auto"` picks CUDA when available, else CPU; anything else is passed to torch.device.

    A name torch does not know, or a CUDA device this machine lacks, is a one-line ValueError
    here rather than torch's error at the first tensor moved.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DalleError(f"unknown device {str(device)!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count()  # 0 for a CPU build or no visible GPU
        if count == 0:
            raise DalleError(f"device {str(device)!r} needs CUDA, which this torch "
                             f"({torch.__version__}) does not see; use cpu or auto")
        if resolved.index is not None and resolved.index >= count:
            raise DalleError(f"device {str(device)!r} does not exist: this machine has {count} "
                             f"CUDA device{'s' if count > 1 else ''}")
    return resolved


def fast_bf16(device: str | torch.device = "auto") -> bool:
    """Whether bf16 arithmetic is fast on `device`: a CUDA GPU that supports it, or a CPU that
    oneDNN runs bf16 on (AVX-512 or AMX). An AVX2-only CPU emulates it: there a 1024x1024 matmul
    ran at 0.8 GFLOP/s in bf16 against 50-100 in fp32 (docs/benchmarks.md), so the recipes choose
    bf16 only where this is true."""
    device = resolve_device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) floats in [0, 1] -> list of RGB PIL images."""
    array = (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu()
    return [Image.fromarray(a.numpy()) for a in array]


def from_pil(images: list[Image.Image]) -> torch.Tensor:
    """List of RGB PIL images of one size -> (B, 3, H, W) floats in [0, 1]."""
    array = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255


def image_grid(images: torch.Tensor, columns: int, padding: int = 2, scale: int = 1,
               caption: str | None = None) -> Image.Image:
    """Tile (B, 3, H, W) images in [0, 1] into one RGB image with `columns` per row.

    `scale` enlarges each image by nearest neighbour first (a 64-px image is a thumbnail on a
    screen; repeated pixels keep it exactly what the model drew, where smoothing would invent
    detail), and `caption` is written above the grid, wrapped to its width.
    """
    if scale > 1:
        images = images.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    b, _, h, w = images.shape
    rows = -(-b // columns)
    canvas = torch.ones(3, rows * (h + padding) + padding, columns * (w + padding) + padding)
    for i, image in enumerate(images.detach().float().clamp(0, 1).cpu()):
        r, c = divmod(i, columns)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        canvas[:, y : y + h, x : x + w] = image
    grid = to_pil(canvas[None])[0]
    return grid if caption is None else captioned([grid], [caption], font_size=CAPTION_FONT_SIZE)


CAPTION_FONT_SIZE = 20  # px: readable above a grid of 256-px tiles


def captioned(rows: list[Image.Image], captions: list[str], font_size: int | None = None) -> Image.Image:
    """Stack image rows, each under its caption.

    By default a caption is one line of Pillow's small default font on a 14-px band, and a long
    one widens the picture (training grids: short captions, nothing to rewrap). With `font_size`
    the font is that size and each caption wraps at word boundaries to the widest row.
    """
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max(r.width for r in rows)
    font = None
    if font_size is None:
        line, lines = 14, [[c] for c in captions]
    else:
        font = ImageFont.load_default(size=font_size)  # Pillow's own scalable font: nothing to ship
        line = int(font.getbbox("Ag")[3]) + font_size // 3
        lines = [_wrap(c, width - 8, lambda t: probe.textlength(t, font=font)) for c in captions]
    width = max([width, *(int(probe.textlength(t, font=font)) + 8 for group in lines for t in group)])
    canvas = Image.new("RGB", (width, sum(r.height + line * len(g) for r, g in zip(rows, lines))), "white")
    draw, y = ImageDraw.Draw(canvas), 0
    for row, group in zip(rows, lines):
        for text in group:
            draw.text((4, y + 1), text, fill="black", font=font)
            y += line
        canvas.paste(row, (0, y))
        y += row.height
    return canvas


def _wrap(text: str, width: float, measure: Callable[[str], float]) -> list[str]:
    """`text` in lines of whole words no wider than `width` (a longer word keeps its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and measure(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines or [""]


def check_unit_images(images: torch.Tensor) -> None:
    """Raise a one-line ValueError unless `images` is (N, 3 or 1, H, W) floats in [0, 1]."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DalleError(f"images must be (N, 3, H, W) or (N, 1, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise DalleError(f"images must be floats in [0, 1], got {images.dtype}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise DalleError(f"images must be in [0, 1], got values in "
                         f"[{images.min():.3g}, {images.max():.3g}]")
