import dataclasses
import random

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dalle.clip import CLIP
from dalle.config import CLIPConfig
from dalle.data.folder import ImageCaptionFolder
from dalle.text import TextTokenizer
from dalle.train.clip import (
    CLIPLoss,
    WordSwaps,
    check_compatible,
    random_crops,
    train_clip,
    validation_metrics,
)
from dalle.train.loop import Trainer
from dalle.train.runs import CLIPRun
from helpers import tiny_train_config

COLOURS = {"red": (230, 40, 40), "green": (40, 190, 70), "blue": (40, 80, 230), "white": (240, 240, 240)}


def colour_folder(root, n: int = 32):
    """n 16x16 images of a coloured block on the left or right, captioned accordingly."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        name, side = list(COLOURS)[i % 4], ("left", "right")[(i // 4) % 2]
        image = np.zeros((16, 16, 3), np.uint8)
        top = int(rng.integers(0, 8))
        image[top : top + 8, (0 if side == "left" else 8) : (8 if side == "left" else 16)] = COLOURS[name]
        Image.fromarray(image).save(root / f"{i:03d}.png")
        (root / f"{i:03d}.txt").write_text(f"a {name} block on the {side}")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip-data")
    colour_folder(root / "images")
    captions = [f"a {c} block on the {s}" for c in COLOURS for s in ("left", "right")]
    TextTokenizer.train(captions, bpe_vocab_size=300, text_length=24).save_pretrained(root / "tokenizer")
    return root


def config_for(tokenizer: TextTokenizer, **kwargs) -> CLIPConfig:
    t = tokenizer.config
    return dataclasses.replace(CLIPConfig.tiny(), text_vocab_size=t.text_vocab_size,
                               text_length=t.text_length, **kwargs)


def random_batch(config: CLIPConfig, n: int = 4):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, config.image_size, config.image_size, generator=g)
    lengths = torch.tensor([1, 3, config.text_length, 0][:n])
    text = torch.randint(0, config.bpe_vocab_size, (n, config.text_length + 1), generator=g)
    positions = torch.arange(config.text_length + 1)
    pads = config.bpe_vocab_size + positions.expand(n, -1)
    text = torch.where(positions < lengths[:, None], text, pads)
    return images, text


def infonce(logits: torch.Tensor) -> torch.Tensor:
    """The loss written out: -log softmax of the diagonal, averaged over rows, then directions."""
    rows = -(logits.diagonal() - logits.logsumexp(1)).mean()
    columns = -(logits.diagonal() - logits.logsumexp(0)).mean()
    return (rows + columns) / 2


def test_shapes_normalisation_and_hand_computed_loss():
    torch.manual_seed(0)
    model = CLIP(CLIPConfig.tiny())
    images, text = random_batch(model.config)
    out = model(images, text)
    assert out.image_embeds.shape == out.text_embeds.shape == (4, model.config.embed_dim)
    assert torch.allclose(out.image_embeds.norm(dim=-1), torch.ones(4))
    assert torch.allclose(out.text_embeds.norm(dim=-1), torch.ones(4))
    assert torch.allclose(model.encode_image(images), out.image_embeds)
    assert torch.allclose(model.encode_text(text), out.text_embeds)
    logits = (1 / 0.07) * out.image_embeds @ out.text_embeds.T
    assert torch.allclose(out.logits_per_image, logits, atol=1e-5)
    assert torch.equal(out.logits_per_text, out.logits_per_image.T)
    assert torch.allclose(out.loss, infonce(logits), atol=1e-6)
    # Swapping the roles of images and captions leaves the loss unchanged.
    assert torch.allclose(infonce(logits.T), out.loss, atol=1e-6)


def test_repeated_captions_and_hard_negatives_enter_the_targets():
    torch.manual_seed(0)
    model = CLIP(CLIPConfig.tiny())
    images, text = random_batch(model.config)
    text[2] = text[1]  # images 1 and 2 share a caption
    negatives = text[[3, 0]]
    positives = torch.eye(4, 6, dtype=torch.bool)
    positives[1, 2] = positives[2, 1] = True
    out = model(images, torch.cat([text, negatives]), positives=positives)
    assert out.logits_per_image.shape == (4, 6) and out.logits_per_text.shape == (4, 4)
    logp_image = out.logits_per_image.log_softmax(1)
    logp_text = out.logits_per_text.log_softmax(1)
    image_loss = -torch.stack([logp_image[i, positives[i]].mean() for i in range(4)]).mean()
    text_loss = -torch.stack([logp_text[i, positives[:, i]].mean() for i in range(4)]).mean()
    assert torch.allclose(out.loss, (image_loss + text_loss) / 2, atol=1e-6)


def test_logit_scale_is_clamped():
    model = CLIP(CLIPConfig.tiny())
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert torch.allclose(model(*random_batch(model.config)).logit_scale, torch.tensor(100.0))


def test_score_is_the_diagonal_of_the_similarity_matrix():
    torch.manual_seed(0)
    model = CLIP(CLIPConfig.tiny()).eval()
    images, text = random_batch(model.config)
    similarity = model.encode_image(images) @ model.encode_text(text).T
    assert torch.allclose(model.score(images, text), similarity.diagonal(), atol=1e-6)
    # Reranking: one caption repeated against N candidates.
    repeated = model.score(images, text[:1].expand(4, -1))
    assert torch.allclose(repeated, similarity[:, 0], atol=1e-6)


def test_caption_embedding_ignores_pads_and_start_of_image():
    torch.manual_seed(0)
    model = CLIP(CLIPConfig.tiny()).eval()
    _, text = random_batch(model.config)
    full = model.encode_text(text)
    # Alone (so no longer caption keeps pad columns) and with pads and start-of-image cut off.
    for i, length in enumerate([1, 3, model.config.text_length]):
        assert torch.allclose(model.encode_text(text[i : i + 1]), full[i : i + 1], atol=1e-6)
        assert torch.allclose(model.encode_text(text[i : i + 1, :length]), full[i : i + 1], atol=1e-6)
    # The empty caption (all pads) is the summary token alone; a pad beyond it changes nothing.
    assert torch.allclose(model.encode_text(text[3:, :1]), full[3:], atol=1e-6)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = CLIP(CLIPConfig.tiny()).eval()
    images, text = random_batch(model.config)
    model.save_pretrained(tmp_path)
    loaded = CLIP.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    assert torch.equal(loaded.score(images, text), model.score(images, text))


def test_clear_errors():
    model = CLIP(CLIPConfig.tiny())
    images, text = random_batch(model.config)
    with pytest.raises(ValueError, match=r"images must be \(batch, 3, 16, 16\)"):
        model.encode_image(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="floats"):
        model.encode_image((images * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"text ids must lie in \[0, 40\)"):
        model.encode_text(torch.full((1, 7), 40))
    with pytest.raises(ValueError, match="at most 7"):
        model.encode_text(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="4 images but only 3 captions"):
        model(images, text[:3])
    with pytest.raises(ValueError, match="true diagonal"):
        model(images, text, positives=torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="patch_size"):
        CLIPConfig(image_size=64, patch_size=6)
    with pytest.raises(ValueError, match="leaves no BPE ids"):
        CLIPConfig(text_vocab_size=10, text_length=9)


def test_check_compatible_names_the_mismatch(data):
    tokenizer = TextTokenizer.from_pretrained(data / "tokenizer")
    check_compatible(config_for(tokenizer), tokenizer)
    with pytest.raises(ValueError, match=f"tokenizer has {tokenizer.config.text_vocab_size} ids"):
        check_compatible(CLIPConfig.tiny(), tokenizer)
    with pytest.raises(ValueError, match="ids but CLIP expects text_vocab_size 40.*text length is 24"):
        check_compatible(CLIPConfig.tiny(), tokenizer)


def test_word_swaps_replace_one_word_or_trade_two():
    swaps = WordSwaps(["a red circle above a blue square", "a blue circle above a blue square",
                       "a red circle below a blue square", "a red square", "a red circle"])
    assert swaps.alternatives == {"red": ["blue"], "blue": ["red"], "above": ["below"],
                                  "below": ["above"], "circle": ["square"], "square": ["circle"]}
    caption = "A red circle above a blue square"
    replaced = {swaps.replace(caption, random.Random(i)) for i in range(50)}
    assert replaced == {"a blue circle above a blue square", "a red circle below a blue square",
                        "a red square above a blue square", "a red circle above a red square",
                        "a red circle above a blue circle"}
    # Trading binds each attribute to the other object; above/below appear once, so never trade.
    exchanged = {swaps.exchange(caption, random.Random(i)) for i in range(50)}
    assert exchanged == {"a blue circle above a red square", "a red square above a blue circle"}
    assert swaps.negatives(caption, random.Random(0))[1] in exchanged
    assert swaps.exchange("a red circle above a red square", random.Random(0)) == \
        "a red square above a red circle"
    assert swaps.exchange("a red circle", random.Random(0)) is None
    assert swaps.negatives("a red circle", random.Random(0)) in (["a blue circle"], ["a red square"])
    assert swaps.replace("a green cone", random.Random(0)) is None
    assert swaps.negatives("a green cone", random.Random(0)) == []


def test_random_crops_are_keyed_and_keep_the_size():
    images = torch.rand(3, 3, 16, 16)
    a = random_crops(images, [random.Random(i) for i in range(3)], 0.25)
    b = random_crops(images, [random.Random(i) for i in range(3)], 0.25)
    assert a.shape == images.shape and torch.equal(a, b)
    assert not torch.equal(a, images)


def test_training_learns_colour_and_side(data, tmp_path):
    tokenizer = TextTokenizer.from_pretrained(data / "tokenizer")
    images = ImageCaptionFolder(data / "images", 16)
    torch.manual_seed(0)
    before = validation_metrics(CLIP(config_for(tokenizer)), tokenizer, images)
    config = tiny_train_config(steps=120, batch_size=16, lr=3e-3, warmup_steps=10, log_every=40,
                               checkpoint_every=120, eval_every=60)
    model = train_clip(CLIPRun(data / "images", tmp_path, tokenizer=data / "tokenizer",
                               val_data=data / "images", model=config_for(tokenizer), train=config,
                               max_crop=0.0, hard_negatives=True), show_progress=False)
    after = validation_metrics(model, tokenizer, images)
    assert after["val_loss"] < before["val_loss"] - 1.0
    # 8 captions, 4 images each: chance is 1/8.
    assert after["val_image_to_text"] > 0.6 and after["val_text_to_image"] > 0.6
    assert after["val_cosine"] > before["val_cosine"]
    header, *rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert "val_image_to_text" in header and len(rows) == 3 + 2  # logged every 40, validated every 60
    assert CLIP.from_pretrained(tmp_path / "model").config == model.config


def test_resume_is_exact(data, tmp_path):
    tokenizer = TextTokenizer.from_pretrained(data / "tokenizer")
    config = tiny_train_config(steps=8, checkpoint_every=4)

    def run(out, resume=False):
        return train_clip(CLIPRun(data / "images", out, tokenizer=data / "tokenizer",
                                  model=config_for(tokenizer), train=config, max_crop=0.2,
                                  hard_negatives=True), resume=resume, show_progress=False)

    whole = run(tmp_path / "whole").state_dict()
    torch.manual_seed(config.seed)
    images = ImageCaptionFolder(data / "images", 16)
    loss = CLIPLoss(tokenizer, config.seed, 0.2, WordSwaps(images.captions))
    trainer = Trainer(CLIP(config_for(tokenizer)), images, config, tmp_path / "cut", loss,
                      show_progress=False)
    trainer.fit(until=4)
    trainer.close()
    torch.manual_seed(12345)
    resumed = run(tmp_path / "cut", resume=True).state_dict()
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k
    exported = load_file(tmp_path / "cut" / "model" / "model.safetensors")
    assert all(torch.equal(exported[k], whole[k]) for k in whole)


def test_each_sample_trains_on_one_of_its_caption_variants(data):
    tokenizer = TextTokenizer.from_pretrained(data / "tokenizer")
    seen: list[str] = []

    class Recording(CLIP):
        def forward(self, images, text, positives=None):
            seen.extend(tokenizer.decode(row) for row in text)
            return super().forward(images, text, positives=positives)

    images = torch.rand(16, 3, 16, 16)
    batch = {"image": images, "caption": ["a red block on the left"] * 16, "index": torch.arange(16),
             "variants": ["a red block on the left\na red block"] * 16}
    CLIPLoss(tokenizer, seed=0)(Recording(config_for(tokenizer)), batch, step=0)
    assert set(seen) == {"a red block on the left", "a red block"}
