"""Fashion-MNIST (Xiao et al. 2017) as image-caption pairs, from the Debian package
`dataset-fashion-mnist` (docs/design.md, "Data").

70,000 grayscale 28x28 images of 10 clothing classes in IDX files (`train-*` 60,000, `t10k-*`
10,000) under /usr/share/datasets/fashion-mnist. Each image becomes an RGB png named by its
position in its file (`00042.png`) with a caption from its class: the class name in lower case,
only the part before a "/", after "an" if it starts with a vowel and "a" otherwise: "a t-shirt",
"a trouser", "an ankle boot".
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from dalle.data.folder import center_square
from dalle.data.shards import write_shards
from dalle.errors import DalleError
from dalle.utils import ensure_writable_dir

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
FILE_PREFIXES = {"train": "train", "test": "t10k"}


def class_caption(name: str) -> str:
    """"T-shirt/top" -> "a t-shirt", "Ankle boot" -> "an ankle boot"."""
    noun = name.split("/")[0].lower()
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


CAPTIONS = tuple(class_caption(name) for name in CLASSES)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An `ndim`-d unsigned-byte array from a gzipped IDX file; ValueError if the file is not one."""
    try:
        with gzip.open(path) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DalleError(f"corrupt Fashion-MNIST file {path}: {e}") from None
    header = 4 + 4 * ndim
    if len(data) < header or data[:4] != bytes((0, 0, 0x08, ndim)):
        raise DalleError(f"corrupt Fashion-MNIST file {path}: not an IDX file of {ndim}-d unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != math.prod(shape):
        raise DalleError(f"corrupt Fashion-MNIST file {path}: {len(data) - header} bytes of data "
                         f"for shape {shape}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(split: str, root: str | Path = DEFAULT_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """The images (N, 28, 28) uint8 and labels (N,) of split `train` or `test`."""
    if split not in FILE_PREFIXES:
        raise DalleError(f"split must be train or test, got {split!r}")
    prefix = FILE_PREFIXES[split]
    paths = Path(root) / f"{prefix}-images-idx3-ubyte.gz", Path(root) / f"{prefix}-labels-idx1-ubyte.gz"
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"Fashion-MNIST file {path} not found: install it with "
                                    f"`apt-get install dataset-fashion-mnist` or pass the folder holding it")
    images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DalleError(f"corrupt Fashion-MNIST split {split} in {root}: images {images.shape}, "
                         f"labels {labels.shape}")
    if len(labels) and labels.max() >= len(CLASSES):
        raise DalleError(f"corrupt Fashion-MNIST file {paths[1]}: label {labels.max()} is not a class")
    return images, labels


def _pairs(images: np.ndarray, labels: np.ndarray, image_size: int) -> Iterator[tuple[bytes, str]]:
    for image, label in zip(images, labels):
        rgb = center_square(Image.fromarray(image, "L").convert("RGB"), image_size)
        buffer = io.BytesIO()
        rgb.save(buffer, format="PNG")
        yield buffer.getvalue(), CAPTIONS[label]


def write_fashion_mnist(out: str | Path, root: str | Path = DEFAULT_ROOT, image_size: int = 28,
                        shards: bool = False, max_samples: int = 1000) -> dict[str, int]:
    """Write `out/train` and `out/test` as png + `.txt` folders (or shards); returns the counts.

    Images are resized (bicubic) when `image_size` is not 28. The same inputs give the same files.
    """
    # Read both splits first, so that a missing or corrupt file fails before anything is written.
    splits = {split: load_fashion_mnist(split, root) for split in FILE_PREFIXES}
    for split, (images, labels) in splits.items():
        pairs = _pairs(images, labels, image_size)
        if shards:
            samples = (("png", image, caption) for image, caption in pairs)
            write_shards(samples, Path(out) / split, max_samples)
            continue
        folder = ensure_writable_dir(Path(out) / split)
        for i, (image, caption) in enumerate(pairs):
            (folder / f"{i:05d}.png").write_bytes(image)
            (folder / f"{i:05d}.txt").write_text(caption)
    return {split: len(labels) for split, (_, labels) in splits.items()}
