import json

import numpy as np
import pytest
import torch

from dalle.config import VAEConfig
from dalle.data.codes import CodesDataset, encoded_seconds
from dalle.errors import DalleError
from dalle.train.codes import encode_dataset
from dalle.vae import DiscreteVAE
from helpers import RandomImages


@pytest.fixture(scope="module")
def vae() -> DiscreteVAE:
    torch.manual_seed(0)
    return DiscreteVAE(VAEConfig.tiny()).eval()


class Interrupted(Exception):
    pass


def items_then_crash(dataset, after: int):
    for i in range(len(dataset)):
        if i == after:
            raise Interrupted
        yield dataset[i]


def test_codes_and_captions_match_the_encoder(vae, tmp_path):
    data = RandomImages(n=21)
    index = encode_dataset(vae, data, tmp_path / "codes", batch_size=8, show_progress=False)
    assert index["count"] == 21 and index["grid"] == 4 and index["dtype"] == "uint16"
    codes = CodesDataset(tmp_path / "codes")
    assert len(codes) == 21
    expected = vae.encode(data.images)
    for i in (0, 7, 8, 20):
        item = codes[i]
        assert torch.equal(item["codes"], expected[i]) and item["caption"] == f"image {i}"
    assert not (tmp_path / "codes" / "progress.json").exists()


