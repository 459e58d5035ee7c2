"""Run folders are safe: a finished run is not replaced unasked, two processes never train into
one folder, a resumed run keeps its settings, orphan temporary files go, and SIGINT / SIGTERM
stop a run with a checkpoint from which it continues exactly."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from dalle.data.shapes import write_shapes
from dalle.errors import DalleError
from dalle.train import VAERun, train_vae
from dalle.train.run_folder import LOCK_NAME
from test_cli import dalle, one_line_error


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    write_shapes(root, {"train": 40}, seed=0, image_size=16)
    return root / "train"


def tiny_run(images, out, steps=4, **overrides):
    return VAERun.create(data=images, out=out, preset="tiny", steps=steps, batch_size=8,
                         device="cpu", sample_every=0, log_every=1, **overrides)


def test_a_finished_run_is_replaced_only_when_asked(images, tmp_path):
    run = tiny_run(images, tmp_path / "run")
    train_vae(run, show_progress=False)
    before = (tmp_path / "run" / "metrics.csv").read_text()
    with pytest.raises(DalleError, match="already holds a run .*pass --resume to continue it or "
                                         "--overwrite to start it again"):
        train_vae(run, show_progress=False)
    assert (tmp_path / "run" / "metrics.csv").read_text() == before  # nothing was touched
    train_vae(tiny_run(images, tmp_path / "run", steps=2), overwrite=True, show_progress=False)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 and json.loads((tmp_path / "run" / "config.json").read_text())["train"]["steps"] == 2
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # released at the end
    with pytest.raises(DalleError, match="give one"):
        train_vae(run, resume=True, overwrite=True, show_progress=False)


def test_a_folder_in_use_is_refused_and_a_dead_holder_taken_over(images, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(f"{holder.pid} {socket.gethostname()}\n")
        with pytest.raises(DalleError, match=f"another process \\(pid {holder.pid}\\) is training into"):
            train_vae(tiny_run(images, out), show_progress=False)
        assert not (out / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    train_vae(tiny_run(images, out), show_progress=False)  # its process is gone: the lock is stale
    assert (out / "model" / "model.safetensors").exists()


def test_resuming_with_other_settings_is_refused(images, tmp_path):
    train_vae(tiny_run(images, tmp_path / "run", steps=4, checkpoint_every=2), show_progress=False)
    with pytest.raises(DalleError, match=r"other settings \(steps 4 -> 8\); resume with the same"):
        train_vae(tiny_run(images, tmp_path / "run", steps=8, checkpoint_every=2,
                           tau_steps=4, kl_warmup_steps=2), resume=True, show_progress=False)


def test_orphan_temporary_files_are_removed(images, tmp_path):
    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    orphans = [out / ".checkpoint.pt.x1y2.tmp", out / "model" / ".model.safetensors.z3.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"half a checkpoint")
    keep = out / "notes.txt"
    keep.write_text("mine")
    train_vae(tiny_run(images, out), show_progress=False)
    assert not any(orphan.exists() for orphan in orphans) and keep.read_text() == "mine"


def _train_until_signalled(args, out, signum, after_rows):
    """Start `dalle train-vae ARGS`, send `signum` once metrics.csv has `after_rows` new rows."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from dalle.cli import main; main()", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics, start = out / "metrics.csv", time.time()
    seen = len(metrics.read_text().splitlines()) if metrics.exists() else 1
    while proc.poll() is None and time.time() - start < 120:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= seen + after_rows:
            proc.send_signal(signum)
            break
        time.sleep(0.02)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


