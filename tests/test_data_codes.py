import json

import numpy as np
import pytest
import torch

from dalle.config import VAEConfig
from dalle.data.codes import CodesDataset
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
