import io
import tarfile
from collections import Counter

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dalle.data.folder import ImageCaptionFolder
from dalle.data.shards import (
    ShardDataset,
    count_samples,
    epoch_shards,
    list_shards,
    pack_shards,
    write_shards,
)
from helpers import image_folder


def png_bytes(value: int = 128, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def read_all(dataset, num_workers=0, rank=0, world_size=1, seed=0):
    dataset.set_position(seed=seed, step=0, global_batch=world_size, rank=rank, world_size=world_size,
                         num_workers=num_workers)
    return list(DataLoader(dataset, batch_size=None, num_workers=num_workers))


def test_pack_keeps_bytes_in_order_and_is_deterministic(tmp_path):
    source = image_folder(tmp_path / "src", n=5, size=8)
    Image.new("RGB", (6, 6), (1, 2, 3)).save(source / "100.JPEG")
    (source / "100.txt").write_text("  a jpeg \n")
    report = pack_shards(source, tmp_path / "a", max_samples=2, min_shards=1)
    pack_shards(source, tmp_path / "b", max_samples=2, min_shards=1)
    assert report.kept == 6 and not report.skipped
    assert [p.name for p in report.shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [p.name for p in report.shards]
    for shard in report.shards:
        assert shard.read_bytes() == (tmp_path / "b" / shard.name).read_bytes()
    with tarfile.open(report.shards[0]) as tar:
        assert tar.getnames() == ["000000000.png", "000000000.txt", "000000001.png", "000000001.txt"]
        assert tar.extractfile("000000001.png").read() == (source / "001.png").read_bytes()
        assert tar.extractfile("000000001.txt").read() == b"image 1"
    with tarfile.open(report.shards[2]) as tar:
        assert tar.getnames() == ["000000004.png", "000000004.txt", "000000005.jpg", "000000005.txt"]
        assert tar.extractfile("000000005.jpg").read() == (source / "100.JPEG").read_bytes()
        assert tar.extractfile("000000005.txt").read() == b"a jpeg"


def test_pack_skips_what_the_folder_skips(tmp_path, monkeypatch):
    source = image_folder(tmp_path / "src", n=2, size=8)
    good = (source / "000.png").read_bytes()
    bad = [("empty", b"", b"x"), ("corrupt", b"\x89PNG\r\n\x1a\n junk", b"x"),
           ("truncated", good[: len(good) // 2], b"x"), ("latin1", good, "caf\xe9".encode("latin-1"))]
    for name, image, caption in bad:
        (source / f"{name}.png").write_bytes(image)
        (source / f"{name}.txt").write_bytes(caption)
    (source / "orphan.txt").write_text("no image")
    (source / "nocaption.png").write_bytes(good)
    Image.new("RGB", (64, 64)).save(source / "big.png")
    (source / "big.txt").write_text("a bomb")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)

    report = pack_shards(source, tmp_path / "out")
    folder = ImageCaptionFolder(source, 8)
    assert report.kept == len(folder) == 2
    assert report.skipped == folder.report.skipped == Counter({
        "empty image file": 1, "unreadable image": 2, "caption not UTF-8": 1, "caption without image": 1,
        "image without caption": 1, "image over the decompression-bomb limit": 1})


def test_pack_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pack_shards(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no readable image-caption pairs"):
        pack_shards(tmp_path / "empty", tmp_path / "out")
    source = image_folder(tmp_path / "src", n=2, size=4)
    pack_shards(source, tmp_path / "out")
    with pytest.raises(FileExistsError, match="already holds shards"):
        pack_shards(source, tmp_path / "out")


def test_interrupted_pack_leaves_only_complete_shards(tmp_path):
    def samples():
        for i in range(3):
            yield "png", png_bytes(i), f"caption {i}"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shards(samples(), tmp_path, max_samples=2)
    assert [p.name for p in tmp_path.iterdir()] == ["shard-000000.tar"]
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        assert len(tar.getnames()) == 4


def test_items_equal_the_folder_items(tmp_path):
    source = image_folder(tmp_path / "src", n=10, size=12)
    Image.new("RGBA", (20, 12), (255, 0, 0, 0)).save(source / "rgba.png")  # converted the same way
    (source / "rgba.txt").write_text("transparent")
    pack_shards(source, tmp_path / "shards", max_samples=3)
    folder = ImageCaptionFolder(source, 8)
    items = sorted(read_all(ShardDataset(tmp_path / "shards", 8, epochs=1)), key=lambda item: item["index"])
    assert [item["index"] for item in items] == list(range(len(folder)))
    for item in items:
        expected = folder[item["index"]]
        assert item["caption"] == expected["caption"]
        assert item["image"].dtype == torch.float32 and torch.equal(item["image"], expected["image"])


def test_list_shards(tmp_path):
    for i in range(3):
        write_tar(tmp_path / f"shard-{i:06d}.tar", [(f"{i}.png", png_bytes()), (f"{i}.txt", b"x")])
    names = [p.name for p in list_shards(tmp_path)]
    assert names == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [p.name for p in list_shards(str(tmp_path / "shard-{000001..000002}.tar"))] == names[1:]
    assert [p.name for p in list_shards([tmp_path / names[2], tmp_path / names[0]])] == [names[2], names[0]]
    with pytest.raises(FileNotFoundError, match=r"shard-000003.tar does not exist \(and 6 more\)"):
        list_shards(str(tmp_path / "shard-{000000..000009}.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        list_shards(tmp_path / "empty")
    with pytest.raises(ValueError, match="3 shards cannot feed 4 readers"):
        ShardDataset(tmp_path, 8).set_position(seed=0, step=0, global_batch=4, rank=0, world_size=2,
                                               num_workers=2)


def test_each_shard_goes_to_exactly_one_reader_per_epoch(tmp_path):
    for epoch in range(3):
        parts = [epoch_shards(10, seed=5, epoch=epoch, slot=s, num_slots=4) for s in range(4)]
        assert sorted(i for part in parts for i in part) == list(range(10))
    assert epoch_shards(10, 5, 0, 0, 1) != epoch_shards(10, 5, 1, 0, 1)

    pack_shards(image_folder(tmp_path / "src", n=23, size=4), tmp_path / "shards", max_samples=3)
    seen = []
    for rank in range(2):  # two processes with two loader workers each, two epochs
        dataset = ShardDataset(tmp_path / "shards", 4, epochs=2)
        seen += [item["index"] for item in read_all(dataset, num_workers=2, rank=rank, world_size=2)]
    assert Counter(seen) == {i: 2 for i in range(23)}


def test_shuffle_is_a_function_of_seed(tmp_path):
    pack_shards(image_folder(tmp_path / "src", n=30, size=4), tmp_path / "shards", max_samples=5)

    def order(seed, epochs=1):
        dataset = ShardDataset(tmp_path / "shards", 4, epochs=epochs, shuffle_buffer=8)
        dataset.set_position(seed=seed, step=0, global_batch=1, rank=0, world_size=1, num_workers=0)
        return [item["index"] for item in dataset]

    assert order(0) == order(0) and order(0) != order(1)
    assert sorted(order(0)) == list(range(30))
    two = order(0, epochs=2)
    assert two[:30] == order(0) and two[30:] != two[:30] and sorted(two[30:]) == list(range(30))


def test_resumed_stream_reads_the_same_batches(tmp_path):
    pack_shards(image_folder(tmp_path / "src", n=40, size=4), tmp_path / "shards", max_samples=3)

    def batches(rank, step, count):
        dataset = ShardDataset(tmp_path / "shards", 4, shuffle_buffer=4)
        dataset.set_position(seed=7, step=step, global_batch=4, rank=rank, world_size=2, num_workers=2)
        loader = iter(DataLoader(dataset, batch_size=2, num_workers=2))
        return [next(loader)["index"].tolist() for _ in range(count)]

    for rank in range(2):
        straight = batches(rank, 0, 30)  # crosses epochs: 20 samples per reader pair and epoch
        assert batches(rank, 13, 17) == straight[13:]


def test_broken_members_are_skipped_and_counted(tmp_path):
    good = png_bytes()
    write_tar(tmp_path / "a.tar", [
        ("0.png", good), ("0.txt", b"good 0"),
        ("1.png", b"\x89PNG\r\n\x1a\n junk"), ("1.txt", b"corrupt"),
        ("2.png", good),  # no caption
        ("3.txt", b"no image"),
        ("4.jpg", b""), ("4.txt", b"empty"),
        ("5.png", good), ("5.txt", b"\xff\xfe latin"),
        ("6.png", good), ("6.txt", b"good 6"),
    ])
    whole = write_tar(tmp_path / "b.tar", [(f"{i}.{ext}", good if ext == "png" else b"good %d" % i)
                                           for i in range(4) for ext in ("png", "txt")]).read_bytes()
    (tmp_path / "b.tar").write_bytes(whole[:3000])  # cut inside the second sample's image
    write_tar(tmp_path / "c.tar", [("0.png", good), ("0.txt", b"good c")])

    for num_workers in (0, 2):
        dataset = ShardDataset(tmp_path, 8, epochs=1)
        items = read_all(dataset, num_workers)
        assert sorted(item["caption"] for item in items) == ["good 0", "good 0", "good 6", "good c"]
        assert sorted(item["index"] for item in items) == [0, 6, 7, 9]  # b.tar's headers hold 2
        assert dataset.report.kept == 4
        assert dataset.report.skipped == Counter({
            "unreadable image": 1, "image without caption": 2, "caption without image": 1,
            "empty image file": 1, "caption not UTF-8": 1, "damaged tar": 1})


def test_unreadable_stream_raises_instead_of_spinning(tmp_path):
    write_tar(tmp_path / "a.tar", [("0.png", b"junk"), ("0.txt", b"x"), ("1.png", b"junk"), ("1.txt", b"y")])
    with pytest.raises(ValueError, match="could be read"):
        next(iter(ShardDataset(tmp_path, 8)))
    (tmp_path / "a.tar").write_bytes(b"not a tar")
    with pytest.raises(ValueError, match="no samples"):
        ShardDataset(tmp_path, 8)


def test_a_small_folder_is_spread_over_enough_shards_for_eight_processes(tmp_path):
    source = image_folder(tmp_path / "src", n=20, size=8)
    report = pack_shards(source, tmp_path / "out")  # 20 pairs, 2 a shard: at least 8 shards
    assert len(report.shards) == 10 and report.kept == 20
    assert len(pack_shards(source, tmp_path / "few", min_shards=2).shards) == 2
    assert len(pack_shards(source, tmp_path / "cap", max_samples=2, min_shards=2).shards) == 10


def test_the_tokenizer_reads_captions_from_shards(tmp_path):
    from dalle.data.folder import read_captions

    source = image_folder(tmp_path / "src", n=6, size=8)
    pack_shards(source, tmp_path / "shards", min_shards=3)
    assert list(read_captions(tmp_path / "shards")) == list(read_captions(source))
    (tmp_path / "shards" / "shard-000001.tar").write_bytes(b"not a tar")
    with pytest.raises(ValueError, match="shard-000001.tar is not a readable tar shard"):
        list(read_captions(tmp_path / "shards"))


def test_a_shard_cut_short_is_reported_and_counted(tmp_path, caplog):
    source = image_folder(tmp_path / "src", n=20, size=8)
    whole = pack_shards(source, tmp_path / "whole", min_shards=1).shards[0]
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.tar").write_bytes(whole.read_bytes())
    (tmp_path / "mixed" / "b.tar").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert count_samples(whole) == (20, True)
    kept, complete = count_samples(tmp_path / "mixed" / "b.tar")
    assert 0 < kept < 20 and not complete
    with caplog.at_level("WARNING"):
        dataset = ShardDataset(tmp_path / "mixed", 8)
    assert dataset.num_samples == 20 + kept and dataset.report.skipped == Counter({"damaged tar": 1})
    assert f"b.tar is cut short or damaged after {kept} samples" in caplog.text
    ShardDataset(tmp_path / "whole", 8)  # a whole shard says nothing
