"""`log_format="wandb"`: scalars, sample grids and config go to a W&B run in RUN/wandb, offline
here (no test touches the network), and a resumed run continues the same W&B run."""

import csv
import json
import struct
import sys

import pytest
import torch

from dalle.errors import DalleError
from dalle.train.logger import has_wandb_login
from helpers import RandomImages, image_folder, make_trainer, tiny_train_config
from test_cli import dalle

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

BLOCK = 32 * 1024  # the .wandb file is a LevelDB-style log: 32 KiB blocks of framed records


def wandb_records(path):
    """The protobuf records of a run's .wandb file (7-byte file header, then per record a 7-byte
    header: CRC, length, type 1 = whole, 2/3/4 = first/middle/last part)."""
    data, pos, parts = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += BLOCK - pos % BLOCK
            continue
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def history(run_dir):
    """Every logged row of an offline run folder, as {key: value} (a nested key joined by '/':
    an image is `samples/path`, `samples/_type`, ...), and its config."""
    [path] = run_dir.glob("run-*.wandb")
    rows, config = [], {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
        elif kind in ("run", "config"):
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key: json.loads(item.value_json) for item in updates})
    return rows, config


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """W&B offline, with its settings, cache and credentials confined to tmp_path."""
    for name in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_SILENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return tmp_path


def vae_trainer(out, config, resume=False, overwrite=False):
    """The tiny dVAE's trainer, drawing reconstruction grids as train_vae's does."""
    from dalle.config import VAEConfig
    from dalle.train import Trainer
    from dalle.train.vae import VAELoss, reconstruction_grid
    from dalle.vae import DiscreteVAE

    torch.manual_seed(config.seed)
    data = RandomImages()
    return Trainer(DiscreteVAE(VAEConfig.tiny()), data, config, out, VAELoss(config.seed),
                   sample_fn=reconstruction_grid, sample_batch=data.images[:4], resume=resume,
                   overwrite=overwrite, show_progress=False)


def test_scalars_samples_and_config_reach_the_offline_run_and_resume_continues_it(offline, capfd):
    out = offline / "run"
    config = tiny_train_config(steps=6, log_every=2, sample_every=2, checkpoint_every=2, log_format="wandb")
    for resume, until in ((False, 4), (True, None)):  # stopped after step 4, then resumed
        trainer = vae_trainer(out, config, resume=resume)
        try:
            trainer.fit(until=until)
        finally:
            trainer.close()
        run_id = (out / "wandb" / "run-id").read_text().strip()
        assert f"wandb: run {run_id} offline in {out / 'wandb'}" in capfd.readouterr().err
    folders = sorted((out / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(folders) == 2  # one W&B run, written in two sittings

    before, config_logged = history(folders[0])
    after, _ = history(folders[1])
    assert config_logged["train"]["log_format"] == "wandb" and config_logged["model_class"] == "DiscreteVAE"
    assert config_logged["model"]["codebook_size"] == 32
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    logged = [r for r in before + after if "loss" in r]
    assert [r["step"] for r in logged] == [int(r["step"]) for r in rows] == [2, 4, 6]
    assert [r["loss"] for r in logged] == pytest.approx([float(r["loss"]) for r in rows], rel=1e-5)
    # Grids at steps 0, 2 and 4, then (the resumed run drawing none at its start) 6.
    grids = [r for r in before + after if r.get("samples/_type") == "image-file"]
    assert [r["step"] for r in grids] == [0, 2, 4, 6] and all(r["samples/width"] > 0 for r in grids)
    assert any((folders[0] / "files" / "media" / "images").glob("samples_*.png"))


def test_the_mode_follows_the_login_and_never_waits_on_a_server(offline, monkeypatch, capfd):
    from dalle.train.logger import MetricsLogger

    monkeypatch.delenv("WANDB_MODE")
    assert not has_wandb_login("https://api.wandb.ai")
    (offline / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert has_wandb_login("https://api.wandb.ai") and not has_wandb_login("https://wandb.example.org")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert has_wandb_login("https://wandb.example.org")
    # With no login at all, the run is offline without asking anyone.
    monkeypatch.delenv("WANDB_API_KEY")
    (offline / "netrc").unlink()
    logger = MetricsLogger(offline / "run", "wandb", config={"lr": 1e-3})
    logger.log(1, {"loss": 2.0})
    logger.close()
    assert "offline (no W&B login found)" in capfd.readouterr().err
    assert (offline / "run" / "metrics.csv").read_text().splitlines() == ["step,loss", "1,2"]


def test_overwrite_starts_a_new_wandb_run_and_a_missing_package_is_one_line(offline, monkeypatch):
    config = tiny_train_config(steps=2, log_format="wandb")
    ids = []
    for overwrite in (False, True):
        trainer = vae_trainer(offline / "run", config, overwrite=overwrite)
        try:
            trainer.fit()
        finally:
            trainer.close()
        [folder] = (offline / "run" / "wandb").glob("offline-run-*")  # the old run's files are gone
        ids.append((offline / "run" / "wandb" / "run-id").read_text().strip())
        assert folder.name.endswith(ids[-1])
    assert ids[0] != ids[1]
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    with pytest.raises(DalleError, match=r"^log_format=wandb needs the wandb package: pip install 'dalle\[wandb\]'$"):
        make_trainer(offline / "other", config)


def test_train_clip_logs_to_wandb_from_the_command_line(offline):
    from dalle.text import TextTokenizer

    images = image_folder(offline / "images")
    TextTokenizer.train([f"image {i}" for i in range(24)], bpe_vocab_size=300,
                        text_length=8).save_pretrained(offline / "tok")
    r = dalle("train-clip", "--data", images, "--tokenizer", offline / "tok", "--out", offline / "clip",
              "--preset", "tiny", "--image-size", 16, "--patch-size", 4, "--steps", 2, "--batch-size", 8,
              "--device", "cpu", "--log-every", 1, "--log-format", "wandb",
              env={"WANDB_MODE": "offline", "WANDB_CONFIG_DIR": str(offline / "wandb-home")})
    assert r.returncode == 0, r.stderr
    [folder] = (offline / "clip" / "wandb").glob("offline-run-*")
    rows, config = history(folder)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert config["model_class"] == "CLIP" and config["tokenizer"] == str(offline / "tok")