@pytest.mark.slow  # 31 s: three training processes; test_finetune interrupts one with SIGINT by default
def test_sigint_then_sigterm_stop_with_a_checkpoint_and_the_run_continues_exactly(images, tmp_path):
    args = ["train-vae", "--data", images, "--preset", "tiny", "--steps", 600, "--batch-size", 8,
            "--device", "cpu", "--sample-every", 0, "--log-every", 1, "--checkpoint-every", 1000]
    whole = dalle(*args, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "cut"
    code, stderr = _train_until_signalled([*args, "--out", out], out, signal.SIGINT, after_rows=20)
    assert code == 130, stderr
    assert "stopped by SIGINT at step" in stderr and "--resume" in stderr
    first = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert 20 <= first < 600
    code, stderr = _train_until_signalled(["train-vae", "--out", out, "--resume"], out, signal.SIGTERM,
                                          after_rows=20)
    assert code == 143, stderr
    assert "stopped by SIGTERM at step" in stderr
    second = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert first < second < 600
    finish = dalle("train-vae", "--out", out, "--resume")
    assert finish.returncode == 0, finish.stderr
    a = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical


def test_cli_run_folder_errors_are_one_line(images, tmp_path):
    args = ["train-vae", "--data", images, "--out", tmp_path / "run", "--preset", "tiny", "--steps", 2,
            "--batch-size", 8, "--device", "cpu", "--sample-every", 0]
    assert dalle(*args).returncode == 0
    one_line_error(dalle(*args), "pass --resume to continue it or --overwrite to start it again")
    assert dalle(*args, "--overwrite").returncode == 0
    one_line_error(dalle("train-vae", "--out", tmp_path / "run", "--resume", "--steps", 3),
                   "other settings (steps 2 -> 3)")


def test_a_set_smaller_than_a_batch_trains_with_a_smaller_batch_and_shards_without_hard_negatives(images, tmp_path):
    """The defaults work on a small set: 40 pairs against CLIP's batch of 64, read from shards."""
    from dalle.data.shards import pack_shards
    from dalle.train.tokenizer import train_tokenizer

    pack_shards(images, tmp_path / "shards", max_samples=16)
    train_tokenizer([images], tmp_path / "tok", bpe_vocab_size=300, text_length=16)
    r = dalle("train-clip", "--data", tmp_path / "shards", "--tokenizer", tmp_path / "tok",
              "--out", tmp_path / "clip", "--preset", "tiny", "--steps", 2, "--device", "cpu")
    assert r.returncode == 0, r.stderr  # shards: the stream's length is unknown, the batch stays
    assert "is a stream of shards, so CLIP trains without them" in r.stderr
    assert json.loads((tmp_path / "clip" / "config.json").read_text())["hard_negatives"] is False
    r = dalle("train-clip", "--data", images, "--tokenizer", tmp_path / "tok", "--out", tmp_path / "clip2",
              "--preset", "tiny", "--steps", 2, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "warning: " in r.stderr and "fewer than one batch of 64: training with batches of 40 (--batch-size)" in r.stderr
    assert json.loads((tmp_path / "clip2" / "config.json").read_text())["train"]["batch_size"] == 40


def test_every_run_draws_its_curves(images, tmp_path):
    from PIL import Image

    from dalle.train.curves import plot_curves

    train_vae(tiny_run(images, tmp_path / "run", steps=6), show_progress=False)
    with Image.open(tmp_path / "run" / "curves.png") as picture:
        assert picture.format == "PNG" and picture.width > 300
    (tmp_path / "empty.csv").write_text("step,loss\n")
    assert plot_curves(tmp_path / "empty.csv") is None


def test_a_checkpoint_holding_code_is_refused_without_torchs_advice(images, tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.remove, (str(tmp_path / "victim"),))

    (tmp_path / "victim").write_text("still here")
    (tmp_path / "run").mkdir()
    torch.save({"step": Payload()}, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(DalleError, match="nothing in it ran") as refused:
        train_vae(tiny_run(images, tmp_path / "run"), resume=True, show_progress=False)
    assert "weights_only" not in str(refused.value) and (tmp_path / "victim").exists()


def test_resuming_nothing_or_a_missing_config_is_one_line(tmp_path):
    one_line_error(dalle("train-prior", "--out", tmp_path / "empty", "--resume"),
                   f"nothing to resume in {tmp_path / 'empty'}: it has no checkpoint.pt")
    one_line_error(dalle("train-vae", "--config", tmp_path / "nope.json", "--out", tmp_path / "x"),
                   f"no run config at {tmp_path / 'nope.json'}")
