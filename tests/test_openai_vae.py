"""Importing OpenAI's released dVAE (`encoder.pkl` / `decoder.pkl`) without running pickled code.

The reference modules are built small, randomised (biases included, which OpenAI initialises to
zero) and written with `torch.save` exactly as the release was; the import must reproduce their
outputs and refuse any pickle that names a global outside the allowlist.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

dall_e = pytest.importorskip("dall_e")

from dalle.config import VAEConfig  # noqa: E402
from dalle.openai_vae import UnsafePickleError, import_openai_vae, load_openai_vae  # noqa: E402
from dalle.vae import DiscreteVAE  # noqa: E402

VOCAB = 512


def _randomise(module: torch.nn.Module) -> None:
    """Redraw every parameter; non-zero biases make a missed or swapped bias visible."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(".b"):
                p.normal_(std=0.1)
            else:
                fan_in = p[0].numel()
                p.normal_(std=1.0 / fan_in**0.5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.manual_seed(0)
    enc = dall_e.Encoder(n_hid=64, n_blk_per_group=1, vocab_size=VOCAB, requires_grad=False)
    dec = dall_e.Decoder(n_init=32, n_hid=64, n_blk_per_group=1, vocab_size=VOCAB)
    _randomise(enc)
    _randomise(dec)
    root = tmp_path_factory.mktemp("openai")
    torch.save(enc, root / "encoder.pkl")  # whole modules, as OpenAI released them
    torch.save(dec, root / "decoder.pkl")
    return {"enc": enc, "dec": dec, "enc_path": root / "encoder.pkl", "dec_path": root / "decoder.pkl",
            "model": load_openai_vae(root / "encoder.pkl", root / "decoder.pkl")}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def test_config_from_pickled_hyperparameters(reference: dict) -> None:
    assert reference["model"].config == VAEConfig(image_size=256, channels=3, downsample=8, codebook_size=VOCAB,
                                                   hidden=64, blocks_per_group=1, decoder_init=32)


@torch.no_grad()
def test_encoder_logits_match(reference: dict) -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = reference["enc"](dall_e.map_pixels(x))
    assert _max_diff(reference["model"].logits(x), expected) < 1e-5


@torch.no_grad()
def test_decoder_output_matches(reference: dict) -> None:
    g = torch.Generator().manual_seed(2)
    z = torch.softmax(torch.randn(2, VOCAB, 4, 4, generator=g), dim=1)
    assert _max_diff(reference["model"].decoder(z), reference["dec"](z)) < 1e-5


@torch.no_grad()
def test_decode_codes_matches(reference: dict) -> None:
    codes = torch.randint(0, VOCAB, (2, 4, 4), generator=torch.Generator().manual_seed(3))
    one_hot = F.one_hot(codes, VOCAB).permute(0, 3, 1, 2).float()
    expected = dall_e.unmap_pixels(torch.sigmoid(reference["dec"](one_hot)[:, :3]))
    assert _max_diff(reference["model"].decode(codes), expected) < 1e-5


def test_import_round_trip(reference: dict, tmp_path: Path) -> None:
    out = import_openai_vae(reference["enc_path"], reference["dec_path"], tmp_path / "vae")
    loaded = DiscreteVAE.from_pretrained(out)
    assert loaded.config == reference["model"].config
    for key, value in reference["model"].state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def _assert_same_weights(a: DiscreteVAE, b: DiscreteVAE) -> None:
    assert a.config == b.config
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key


def test_legacy_format(reference: dict, tmp_path: Path) -> None:
    enc_path, dec_path = tmp_path / "encoder.pkl", tmp_path / "decoder.pkl"
    torch.save(reference["enc"], enc_path, _use_new_zipfile_serialization=False)
    torch.save(reference["dec"], dec_path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(enc_path)
    _assert_same_weights(reference["model"], load_openai_vae(enc_path, dec_path))


def test_big_endian_zip(reference: dict, tmp_path: Path) -> None:
    """A zip checkpoint written on a big-endian machine: byteorder record 'big', swapped bytes."""
    swapped = tmp_path / "encoder.pkl"
    with zipfile.ZipFile(reference["enc_path"]) as src, zipfile.ZipFile(swapped, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in name:  # every storage of these modules is float32
                data = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(-1, 4).flip(1).numpy().tobytes()
            dst.writestr(name, data)
    _assert_same_weights(reference["model"], load_openai_vae(swapped, reference["dec_path"]))


# -- refusing what is not an OpenAI dVAE --


class _Payload:
    """Unpickling this runs a shell command: exactly what a hostile checkpoint would carry."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (self.command,))


def _globals(data: bytes) -> set[str]:
    """Globals a protocol-2 pickle references (proves the payload really is in the file)."""
    return {str(arg).replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


@pytest.mark.parametrize("layout", ["zip", "zip-inside-module", "legacy", "plain-pickle"])
def test_malicious_pickle_is_refused(layout: str, reference: dict, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = _Payload(f"touch {marker}")
    path = tmp_path / "encoder.pkl"
    if layout == "zip":
        torch.save(payload, path)
    elif layout == "zip-inside-module":
        module = torch.nn.Sequential()
        module.payload = payload  # a plain attribute: pickled in the module's state dict
        torch.save(module, path)
    elif layout == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        data = pickle.dumps(payload, protocol=2)
        assert _globals(data) & {"posix.system", "os.system", "nt.system"}
        path.write_bytes(data)
    with pytest.raises(UnsafePickleError, match=r"(os|posix|nt)\.system.*not an OpenAI dVAE checkpoint") as info:
        load_openai_vae(path, reference["dec_path"])
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_harmless_but_unlisted_global_is_refused(reference: dict, tmp_path: Path) -> None:
    path = tmp_path / "decoder.pkl"
    torch.save({"f": eval}, path)
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        load_openai_vae(reference["enc_path"], path)


def test_error_messages(reference: dict, tmp_path: Path) -> None:
    enc_path, dec_path = reference["enc_path"], reference["dec_path"]
    with pytest.raises(FileNotFoundError, match="no OpenAI dVAE checkpoint"):
        load_openai_vae(tmp_path / "missing.pkl", dec_path)

    text = tmp_path / "notes.txt"
    text.write_text("hello, not a checkpoint\n")
    with pytest.raises(ValueError, match="not a (readable )?torch checkpoint"):
        load_openai_vae(text, dec_path)

    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(ValueError, match="not a torch.save checkpoint"):
        load_openai_vae(archive, dec_path)

    with pytest.raises(ValueError, match="swapped"):
        load_openai_vae(dec_path, enc_path)

    state_dict = tmp_path / "state_dict.pkl"
    torch.save(reference["enc"].state_dict(), state_dict)
    with pytest.raises(ValueError, match="not a pickled dall_e.encoder.Encoder"):
        load_openai_vae(state_dict, dec_path)


def test_encoder_and_decoder_must_agree(reference: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    other = dall_e.Decoder(n_init=32, n_hid=64, n_blk_per_group=1, vocab_size=2 * VOCAB)
    path = tmp_path / "decoder.pkl"
    buffer = io.BytesIO()
    torch.save(other, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match=r"disagree on vocab_size \(512 vs 1024\)"):
        load_openai_vae(reference["enc_path"], path)


def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path):
    """A 0.2 MB file whose pickle would inflate to 256 MB: refused from its declared size."""
    import time
    import zipfile

    bomb = tmp_path / "bomb.pkl"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open("archive/data.pkl", "w", force_zip64=True) as member:
        for _ in range(16):
            member.write(b"\0" * 2**24)
    assert bomb.stat().st_size < 2**20
    start = time.perf_counter()
    with pytest.raises(ValueError, match="would inflate .* to 268,435,456; refused as a zip bomb"):
        load_openai_vae(bomb, bomb)
    assert time.perf_counter() - start < 1
