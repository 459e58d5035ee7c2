import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dalle.data.codes import CodesDataset
from dalle.errors import DalleError
from dalle.text import TextTokenizer
from dalle.train.prior import PriorLoss, check_compatible, train_prior
from dalle.train.runs import PriorRun
from helpers import (
    assert_same_weights,
    one_and_two_processes,
    tiny_prior_config,
    tiny_prior_data,
    tiny_train_config,
)

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prior-data")
    tiny_prior_data(root)
    return root


def run(data: Path, out: Path, steps: int = 6, resume: bool = False, **kwargs):
    config = tiny_train_config(steps=steps, **kwargs)
    return train_prior(PriorRun(data / "codes", out, tokenizer=data / "tokenizer",
                                model=tiny_prior_config(data), train=config, caption_drop=0.3),
                       resume=resume, show_progress=False)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_training_lowers_the_loss_and_logs_validation(data, tmp_path):
    config = tiny_train_config(steps=40, lr=1e-2, warmup_steps=4, log_every=10, eval_every=20,
                               checkpoint_every=40)
    train_prior(PriorRun(data / "codes", tmp_path, tokenizer=data / "tokenizer",
                         val_data=data / "codes", model=tiny_prior_config(data), train=config,
                         caption_drop=0.0), show_progress=False)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    image = [float(r["image_loss"]) for r in rows if r["image_loss"]]
    assert image[-1] < image[0]
    val = [r for r in rows if r.get("val_image_loss")]
    assert [int(r["step"]) for r in val] == [20, 40]
    assert float(val[-1]["val_image_bits"]) == pytest.approx(float(val[-1]["val_image_loss"]) / 0.6931, rel=1e-3)
    assert (tmp_path / "model" / "model.safetensors").exists()


def test_resume_is_bit_identical(data, tmp_path):
    whole = state(run(data, tmp_path / "whole", steps=8, checkpoint_every=4))
    config = tiny_train_config(steps=8, checkpoint_every=4)
    from dalle.prior import Prior
    from dalle.train.loop import Trainer

    torch.manual_seed(config.seed)
    tokenizer = TextTokenizer.from_pretrained(data / "tokenizer")
    trainer = Trainer(Prior(tiny_prior_config(data)), CodesDataset(data / "codes"), config,
                      tmp_path / "cut", PriorLoss(tokenizer, config.seed, 0.3), show_progress=False)
    trainer.fit(until=4)
    trainer.close()
    resumed = state(run(data, tmp_path / "cut", steps=8, checkpoint_every=4, resume=True))
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k


def test_activation_checkpointing_changes_nothing(data, tmp_path):
    plain = state(run(data, tmp_path / "plain", steps=3))
    checkpointed = state(run(data, tmp_path / "ac", steps=3, activation_checkpointing=True))
    assert plain.keys() == checkpointed.keys()
    for k in plain:
        torch.testing.assert_close(checkpointed[k], plain[k], atol=1e-6, rtol=1e-5, msg=k)


def test_caption_drop_and_dropout_are_keyed_to_the_sample(data):
    tokenizer = TextTokenizer.from_pretrained(data / "tokenizer")
    loss = PriorLoss(tokenizer, seed=0, caption_drop=0.5)
    captions = ["a red circle on the left"] * 64
    a = loss.encode(captions, torch.arange(64), step=3)
    b = loss.encode(captions[:32], torch.arange(32), step=3)
    assert torch.equal(a[:32], b)  # how a batch is split does not change a sample's text
    dropped = (a[:, 0] == tokenizer.config.pad_id).float().mean()
    assert 0.3 < dropped < 0.7
    assert not torch.equal(a, loss.encode(captions, torch.arange(64), step=4))


def test_mismatched_tokenizer_or_codes_are_named(data):
    tokenizer = TextTokenizer.from_pretrained(data / "tokenizer")
    codes = CodesDataset(data / "codes")
    check_compatible(tiny_prior_config(data), tokenizer, codes)
    with pytest.raises(ValueError, match="tokenizer has .* ids but the prior expects"):
        check_compatible(tiny_prior_config(data, text_vocab_size=999), tokenizer, codes)
    with pytest.raises(ValueError, match="codes are 4x4 but the prior expects a 8x8 grid"):
        check_compatible(tiny_prior_config(data, grid_size=8), tokenizer, codes)
    with pytest.raises(ValueError, match="32-code dVAE"):
        check_compatible(tiny_prior_config(data, codebook_size=64), tokenizer, codes)