def test_rerun_writes_the_same_bytes(vae, tmp_path):
    data = RandomImages(n=20)
    encode_dataset(vae, data, tmp_path / "a", batch_size=8, show_progress=False)
    encode_dataset(vae, data, tmp_path / "b", batch_size=8, show_progress=False)
    for name in ("codes.bin", "captions.jsonl", "index.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_interrupted_run_resumes_to_identical_output(vae, tmp_path):
    data = RandomImages(n=30)
    encode_dataset(vae, data, tmp_path / "whole", batch_size=8, show_progress=False)
    with pytest.raises(Interrupted):
        encode_dataset(vae, items_then_crash(data, 19), tmp_path / "cut", batch_size=8,
                       show_progress=False)
    progress = json.loads((tmp_path / "cut" / "progress.json").read_text())
    assert progress["rows"] == 16  # two whole batches were committed, the third was not
    with pytest.raises(FileNotFoundError, match="interrupted encode.*--resume"):
        CodesDataset(tmp_path / "cut")
    # Junk past the committed point (a half-written batch) is cut off on resume.
    with open(tmp_path / "cut" / "codes.bin", "ab") as f:
        f.write(b"\x07" * 10)
    encode_dataset(vae, data, tmp_path / "cut", batch_size=8, resume=True, show_progress=False)
    for name in ("codes.bin", "captions.jsonl", "index.json"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes()


def test_progress_counts_the_seconds_of_every_attempt(vae, tmp_path):
    data, progress = RandomImages(n=30), tmp_path / "c" / "progress.json"
    with pytest.raises(Interrupted):
        encode_dataset(vae, items_then_crash(data, 10), tmp_path / "c", batch_size=8,
                       show_progress=False)
    assert 0 < encoded_seconds(progress) < 60
    record = json.loads(progress.read_text())
    progress.write_text(json.dumps({**record, "seconds": 1000.0}))  # a long first attempt
    with pytest.raises(Interrupted):
        encode_dataset(vae, items_then_crash(data, 20), tmp_path / "c", batch_size=8,
                       resume=True, show_progress=False)
    assert 1000 < encoded_seconds(progress) < 1060
    progress.write_text(json.dumps({**record, "seconds": None}))  # before progress had seconds
    with pytest.raises(Interrupted):
        encode_dataset(vae, items_then_crash(data, 20), tmp_path / "c", batch_size=8,
                       resume=True, show_progress=False)
    assert encoded_seconds(progress) is None
    del record["seconds"]
    progress.write_text(json.dumps(record))
    assert encoded_seconds(progress) is None
    progress.write_bytes(b"\x00{garbage")
    with pytest.raises(DalleError, match="damaged"):
        encoded_seconds(progress)
    with pytest.raises(DalleError, match="damaged.*without --resume"):  # resuming reads it alike
        encode_dataset(vae, data, tmp_path / "c", batch_size=8, resume=True, show_progress=False)


def test_resume_with_another_batch_size_is_refused(vae, tmp_path):
    data = RandomImages(n=30)
    with pytest.raises(Interrupted):
        encode_dataset(vae, items_then_crash(data, 10), tmp_path / "c", batch_size=8,
                       show_progress=False)
    with pytest.raises(ValueError, match="another batch size"):
        encode_dataset(vae, data, tmp_path / "c", batch_size=4, resume=True, show_progress=False)


def test_corrupt_codes_directory_is_reported(vae, tmp_path):
    encode_dataset(vae, RandomImages(n=8), tmp_path / "c", batch_size=8, show_progress=False)
    with open(tmp_path / "c" / "codes.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(ValueError, match="expected 256"):
        CodesDataset(tmp_path / "c")
    with pytest.raises(ValueError, match="no images"):
        encode_dataset(vae, [], tmp_path / "empty", show_progress=False)


def test_codes_open_as_a_memory_map(vae, tmp_path):
    encode_dataset(vae, RandomImages(n=8), tmp_path / "c", batch_size=8, show_progress=False)
    assert isinstance(CodesDataset(tmp_path / "c").codes, np.memmap)


def test_views_add_random_crops_of_each_picture_and_repeat_exactly(vae, tmp_path):
    from PIL import Image

    from dalle.data.augment import random_crops, sample_rng
    from dalle.data.sources import open_images
    from dalle.train.codes import encode_codes

    folder = tmp_path / "folder"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        pixels = rng.integers(0, 256, (vae.config.image_size, vae.config.image_size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"picture {i}\n")
    vae.save_pretrained(tmp_path / "vae")
    encode_codes(tmp_path / "vae", folder, tmp_path / "one", device="cpu")
    index = encode_codes(tmp_path / "vae", folder, tmp_path / "three", views=3, device="cpu")
    encode_codes(tmp_path / "vae", folder, tmp_path / "again", views=3, device="cpu")
    assert index["count"] == 15
    assert (tmp_path / "three/codes.bin").read_bytes() == (tmp_path / "again/codes.bin").read_bytes()
    one, three = CodesDataset(tmp_path / "one"), CodesDataset(tmp_path / "three")
    # View 0 is the plain encoding; views 1 and 2 are the same pictures, cropped.
    assert all(torch.equal(three[i]["codes"], one[i]["codes"]) for i in range(5))
    assert [three[i]["caption"] for i in range(15)] == [f"picture {i}" for i in range(5)] * 3
    images = open_images(folder, vae.config.image_size)
    for view in (1, 2):
        for i in range(5):
            rng = sample_rng(0, view, i)
            crop = random_crops(images[i]["image"][None], [rng], 0.25)
            assert torch.equal(three[5 * view + i]["codes"], vae.encode(crop)[0])
    assert any(not torch.equal(random_crops(images[i]["image"][None], [sample_rng(0, 1, i)], 0.25),
                               images[i]["image"][None]) for i in range(5))
    # Bad arguments are refused before the output folder is made.
    for views, max_crop, message in ((0, 0.25, "views must be at least 1"), (2, 1.5, "max_crop must be in")):
        with pytest.raises(DalleError, match=message):
            encode_codes(tmp_path / "vae", folder, tmp_path / "bad", views=views, max_crop=max_crop, device="cpu")
        assert not (tmp_path / "bad").exists()


def test_codes_keep_every_caption_variant(vae, tmp_path):
    data = RandomImages(n=3)
    items = [{**data[i], "caption": f"picture {i}", "variants": f"picture {i}\nthe picture: {i}"}
             for i in range(3)]
    encode_dataset(vae, items, tmp_path / "codes", show_progress=False)
    codes = CodesDataset(tmp_path / "codes")
    assert codes.captions == ["picture 0", "picture 1", "picture 2"]
    assert codes[2]["caption"] == "picture 2" and codes[2]["variants"] == "picture 2\nthe picture: 2"
