"""Open any image-caption source by its path: an image folder or WebDataset shards."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from dalle.data.folder import ImageCaptionFolder
from dalle.data.shards import ShardDataset


def is_shards(path: str | Path) -> bool:
    """A `.tar` file, a brace pattern of them, or a folder holding `*.tar` files."""
    path = Path(path)
    if "{" in path.name or path.suffix == ".tar":
        return True
    return path.is_dir() and any(path.glob("*.tar"))


def open_images(path: str | Path, image_size: int, *,
                training: bool = False) -> ImageCaptionFolder | ShardDataset:
    """The dataset at `path`; every source reports what it skipped in `.report`.

    Shards stream: forever and shuffled when `training`, else one pass in a fixed order.
    """
    if is_shards(path):
        if training:
            return ShardDataset(path, image_size)
        return ShardDataset(path, image_size, epochs=1, shuffle_buffer=1)
    return ImageCaptionFolder(path, image_size)


def first_images(dataset: ImageCaptionFolder | ShardDataset, n: int) -> torch.Tensor:
    """Up to n images from the start of a dataset, stacked (for preview grids)."""
    if isinstance(dataset, ShardDataset):
        dataset = ShardDataset(dataset.paths, dataset.image_size, epochs=1, shuffle_buffer=1)
        items = list(itertools.islice(dataset, n))
    else:
        items = [dataset[i] for i in range(min(n, len(dataset)))]
    return torch.stack([item["image"] for item in items])