# FSDP takes 12 s (two processes); DDP, run by default, checks the same equality.
@pytest.mark.parametrize("mode", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_two_processes_match_one(data, tmp_path, mode):
    flags = ["--fsdp"] if mode == "fsdp" else []
    one_and_two_processes(HERE / "prior_train.py", [data, tmp_path / "one"],
                          [data, tmp_path / "two", *flags])
    assert_same_weights(tmp_path / "one" / "model", tmp_path / "two" / "model")
    one = load_file(tmp_path / "one" / "model" / "model.safetensors")
    # The checkpoint holds full (unsharded) tensors whatever the parallelism.
    saved = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 4 and saved["model"].keys() == one.keys()
    assert all(saved["model"][k].shape == one[k].shape for k in one)


def test_a_library_call_with_the_small_preset_trains_with_the_papers_adamw(data, tmp_path):
    """train_prior(PriorRun.create(...)) names no optimiser setting, yet the optimiser that ran
    is appendix B.2's: betas (0.9, 0.96), weight decay 4.5e-2, gradient norm clipped at 4."""
    from dalle.train.checkpoint import load_checkpoint

    run = PriorRun.create(data=data / "codes", tokenizer=data / "tokenizer", out=tmp_path,
                          preset="small", steps=1, batch_size=4, device="cpu")
    model = train_prior(run, show_progress=False)
    assert (model.config.dim, model.config.depth, model.config.heads) == (256, 8, 8)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    decayed, not_decayed = state["optimizer"]["param_groups"]
    assert tuple(decayed["betas"]) == (0.9, 0.96) and decayed["weight_decay"] == 4.5e-2
    assert not_decayed["weight_decay"] == 0.0  # biases and gains
    assert state["train_config"]["grad_clip"] == 4.0
    assert "grad_norm" in (tmp_path / "metrics.csv").read_text().splitlines()[0]
    recorded = PriorRun.load(tmp_path / "config.json")
    assert recorded.train.betas == (0.9, 0.96) and recorded.model == model.config


def test_given_its_dvae_the_prior_draws_captioned_sample_grids_without_changing_its_weights(data, tmp_path):
    from PIL import Image

    from dalle.train.prior import SAMPLE_CAPTIONS, SAMPLES_PER_CAPTION

    def train(out, **fields):
        config = tiny_train_config(steps=4, sample_every=2)
        return state(train_prior(PriorRun(data / "codes", out, tokenizer=data / "tokenizer",
                                          model=tiny_prior_config(data), train=config, **fields),
                                 show_progress=False))

    with_samples = train(tmp_path / "samples", vae=str(data / "vae"))
    grids = sorted(p.name for p in (tmp_path / "samples" / "samples").iterdir())
    assert grids == ["step_0000000.png", "step_0000002.png", "step_0000004.png"]
    with Image.open(tmp_path / "samples" / "samples" / grids[-1]) as grid:
        # rows of (real + samples) 16-px images, each under a caption line
        assert grid.height == SAMPLE_CAPTIONS * (14 + 16 + 2 * 2) and grid.width >= (1 + SAMPLES_PER_CAPTION) * 18
    without = train(tmp_path / "plain")
    assert not (tmp_path / "plain" / "samples").exists()
    assert all(torch.equal(with_samples[k], without[k]) for k in without)  # drawing does not touch training

    from dalle.config import VAEConfig
    from dalle.vae import DiscreteVAE

    DiscreteVAE(VAEConfig(**{**VAEConfig.tiny().to_dict(), "hidden": 12})).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="did not make the codes"):
        train(tmp_path / "wrong", vae=str(tmp_path / "other"))


def test_the_attention_backend_is_recorded_and_the_same_model_trains_with_blocks_or_reference(data, tmp_path):
    import json

    from dalle.errors import DalleError

    runs = {backend: train_prior(PriorRun(data / "codes", tmp_path / backend, tokenizer=data / "tokenizer",
                                          model=tiny_prior_config(data), train=tiny_train_config(steps=3),
                                          attention=backend), show_progress=False)
            for backend in ("blocks", "reference")}
    for name, tensor in runs["blocks"].state_dict().items():
        torch.testing.assert_close(tensor, runs["reference"].state_dict()[name], atol=1e-5, rtol=1e-4)
    assert json.loads((tmp_path / "blocks" / "config.json").read_text())["attention"] == "blocks"
    with pytest.raises(DalleError, match="unknown attention backend 'bogus'"):
        PriorRun(data / "codes", tmp_path / "bogus", tokenizer=data / "tokenizer", attention="bogus")



