import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dalle.train import loop as loop_module
from dalle.train.checkpoint import load_checkpoint, save_checkpoint, trained_seconds
from dalle.train.ema import EMA
from dalle.train.sampler import StepBatchSampler
from dalle.train.schedules import WarmupDecay
from helpers import assert_same_weights, make_trainer, one_and_two_processes, tiny_train_config

HERE = Path(__file__).parent


def full_state(trainer):
    state = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    state |= {f"ema.{k}": v for k, v in trainer.ema.state_dict().items()}
    for i, s in trainer.optimizer.state_dict()["state"].items():
        state |= {f"opt.{i}.{k}": v for k, v in s.items() if isinstance(v, torch.Tensor)}
    return state


def test_resume_is_bit_identical(tmp_path):
    config = tiny_train_config(steps=8)
    straight = make_trainer(tmp_path / "a", config)
    straight.fit()

    first = make_trainer(tmp_path / "b", config)
    first.fit(until=4)
    first.close()
    # Disturb the global RNG as a new process would have it, then resume.
    torch.manual_seed(12345)
    resumed = make_trainer(tmp_path / "b", config, resume=True)
    assert resumed.step == 4
    resumed.fit()

    a, b = full_state(straight), full_state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    exported_a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    exported_b = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert all(torch.equal(exported_a[k], exported_b[k]) for k in exported_a)
    # Metrics of the resumed run continue the first part without duplicate rows.
    steps = [int(line.split(",")[0]) for line in (tmp_path / "b" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [2, 4, 6, 8]


def test_a_resumed_run_counts_the_seconds_its_earlier_attempt_trained(tmp_path):
    config = tiny_train_config(steps=8)
    first = make_trainer(tmp_path, config)
    first.fit(until=4)
    first.close()
    earlier = load_checkpoint(tmp_path / "checkpoint.pt")["trained_seconds"]
    assert earlier > 0
    resumed = make_trainer(tmp_path, config, resume=True)
    assert resumed.earlier_seconds == earlier
    resumed.fit()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["trained_seconds"] > earlier
    # A checkpoint written before runs recorded their time leaves the total unknown.
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    del state["trained_seconds"]
    torch.save(state, tmp_path / "checkpoint.pt")
    assert make_trainer(tmp_path, config, resume=True).trained_seconds() is None


def test_resume_refuses_other_config(tmp_path):
    trainer = make_trainer(tmp_path, tiny_train_config(steps=4))
    trainer.fit(until=2)
    from dalle.config import VAEConfig
    from dalle.train import Trainer
    from dalle.train.vae import VAELoss
    from dalle.vae import DiscreteVAE
    from helpers import RandomImages

    other = DiscreteVAE(VAEConfig(**{**VAEConfig.tiny().to_dict(), "hidden": 12}))
    with pytest.raises(ValueError, match="different model config.*hidden"):
        Trainer(other, RandomImages(), tiny_train_config(steps=4), tmp_path, VAELoss(0), resume=True)


def test_training_improves_reconstruction(tmp_path):
    from dalle.evaluate.vae import evaluate_vae
    from helpers import RandomImages

    dataset = RandomImages(flat=True)
    trainer = make_trainer(tmp_path, tiny_train_config(steps=150, log_every=25, lr=1e-2), dataset=dataset)
    before = evaluate_vae(trainer.model, dataset)["mse"]
    after = evaluate_vae(trainer.fit(), dataset)["mse"]
    assert after < 0.95 * before
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 1 + 150 // 25


def test_ema_warms_up_its_decay():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.999)
    torch.nn.init.ones_(model.weight)
    remaining = 1.0  # the share of the initial weight (0) left in the average of ones
    for step in range(1500):
        ema.update(model, step)
        remaining *= min(0.999, (1 + step) / (10 + step))
    assert ema.shadow.weight.item() == pytest.approx(1 - remaining, abs=1e-5)
    assert remaining < 1e-3  # a fixed 0.999 would leave 0.999 ** 1500 = 22%


def test_sampler_shards_without_duplicates():
    whole = StepBatchSampler(100, 8, seed=3)
    parts = [StepBatchSampler(100, 8, seed=3, rank=r, world_size=2) for r in range(2)]
    it_whole, it_parts = iter(whole), [iter(p) for p in parts]
    for step in range(30):  # crosses epoch boundaries (12 batches per epoch)
        batch = next(it_whole)
        assert batch == whole.global_batch(step)
        assert next(it_parts[0]) + next(it_parts[1]) == batch
    epoch = [i for s in range(12) for i in whole.global_batch(s)]
    assert len(set(epoch)) == len(epoch) == 96
    resumed = iter(StepBatchSampler(100, 8, seed=3, start_step=17))
    assert next(resumed) == whole.global_batch(17)


def test_sampler_errors():
    with pytest.raises(ValueError, match="divisible"):
        StepBatchSampler(100, 9, seed=0, world_size=2)
    with pytest.raises(ValueError, match="fewer than one batch"):
        StepBatchSampler(4, 8, seed=0)


def test_lr_schedule():
    s = WarmupDecay(total_steps=110, warmup_steps=10, kind="cosine", min_ratio=0.1)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1.0) and s(60) == pytest.approx(0.55) and s(110) == pytest.approx(0.1)
    assert WarmupDecay(100, 0, "linear")(50) == pytest.approx(0.5)
    assert WarmupDecay(100, 0, "constant")(99) == 1.0


