"""`dalle finetune`: LoRA (peft) and full adapters of a pipeline, their loading, merging and resume."""

import os
import signal
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dalle.adapter import ADAPTER_FILE, LORA_CONFIG, LORA_WEIGHTS, AdapterConfig
from dalle.config import SamplingConfig
from dalle.errors import DalleError
from dalle.finetune import (
    FinetuneConfig,
    Finetuning,
    caption_starts,
    clip_retrieval,
    finetune,
    load_pictures,
    write_captions,
)
from dalle.pipeline import DallePipeline
from dalle.train.loop import Trainer
from dalle.train.signals import TrainingStopped
from test_pipeline import CAPTIONS, tiny_pipeline

NEW = ["a small blue square", "a large green cross", "a small red triangle", "a large white circle"]
QUICK = FinetuneConfig.preset("quick", clip="yes")
TRAINED: dict[str, list] = {}  # each stage's training items in the `adapted` run


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny pipeline on disk whose BPE knows the new captions' words (CAPTIONS share them), its
    prior trained with dropout and sampled with guidance as the bundled ones are."""
    root = tmp_path_factory.mktemp("base")
    pipe = tiny_pipeline(captions=CAPTIONS + NEW, prior_dropout=0.1)
    pipe.sampling = SamplingConfig(top_k=20, guidance_scale=2.0)
    pipe.save_pretrained(root / "pipe")
    return root / "pipe"


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    root = tmp_path_factory.mktemp("new")
    colours = {"blue": (20, 40, 230), "green": (20, 200, 40), "red": (220, 20, 20), "white": (250, 250, 250)}
    for i, caption in enumerate(NEW):
        Image.new("RGB", (64, 64), colours[caption.split()[2]]).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(caption)
    return root


@pytest.fixture(scope="module")
def adapted(base, pictures, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "adapter"
    train = Finetuning._train

    def recorded(self, part, method, model, dataset, *args, **kwargs):
        TRAINED[part] = [dataset[i] for i in range(len(dataset))]
        TRAINED[part + " dropout"] = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        return train(self, part, method, model, dataset, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:  # an untrained prior writes noise: give it captions
        patch.setattr("dalle.finetune.write_captions", lambda prior, tokenizer, count, generator, words: CAPTIONS)
        patch.setattr(Finetuning, "_train", recorded)
        finetune(str(base), pictures, out, QUICK, device="cpu", echo=lambda line: None)
    return out


def test_a_lora_adapter_is_small_files_beside_the_base_naming_it(adapted, base):
    config = AdapterConfig.load(adapted / ADAPTER_FILE)
    assert config == AdapterConfig(base=str(base), prior="lora", clip="full")
    assert {p.name for p in (adapted / "prior").iterdir()} == {LORA_CONFIG, LORA_WEIGHTS}
    weights = load_file(adapted / "prior" / LORA_WEIGHTS)
    assert weights and all("lora_" in name for name in weights)
    assert (adapted / "prior" / LORA_WEIGHTS).stat().st_size < (base / "prior" / "model.safetensors").stat().st_size
    assert {p.name for p in (adapted / "clip").iterdir()} == {"config.json", "model.safetensors"}
    card = (adapted / "README.md").read_text()
    assert "rank 16" in card and "4 pictures" in card and card.startswith("---")


def test_loading_an_adapter_merges_its_trained_weights_into_the_base(adapted, base):
    plain = DallePipeline.from_pretrained(base)
    tuned = DallePipeline.from_pretrained(adapted)
    assert not torch.equal(tuned.clip.logit_scale, plain.clip.logit_scale)  # CLIP fine-tuned whole
    assert tuned.source == adapted and type(tuned.prior) is type(plain.prior)
    # Merged, not wrapped: the same parameter names as the base, and the trained ones differ.
    names = dict(plain.prior.named_parameters())
    changed = [k for k, v in tuned.prior.named_parameters() if not torch.equal(v, names[k])]
    assert set(dict(tuned.prior.named_parameters())) == set(names)
    assert changed and all(k.endswith("weight") and ("qkv" in k or "out" in k or "mlp" in k) for k in changed)
    # The same adapter applied to the base by name gives the same pipeline.
    again = DallePipeline.from_pretrained(base, adapter=adapted)
    assert torch.equal(again("a small blue square", seed=3).codes, tuned("a small blue square", seed=3).codes)


def test_the_adapted_pipeline_samples_without_guidance_and_otherwise_as_its_base(adapted, base):
    assert DallePipeline.from_pretrained(base).sampling == SamplingConfig(top_k=20, guidance_scale=2.0)
    assert DallePipeline.from_pretrained(adapted).sampling == SamplingConfig(top_k=20, guidance_scale=1.0)
    with pytest.raises(DalleError, match="guidance_scale"):
        FinetuneConfig(guidance_scale=0.5)


def test_merge_writes_a_standalone_pipeline_that_draws_the_same(adapted, tmp_path):
    from typer.testing import CliRunner

    from dalle.cli import app

    result = CliRunner().invoke(app, ["merge", str(adapted), "--out", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    merged = tmp_path / "merged"
    assert not (merged / ADAPTER_FILE).exists() and not (merged / "training").exists()
    assert (merged / "prior" / "model.safetensors").is_file()
    standalone = DallePipeline.from_pretrained(merged)
    tuned = DallePipeline.from_pretrained(adapted)
    assert standalone.sampling == tuned.sampling
    assert torch.equal(standalone("a large green cross", seed=1).codes, tuned("a large green cross", seed=1).codes)


def test_running_again_reuses_the_finished_stages_and_other_settings_are_refused(adapted, base, pictures):
    before = (adapted / "prior" / LORA_WEIGHTS).read_bytes()
    lines: list[str] = []
    finetune(str(base), pictures, adapted, QUICK, device="cpu", echo=lines.append)
    assert (adapted / "prior" / LORA_WEIGHTS).read_bytes() == before
    assert (adapted / "training" / "replay" / "index.json").is_file()
    assert not any(line.startswith("replay") for line in lines)  # drawn once, kept
    with pytest.raises(DalleError, match="--overwrite"):
        finetune(str(base), pictures, adapted, FinetuneConfig.preset("quick", rank=4), device="cpu")


def test_an_interrupted_finetune_continues_to_the_same_adapter(base, pictures, adapted, tmp_path, monkeypatch):
    monkeypatch.setattr("dalle.finetune.write_captions", lambda prior, tokenizer, count, generator, words: CAPTIONS)
    step = Trainer.train_step

    def interrupted(self, batch):  # SIGINT during the prior's third step (a checkpoint every 2)
        if self.step == 2 and "prior" in str(self.out_dir):
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(TrainingStopped):
        finetune(str(base), pictures, tmp_path / "a", QUICK, device="cpu", echo=lambda line: None)
    assert not (tmp_path / "a" / ADAPTER_FILE).exists()
    monkeypatch.setattr(Trainer, "train_step", step)
    finetune(str(base), pictures, tmp_path / "a", QUICK, device="cpu", echo=lambda line: None)
    for weights in ("prior/" + LORA_WEIGHTS, "clip/model.safetensors"):
        resumed, straight = load_file(tmp_path / "a" / weights), load_file(adapted / weights)
        assert resumed.keys() == straight.keys()
        assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_full_fine_tuning_writes_whole_parts_and_auto_leaves_a_clip_that_already_ranks(base, pictures, tmp_path, monkeypatch):
    monkeypatch.setattr("dalle.finetune.clip_retrieval", lambda pipe, pictures: 1.0)
    config = FinetuneConfig.preset("quick", method="full", clip="auto", replay=0)
    out = finetune(str(base), pictures, tmp_path / "full", config, device="cpu", echo=lambda line: None)
    assert AdapterConfig.load(out / ADAPTER_FILE) == AdapterConfig(base=str(base), prior="full", clip=None)
    assert {p.name for p in (out / "prior").iterdir()} == {"config.json", "model.safetensors"}
    assert not (out / "clip").exists() and not (out / "training" / "replay").exists()
    tuned = DallePipeline.from_pretrained(out)
    assert torch.equal(tuned.clip.logit_scale, DallePipeline.from_pretrained(base).clip.logit_scale)


def test_the_base_writes_captions_in_its_own_vocabulary(base):
    pipe = DallePipeline.from_pretrained(base)
    captions = write_captions(pipe.prior, pipe.tokenizer, 6, torch.Generator().manual_seed(0))
    assert len(captions) <= 6 and all(isinstance(c, str) and c.strip() for c in captions)
    assert all(not pipe.tokenizer.unknown_characters(c) for c in captions)
    assert all(len(pipe.tokenizer.tokenize(c)) <= pipe.tokenizer.config.text_length for c in captions)


def test_the_prior_is_adapted_without_dropout_and_keeps_its_trained_rate(adapted, base):
    assert TRAINED["prior dropout"] and set(TRAINED["prior dropout"]) == {0.0}
    trained_rate = DallePipeline.from_pretrained(base).prior.config.dropout
    assert trained_rate > 0 and DallePipeline.from_pretrained(adapted).prior.config.dropout == trained_rate
    with pytest.raises(DalleError, match="dropout"):
        FinetuneConfig(dropout=1.0)


def test_every_other_written_caption_starts_from_a_given_word(base):
    tokenizer = DallePipeline.from_pretrained(base).tokenizer
    (circle,), (a,) = tokenizer.tokenize("circle"), tokenizer.tokenize("a")
    assert len(tokenizer.tokenize("square")) > 1  # not one token: never a start
    starts = caption_starts(tokenizer, 9, torch.Generator().manual_seed(0), ["square", "circle", "a"])
    assert set(starts[::2].tolist()) == {circle, a}
    vocabulary = {i for token, i in tokenizer.vocab.items() if token.isalpha() and len(token) > 2}
    assert set(starts[1::2].tolist()) <= vocabulary
    assert caption_starts(tokenizer, 9, torch.Generator().manual_seed(0)).tolist() != starts.tolist()


def test_clip_learns_the_new_pictures_as_they_are_and_as_the_dvae_draws_them(adapted, base, pictures):
    items = TRAINED["clip"]
    new = load_pictures(pictures, 64)
    replayed = len(CAPTIONS)  # what the patched write_captions gives
    assert len(items) == 2 * len(new) + replayed
    assert [item["caption"] for item in items[:2 * len(new)]] == 2 * NEW
    vae = DallePipeline.from_pretrained(base).vae
    with torch.no_grad():
        drawn = vae.decode(vae.encode(torch.stack([p["image"] for p in new])))
    assert all(torch.equal(item["image"], p["image"]) for item, p in zip(items, new))
    assert torch.allclose(torch.stack([item["image"] for item in items[len(new):2 * len(new)]]), drawn, atol=1e-5)


def test_clip_retrieval_counts_pictures_ranked_first_by_their_own_caption(base, pictures):
    pipe = DallePipeline.from_pretrained(base)
    items = load_pictures(pictures, 64)
    assert [item["caption"] for item in items] == NEW
    share = clip_retrieval(pipe, items)
    assert share in {i / 4 for i in range(5)}


def test_captions_the_base_cannot_encode_and_empty_data_are_one_line(base, pictures, tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.new("RGB", (64, 64)).save(odd / "a.png")
    (odd / "a.txt").write_text("ünïcödé ☃")
    with pytest.raises(DalleError, match="never seen"):
        finetune(str(base), odd, tmp_path / "o1", QUICK, device="cpu", echo=lambda line: None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DalleError, match="no readable image-caption pairs"):
        finetune(str(base), tmp_path / "empty", tmp_path / "o2", QUICK, device="cpu", echo=lambda line: None)
    # A wrong base or data path is one line and leaves no run folder behind.
    with pytest.raises(FileNotFoundError, match="no pictures at"):
        finetune(str(base), tmp_path / "absent", tmp_path / "o3", QUICK, device="cpu")
    with pytest.raises(FileNotFoundError):
        finetune(str(tmp_path / "no-pipeline"), pictures, tmp_path / "o4", QUICK, device="cpu")
    assert not (tmp_path / "o3").exists() and not (tmp_path / "o4").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # a folder that is not a fine-tuning run is never deleted
        with pytest.raises(DalleError, match="not a fine-tuning run"):
            finetune(str(base), pictures, tmp_path / "taken", QUICK, device="cpu", overwrite=overwrite)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


@pytest.mark.slow  # 13 s: two processes, each importing torch and peft
def test_the_command_line_fine_tunes_and_generates_from_the_adapter(base, pictures, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "dalle"]
    run = subprocess.run([*cli, "finetune", "--pipeline", str(base), "--data", str(pictures),
                          "--out", str(tmp_path / "ad"), "--preset", "quick", "--device", "cpu"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stdout and (tmp_path / "ad" / ADAPTER_FILE).is_file()
    gen = subprocess.run([*cli, "generate", "a small blue square", "--pipeline", str(tmp_path / "ad"),
                          "--images", "1", "--out", str(tmp_path / "img"), "--device", "cpu"],
                         capture_output=True, text=True, env=env)
    assert gen.returncode == 0, gen.stderr
    assert (tmp_path / "img" / "00.png").is_file()


def test_replayed_pairs_cost_their_divergence_from_the_base_and_new_ones_their_likelihood(base):
    from dalle.adapter import with_lora
    from dalle.finetune import ReplayLoss, with_dropout
    from dalle.train.prior import PriorLoss

    pipe = DallePipeline.from_pretrained(base)
    model = with_lora(with_dropout(pipe.prior, 0.0), rank=4, alpha=4)  # as fine-tuning trains it
    captions = ["a small blue square", "a large red circle"]
    batch = {"codes": torch.randint(0, 32, (2, 4, 4)), "caption": captions, "index": torch.tensor([0, 1])}
    loss = ReplayLoss(pipe.tokenizer, seed=0, caption_drop=0.0, reference=None)
    # LoRA starts as the identity (B = 0): on replayed pairs the model is the base, no divergence.
    replayed, metrics = loss(model, {**batch, "replay": torch.tensor([True, True])}, step=0)
    assert replayed.item() == pytest.approx(0, abs=1e-6) and metrics["replay_kl"].item() == pytest.approx(0, abs=1e-6)
    # On new pictures it is the prior's own loss.
    fitted, _ = loss(model, {**batch, "replay": torch.tensor([False, False])}, step=0)
    plain, _ = PriorLoss(pipe.tokenizer, seed=0)(model, batch, step=0)
    assert fitted.item() == pytest.approx(plain.item(), rel=1e-5) and fitted.item() > 1e-3
    # A new picture whose caption is dropped is distilled instead: the unconditional stays the base's.
    dropping = ReplayLoss(pipe.tokenizer, seed=0, caption_drop=0.99, reference=None)
    assert (dropping.encode(captions, batch["index"], step=0) == pipe.tokenizer.encode("")).all()
    dropped, _ = dropping(model, {**batch, "replay": torch.tensor([False, False])}, step=0)
    assert dropped.item() == pytest.approx(0, abs=1e-6)
    # Once the adapter moves away from the base, replayed pairs cost something.
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    moved, _ = loss(model, {**batch, "replay": torch.tensor([True, True])}, step=0)
    assert moved.item() > 1e-3
