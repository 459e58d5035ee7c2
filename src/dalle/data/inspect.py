"""`dalle data inspect`: what a dataset holds, what was skipped and why, and how captions run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from dalle.utils import image_grid

HISTOGRAM_WIDTH = 40


def length_histogram(lengths: Sequence[int], bins: int = 8) -> list[str]:
    """Text histogram lines `lo-hi | ##### n` over `bins` equal ranges of the lengths."""
    if not lengths:
        return []
    lo, hi = min(lengths), max(lengths)
    width = max(1, -(-(hi - lo + 1) // bins))
    counts = Counter((n - lo) // width for n in lengths)
    peak = max(counts.values())
    lines = []
    for b in range(max(counts) + 1):
        start, end = lo + b * width, lo + (b + 1) * width - 1
        bar = "#" * max(1 if counts[b] else 0, round(HISTOGRAM_WIDTH * counts[b] / peak))
        label = f"{start}" if width == 1 else f"{start}-{end}"
        lines.append(f"  {label:>9} | {bar} {counts[b]}")
    return lines


def summarize(captions: Sequence[str], skipped: Counter, token_lengths: Sequence[int] | None = None,
              text_length: int | None = None) -> list[str]:
    """Report lines: counts, skip reasons, caption lengths in words (and BPE tokens if given)."""
    words = [len(c.split()) for c in captions]
    lines = [f"pairs kept        {len(captions)}",
             f"pairs skipped     {sum(skipped.values())}"]
    lines += [f"  {n:>6}  {why}" for why, n in sorted(skipped.items())]
    lines.append(f"distinct captions {len(set(captions))}")
    if words:
        lines.append(f"caption words     min {min(words)}, mean {sum(words) / len(words):.1f}, "
                     f"max {max(words)}")
        lines += length_histogram(words)
    if token_lengths:
        lines.append(f"caption tokens    min {min(token_lengths)}, mean "
                     f"{sum(token_lengths) / len(token_lengths):.1f}, max {max(token_lengths)}")
        if text_length is not None:
            over = sum(n > text_length for n in token_lengths)
            lines.append(f"  {over} captions longer than the text length {text_length} "
                         "(they are truncated when encoded)")
        lines += length_histogram(token_lengths)
    return lines


def sample_grid(images: Sequence[torch.Tensor], path: str | Path, columns: int = 8) -> Path:
    """Save the first images as one grid PNG."""
    path = Path(path)
    image_grid(torch.stack(list(images)), columns=min(columns, len(images))).save(path)
    return path
