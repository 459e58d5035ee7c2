import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from dalle.data.fashion_mnist import CAPTIONS, DEFAULT_ROOT, load_fashion_mnist, write_fashion_mnist
from dalle.data.shards import ShardDataset


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes((0, 0, 8, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def fake_fashion_mnist(root, n_train=5, n_test=3, seed=0):
    """Tiny IDX files with the package's names; returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images), mtime=0))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels), mtime=0))
        splits[split] = images, labels
    return splits


def test_captions():
    assert CAPTIONS == ("a t-shirt", "a trouser", "a pullover", "a dress", "a coat", "a sandal",
                        "a shirt", "a sneaker", "a bag", "an ankle boot")


def test_writes_rgb_png_folders_with_captions(tmp_path):
    splits = fake_fashion_mnist(tmp_path / "idx")
    assert write_fashion_mnist(tmp_path / "out", tmp_path / "idx") == {"train": 5, "test": 3}
    for split, (images, labels) in splits.items():
        folder = tmp_path / "out" / split
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            f"{i:05d}.{ext}" for i in range(len(labels)) for ext in ("png", "txt"))
        for i, (image, label) in enumerate(zip(images, labels)):
            png = Image.open(folder / f"{i:05d}.png")
            assert png.mode == "RGB" and np.array_equal(np.asarray(png), np.repeat(image[..., None], 3, -1))
            assert (folder / f"{i:05d}.txt").read_text() == CAPTIONS[label]
    write_fashion_mnist(tmp_path / "again", tmp_path / "idx")
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert path.read_bytes() == (tmp_path / "again" / path.relative_to(tmp_path / "out")).read_bytes()


def test_resize_and_shards(tmp_path):
    splits = fake_fashion_mnist(tmp_path / "idx")
    write_fashion_mnist(tmp_path / "out", tmp_path / "idx", image_size=32, shards=True, max_samples=2)
    assert sorted(p.name for p in (tmp_path / "out" / "train").iterdir()) == [
        "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    items = sorted(ShardDataset(tmp_path / "out" / "train", 32, epochs=1), key=lambda item: item["index"])
    assert [item["caption"] for item in items] == [CAPTIONS[label] for label in splits["train"][1]]
    assert items[0]["image"].shape == (3, 32, 32)


def test_missing_files_name_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        write_fashion_mnist(tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda data: gzip.compress(b"\x00\x00\x08\x01" + data[4:], mtime=0), "not an IDX file of 3-d"),
    (lambda data: gzip.compress(data[:-10], mtime=0), "bytes of data for shape"),
    (lambda data: gzip.compress(data, mtime=0)[:-20], "corrupt"),
    (lambda data: data, "corrupt"),  # not gzipped
])
def test_corrupt_files_are_clear_errors(tmp_path, damage, message):
    fake_fashion_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(damage(gzip.decompress(path.read_bytes())))
    with pytest.raises(ValueError, match=message):
        load_fashion_mnist("test", tmp_path)
    with pytest.raises(ValueError, match="corrupt Fashion-MNIST"):
        write_fashion_mnist(tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()


def test_labels_are_checked(tmp_path):
    fake_fashion_mnist(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.array([0, 10, 2], np.uint8))))
    with pytest.raises(ValueError, match="label 10 is not a class"):
        load_fashion_mnist("test", tmp_path)
    path.write_bytes(gzip.compress(idx_bytes(np.array([0, 1], np.uint8))))
    with pytest.raises(ValueError, match="images .3, 28, 28., labels .2,."):
        load_fashion_mnist("test", tmp_path)


@pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_test_split():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10_000, 28, 28)
    assert np.bincount(labels).tolist() == [1000] * 10