def test_checkpoint_failure_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_killed_writer_never_corrupts_checkpoint(tmp_path):
    # A writer rewrites an 8 MB checkpoint in a loop; SIGKILL it at random moments.
    script = (
        "import sys, torch\n"
        "from dalle.train.checkpoint import save_checkpoint\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        "    save_checkpoint(sys.argv[1], {'step': i, 'w': torch.full((2_000_000,), float(i))})\n"
    )
    path = tmp_path / "checkpoint.pt"
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", script, str(path)])
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.05 + 0.4 * float(torch.rand(1, generator=generator)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = load_checkpoint(path)
        assert torch.all(state["w"] == state["step"])


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    # The recipe reads a resumed stage's seconds from it first, and names the damage the same way.
    with pytest.raises(ValueError, match="cannot be read: it is damaged"):
        trained_seconds(tmp_path / "checkpoint.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_ddp_two_processes_match_one(tmp_path):
    one_and_two_processes(HERE / "ddp_train.py", [tmp_path / "one"], [tmp_path / "two"])
    assert_same_weights(tmp_path / "one" / "model", tmp_path / "two" / "model")
    # and the weights really moved, so the comparison means something
    start = load_checkpoint(tmp_path / "two" / "checkpoint.pt")["step"]
    assert start == 6


def test_bf16_autocast_training(tmp_path):
    trainer = make_trainer(tmp_path, tiny_train_config(steps=4, bf16=True))
    model = trainer.fit()
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    header, *rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and "nan" not in "".join(rows)


@pytest.mark.parametrize("num_workers, stop", [(0, 4), (2, 3)])
def test_resume_from_shards_is_bit_identical(tmp_path, num_workers, stop):
    from dalle.data.shards import ShardDataset, pack_shards
    from helpers import image_folder

    pack_shards(image_folder(tmp_path / "images", n=24, size=16), tmp_path / "shards", max_samples=3)
    config = tiny_train_config(steps=8, num_workers=num_workers)  # 3 steps an epoch

    def trainer(out, resume=False, config=config):
        return make_trainer(tmp_path / out, config, resume=resume,
                            dataset=ShardDataset(tmp_path / "shards", 16, shuffle_buffer=4))

    straight = trainer("a")
    straight.fit()
    first = trainer("b")
    first.fit(until=stop)  # with 2 workers, an odd step: the worker roles must rotate
    first.close()
    with pytest.raises(ValueError, match="num_workers"):
        trainer("b", resume=True, config=tiny_train_config(steps=8, num_workers=num_workers + 1))
    torch.manual_seed(12345)
    resumed = trainer("b", resume=True)
    assert resumed.step == stop
    resumed.fit()
    a, b = full_state(straight), full_state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_vae_random_crops_are_keyed_to_the_sample():
    from dalle.config import VAEConfig
    from dalle.data.augment import random_crops, sample_rng
    from dalle.train.vae import VAELoss
    from dalle.vae import DiscreteVAE
    from helpers import RandomImages

    images = RandomImages(n=4).images
    a = random_crops(images, [sample_rng(0, 5, i) for i in range(4)], 0.25)
    b = random_crops(images[2:], [sample_rng(0, 5, i) for i in range(2, 4)], 0.25)
    assert a.shape == images.shape and torch.equal(a[2:], b)
    assert not torch.equal(a, images)
    torch.manual_seed(0)
    model = DiscreteVAE(VAEConfig.tiny())
    batch = {"image": images, "index": torch.arange(4)}
    cropped = VAELoss(0, max_crop=0.25)(model, batch, step=5)[0]
    assert torch.equal(cropped, VAELoss(0, max_crop=0.25)(model, batch, step=5)[0])
    assert not torch.equal(cropped, VAELoss(0)(model, batch, step=5)[0])
    with pytest.raises(ValueError, match="max_crop"):
        random_crops(images, [sample_rng(0, 0, 0)] * 4, 1.0)


def test_the_prior_logs_model_tflops_and_mfu_the_vae_only_its_rate(tmp_path):
    import csv

    from torch.utils.data import TensorDataset

    from dalle.config import PriorConfig
    from dalle.prior import Prior
    from dalle.train.loop import Trainer

    torch.manual_seed(0)
    prior = Prior(PriorConfig.tiny())
    c = prior.config
    streams = TensorDataset(torch.randint(0, c.text_vocab_size, (16, c.text_length + 1)),
                            torch.randint(0, c.codebook_size, (16, c.grid_size, c.grid_size)))
    trainer = Trainer(prior, streams, tiny_train_config(steps=4), tmp_path / "prior",
                      lambda model, batch, step: (model(*batch).loss, {}), peak_flops=1e9,
                      show_progress=False)
    trainer.fit()
    trainer.close()
    rows = list(csv.DictReader((tmp_path / "prior" / "metrics.csv").open()))
    assert len(rows) == 2
    for row in rows:
        tokens_per_s = float(row["samples_per_s"]) * prior.sequence_length
        assert float(row["model_tflops"]) == pytest.approx(prior.flops_per_token() * tokens_per_s / 1e12, rel=1e-4)
        assert float(row["mfu"]) == pytest.approx(float(row["model_tflops"]) * 1e12 / 1e9, rel=1e-4)

    make_trainer(tmp_path / "vae", tiny_train_config(steps=2)).fit()
    header = (tmp_path / "vae" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "samples_per_s" in header and "model_tflops" not in header and "mfu" not in header


def test_activation_checkpointing_of_the_vae_groups_changes_nothing(tmp_path):
    plain = make_trainer(tmp_path / "plain", tiny_train_config(steps=3)).fit()
    checkpointed = make_trainer(tmp_path / "ac", tiny_train_config(steps=3, activation_checkpointing=True))
    assert any("CheckpointWrapper" in type(m).__name__ for m in checkpointed.model.modules())
    checkpointed = checkpointed.fit()
    a, b = plain.state_dict(), checkpointed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5, msg=k)


def test_models_name_their_parallel_units_and_others_are_refused():
    from dalle.clip import CLIP
    from dalle.config import CLIPConfig, PriorConfig, VAEConfig
    from dalle.errors import DalleError
    from dalle.prior import Prior
    from dalle.train.distributed import apply_activation_checkpointing
    from dalle.vae import DiscreteVAE

    prior, clip = Prior(PriorConfig.tiny()), CLIP(CLIPConfig.tiny())
    vae = DiscreteVAE(VAEConfig.tiny())
    assert prior.parallel_units() == list(prior.blocks)
    assert len(clip.parallel_units()) == clip.config.image_depth + clip.config.text_depth
    assert len(vae.parallel_units()) == 2 * vae.config.num_groups
    names = list(clip.state_dict())
    apply_activation_checkpointing(clip)
    assert list(clip.state_dict()) == names
    assert all(type(unit).__name__ == "CheckpointWrapper" for unit in clip.parallel_units())
    with pytest.raises(DalleError, match="Linear names no units"):
        apply_activation_checkpointing(torch.nn.Linear(2, 2))


def test_tensorboard_gets_the_scalars_and_the_sample_grids(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dalle.train import VAERun, train_vae
    from helpers import image_folder

    run = VAERun.create(data=image_folder(tmp_path / "images"), out=tmp_path / "run", preset="tiny",
                        steps=4, batch_size=8, device="cpu", log_every=2, sample_every=2,
                        log_format="tensorboard")
    train_vae(run, show_progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "loss" in events.Tags()["scalars"]
    grids = events.Images("samples")
    assert [g.step for g in grids] == sorted(int(p.stem.split("_")[1])
                                             for p in (tmp_path / "run" / "samples").glob("*.png"))
    assert grids and grids[-1].width > 0


def test_a_full_disk_during_a_checkpoint_is_named_and_keeps_the_previous_one(tmp_path, monkeypatch):
    import builtins
    import errno

    import dalle.train.checkpoint as checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    # /dev/full answers every write with ENOSPC, as a full disk does.
    monkeypatch.setattr(checkpoint, "open", lambda _, mode: builtins.open("/dev/full", mode), raising=False)
    with pytest.raises(OSError) as caught:
        save_checkpoint(path, {"step": 2, "w": torch.zeros(100_000)})
    assert caught.value.errno == errno.ENOSPC
    assert str(caught.value).startswith(f"no space left on device for the checkpoint {path}")
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


def test_bf16_on_a_cpu_without_fast_bf16_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(loop_module, "fast_bf16", lambda device: False)
    with pytest.warns(UserWarning, match="no fast bf16"):
        make_trainer(tmp_path / "run", tiny_train_config(bf16=True)).close()