def test_each_sample_draws_one_of_its_caption_variants(data):
    tokenizer = TextTokenizer.from_pretrained(data / "tokenizer")
    loss = PriorLoss(tokenizer, seed=0)
    plain, tagged = "a red circle on the left", "a blue square: big"
    texts = [f"{plain}\n{tagged}"] * 64
    drawn = [tokenizer.decode(row) for row in loss.encode(texts, torch.arange(64), step=3)]
    assert set(drawn) == {plain, tagged}
    assert 16 < drawn.count(plain) < 48
    # keyed to the sample, as caption drop and BPE dropout are
    assert drawn[:32] == [tokenizer.decode(r) for r in loss.encode(texts[:32], torch.arange(32), step=3)]
    # one caption per file draws nothing for it: the same ids as before variants existed
    assert torch.equal(loss.encode([plain] * 8, torch.arange(8), step=5),
                       loss.encode([f"{plain}\n"] * 8, torch.arange(8), step=5))


def keep_best_run(data: Path, out: Path, until: int | None = None, resume: bool = False):
    config = tiny_train_config(steps=24, lr=3e-2, schedule="constant", eval_every=3,
                               checkpoint_every=3, keep_best=True)
    run = PriorRun(data / "codes", out, tokenizer=data / "tokenizer", val_data=data / "val-codes",
                   model=tiny_prior_config(data), train=config, caption_drop=0.0)
    if until is None:
        return train_prior(run, resume=resume, show_progress=False)
    from dalle.prior import Prior
    from dalle.train.loop import Trainer
    from dalle.train.prior import validation_loss

    torch.manual_seed(config.seed)
    tokenizer = TextTokenizer.from_pretrained(data / "tokenizer")
    val = CodesDataset(data / "val-codes")
    trainer = Trainer(Prior(run.fitted().model), CodesDataset(data / "codes"), config, out,
                      PriorLoss(tokenizer, config.seed), best_metric="val_image_loss",
                      validate_fn=lambda m, autocast: validation_loss(m, tokenizer, val, autocast=autocast),
                      show_progress=False)
    trainer.fit(until=until)
    trainer.close()


def test_keep_best_exports_the_lowest_validation_and_survives_a_resume(data, tmp_path):
    # validation on the training codes under each other's captions: a prior that learns the
    # training pairs gets worse at these, so the lowest validation comes before the end
    val = CodesDataset(data / "codes")
    (data / "val-codes").mkdir(exist_ok=True)
    for name in ("codes.bin", "index.json"):
        (data / "val-codes" / name).write_bytes((data / "codes" / name).read_bytes())
    (data / "val-codes" / "captions.jsonl").write_text(
        "".join(json.dumps(c) + "\n" for c in val.captions[1:] + val.captions[:1]))
    keep_best_run(data, tmp_path / "whole")
    rows = [r for r in csv.DictReader((tmp_path / "whole" / "metrics.csv").open()) if r["val_image_loss"]]
    losses = {int(r["step"]): float(r["val_image_loss"]) for r in rows}
    best = json.loads((tmp_path / "whole" / "best" / "best.json").read_text())
    assert best["step"] == min(losses, key=losses.get) and best["metric"] == "val_image_loss"
    assert best["value"] == pytest.approx(min(losses.values()), abs=1e-6)  # metrics.csv rounds
    assert best["step"] < 24  # the last step is not the best here, so model/ is not the last weights
    exported = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    kept = load_file(tmp_path / "whole" / "best" / "model.safetensors")
    assert all(torch.equal(exported[k], kept[k]) for k in kept)
    # cut after the best step, then resumed: the same best is kept
    keep_best_run(data, tmp_path / "cut", until=best["step"] + 3)
    keep_best_run(data, tmp_path / "cut", resume=True)
    assert json.loads((tmp_path / "cut" / "best" / "best.json").read_text()) == best
    resumed = load_file(tmp_path / "cut" / "model" / "model.safetensors")
    assert all(torch.equal(exported[k], resumed[k]) for k in kept)


def test_keep_best_without_validation_data_is_one_line(data, tmp_path):
    with pytest.raises(DalleError, match="keep_best chooses among validations"):
        run(data, tmp_path, keep_best=True)
