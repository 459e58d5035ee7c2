"""Loading validates before it allocates: a damaged or hostile config.json or model.safetensors
is one line naming the file, never a traceback, never a model built until memory runs out."""

import json
import shutil
import struct
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dalle.config import CLIPConfig, PriorConfig, SamplingConfig, TokenizerConfig, TrainConfig, VAEConfig
from dalle.errors import DalleError
from dalle.pipeline import BUNDLED_DIR
from dalle.prior import Prior
from dalle.vae import DiscreteVAE
from test_cli import dalle, one_line_error

DAMAGES = {
    "truncated": lambda good: good[:1000],
    "empty": lambda good: b"",
    "random bytes": lambda good: bytes(range(256)) * 20,
    "header length 10^15": lambda good: struct.pack("<Q", 10**15) + b"{}",
    "a pickle": lambda good: b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94.",
    "tensors cut off": lambda good: good[: len(good) - 100],
}


def copy_of(part, tmp_path):
    target = tmp_path / part
    shutil.copytree(BUNDLED_DIR / "shapes" / part, target)
    return target


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_weights_file_is_one_line(damage, tmp_path):
    vae = copy_of("vae", tmp_path)
    weights = vae / "model.safetensors"
    weights.write_bytes(DAMAGES[damage](weights.read_bytes()))
    with pytest.raises(DalleError, match="model.safetensors is not a readable safetensors file"):
        DiscreteVAE.from_pretrained(vae)


def test_the_cli_names_a_damaged_file_in_one_line(tmp_path):
    vae = copy_of("vae", tmp_path)
    (vae / "model.safetensors").write_bytes(b"")
    one_line_error(dalle("eval-vae", "--vae", vae, "--data", tmp_path), "is not a readable safetensors file")


@pytest.mark.parametrize("field, value, message", [
    ("depth", 10_000_000, "depth must be at most 1024"),
    ("dim", 10**9, "describes a model that cannot be built"),
    ("codebook_size", 10**6, "mis-shaped tensors (first: image_embedding.weight)"),
    ("dim", "eight", 'PriorConfig.dim must be int, got "eight"'),
    ("dim", -8, "must be positive"),
    ("layout", ["sparse"], "PriorConfig.layout must be str"),
])
def test_a_hostile_prior_config_is_refused_before_anything_is_allocated(field, value, message, tmp_path):
    prior = copy_of("prior", tmp_path)
    config = json.loads((prior / "config.json").read_text())
    (prior / "config.json").write_text(json.dumps({**config, field: value}))
    start = time.perf_counter()
    with pytest.raises(DalleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Prior.from_pretrained(prior)
    assert time.perf_counter() - start < 2


def test_a_model_above_the_ceiling_is_refused(tmp_path, monkeypatch):
    prior = copy_of("prior", tmp_path)
    with pytest.raises(DalleError, match="more than the 1,000,000 allowed"):
        Prior.from_pretrained(prior, max_parameters=1_000_000)
    monkeypatch.setenv("DALLE_MAX_PARAMETERS", "1e6")
    with pytest.raises(DalleError, match="DALLE_MAX_PARAMETERS"):
        Prior.from_pretrained(prior)
    monkeypatch.delenv("DALLE_MAX_PARAMETERS")
    assert Prior.from_pretrained(prior).config.dim == 256


def test_config_files_under_earlier_field_names_still_load(tmp_path):
    vae = copy_of("vae", tmp_path)
    config = json.loads((vae / "config.json").read_text())
    config["vocab_size"] = config.pop("codebook_size")
    (vae / "config.json").write_text(json.dumps(config))
    assert DiscreteVAE.from_pretrained(vae).config.codebook_size == 512


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)
CONFIGS = (VAEConfig, TokenizerConfig, PriorConfig, TrainConfig, CLIPConfig, SamplingConfig)


@pytest.mark.parametrize("config_class", CONFIGS, ids=lambda c: c.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_json_in_a_config_is_a_config_or_one_line(config_class, data):
    """Random JSON values in random fields of every config: a config, or a DalleError."""
    fields = list(config_class().to_dict())
    chosen = data.draw(st.lists(st.sampled_from(fields), unique=True, max_size=len(fields)))
    settings_ = {name: data.draw(JSON_VALUES) for name in chosen}
    try:
        config = config_class.from_dict(settings_)
    except DalleError:
        return
    assert isinstance(config, config_class)
    assert config_class.from_dict(json.loads(config.to_json())) == config


@pytest.fixture(scope="module")
def tokenizer():
    from dalle.text import TextTokenizer

    captions = ["a small green triangle above a large red circle", "grinning face, twitter style",
                "flag: japan", "a café in the rain"]
    return TextTokenizer.train(captions, bpe_vocab_size=300, text_length=12)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_any_string_encodes_to_ids_in_range_or_is_one_line(tokenizer, text):
    """Any Unicode string (or bytes, as a caption file holds them) gives text_length + 1 ids the
    prior can read, with one warning line at most; or it is refused in one line."""
    import warnings

    config = tokenizer.config
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ids = tokenizer.encode(text)
    except DalleError as e:
        assert "\n" not in str(e)
        return
    assert ids.shape == (config.text_length + 1,) and ids.dtype == torch.long
    assert 0 <= int(ids.min()) and int(ids.max()) < config.text_vocab_size
    assert all("\n" not in str(w.message) for w in caught)


IMAGE_HEADS = st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"RIFF\0\0\0\0WEBP",
                               b"BM", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\x01\0\0\0\x01\0\0\x08\x02"])


@settings(max_examples=300, deadline=None)
@given(head=IMAGE_HEADS, body=st.binary(max_size=512), caption=st.binary(max_size=64))
def test_any_bytes_as_an_image_caption_pair_are_a_pair_or_a_counted_skip(head, body, caption):
    """What a folder or shard reader does with a pair's bytes: an RGB image and a caption, or
    SkippedPair with its reason (counted), never another exception."""
    from PIL import Image

    from dalle.data.folder import SkippedPair, decode_pair

    try:
        image, text = decode_pair(head + body, caption)
    except SkippedPair as e:
        assert str(e) in {"empty image file", "unreadable image", "image over the decompression-bomb limit",
                          "caption not UTF-8"}
        return
    assert isinstance(image, Image.Image) and image.mode == "RGB" and isinstance(text, str)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=IMAGE_HEADS, body=st.binary(max_size=512))
def test_any_file_given_as_an_image_is_an_image_or_one_line(head, body, tmp_path):
    """`--init-image` and `reconstruct --data FILE`: an image, or one line naming the flag."""
    from dalle.data.folder import load_image_file

    path = tmp_path / "given.png"
    path.write_bytes(head + body)
    try:
        load_image_file(path, "--init-image")
    except DalleError as e:
        assert str(e).startswith(f"--init-image {path} ") and "\n" not in str(e)
