"""Training CLIP, the reranker of paper §2.6, on image-caption data with the shared loop."""

from __future__ import annotations

import dataclasses
import itertools
import random
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sized
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from dalle.clip import CLIP
from dalle.config import CLIPConfig
from dalle.data.augment import random_crops, sample_rng
from dalle.data.captions import caption_variants, pick_caption
from dalle.data.sources import open_images
from dalle.errors import DalleError
from dalle.text import TextTokenizer, clean_caption
from dalle.train.loop import Trainer
from dalle.train.runs import CLIPRun
from dalle.train.vae import unwrap


def same_caption(rows: list[str], columns: list[str], device: torch.device) -> torch.Tensor:
    """(R, C) bool: which pairs of captions are equal after cleaning and lower-casing."""
    keys = [clean_caption(c).lower() for c in columns]
    return torch.tensor([[clean_caption(r).lower() == k for k in keys] for r in rows],
                        dtype=torch.bool, device=device)


class WordSwaps:
    """Hard-negative captions: one word changed, or two words traded places.

    Two words are interchangeable when a caption holding one becomes another caption of the
    corpus with the other ("a red circle" / "a blue circle"); that finds the colours, shapes,
    sizes and left/right of a synthetic set without a word list. A caption with one such word
    replaced no longer describes its image, and neither does one where two interchangeable words
    trade places ("a red circle above a blue square" -> "a blue circle above a red square"): the
    first teaches attributes and word order, the second which object each attribute belongs to,
    both of which contrastive training on random batches misses (NegCLIP, Yuksekgonul et al. 2023).
    """

    def __init__(self, captions: Iterable[str]) -> None:
        slots: dict[tuple[str, ...], set[str]] = defaultdict(set)
        for caption in {clean_caption(c).lower() for c in captions}:
            words = caption.split()
            for i, word in enumerate(words):
                slots[(*words[:i], "", *words[i + 1 :])].add(word)
        alternatives: dict[str, set[str]] = defaultdict(set)
        for group in slots.values():
            for word in group:
                alternatives[word] |= group - {word}
        self.alternatives = {w: sorted(a) for w, a in sorted(alternatives.items()) if a}

    def replace(self, caption: str, rng: random.Random) -> str | None:
        """The caption with one word replaced, or None when no word has an alternative."""
        words = clean_caption(caption).lower().split()
        swappable = [i for i, w in enumerate(words) if w in self.alternatives]
        if not swappable:
            return None
        i = rng.choice(swappable)
        words[i] = rng.choice(self.alternatives[words[i]])
        return " ".join(words)

    def exchange(self, caption: str, rng: random.Random) -> str | None:
        """The caption with two different interchangeable words traded, or None when it has no
        such pair."""
        words = clean_caption(caption).lower().split()
        pairs = [(i, j) for i, a in enumerate(words) for j in range(i + 1, len(words))
                 if words[j] in self.alternatives.get(a, ())]
        if not pairs:
            return None
        i, j = rng.choice(pairs)
        words[i], words[j] = words[j], words[i]
        return " ".join(words)

    def negatives(self, caption: str, rng: random.Random) -> list[str]:
        """A replaced and an exchanged caption, each where the caption allows one."""
        return [n for n in (self.replace(caption, rng), self.exchange(caption, rng)) if n is not None]


class CLIPLoss:
    """The loop's loss function for CLIP: images + captions -> (loss, metrics).

    Each sample's caption is one of its variants (`pick_caption`). Captions get BPE dropout and
    images an optional random crop, all drawn from a generator
    keyed on (seed, step, index) so that resumed and data-parallel runs see the same batches.
    Repeats of a caption within a batch count as matches, not as negatives. With `swaps`, each
    caption also brings its hard negatives (a replaced and an exchanged word).
    """

    def __init__(self, tokenizer: TextTokenizer, seed: int, max_crop: float = 0.0,
                 swaps: WordSwaps | None = None) -> None:
        if not 0 <= max_crop < 1:
            raise DalleError(f"max_crop must be in [0, 1), got {max_crop}")
        self.tokenizer, self.seed, self.max_crop, self.swaps = tokenizer, seed, max_crop, swaps

    def __call__(self, model: nn.Module, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict]:
        images = batch["image"]
        rngs = [sample_rng(self.seed, step, i) for i in batch["index"].tolist()]
        if self.max_crop:
            images = random_crops(images, rngs, self.max_crop)
        captions = [pick_caption(text, rng)
                    for text, rng in zip(batch.get("variants", batch["caption"]), rngs)]
        texts, text_rngs = list(captions), list(rngs)
        if self.swaps is not None:
            for caption, rng in zip(captions, rngs):
                negatives = self.swaps.negatives(caption, rng)
                texts += negatives
                text_rngs += [rng] * len(negatives)
        text = self.tokenizer.encode_batch(texts, text_rngs).to(images.device)
        out = model(images, text, positives=same_caption(captions, texts, images.device))
        return out.loss, {"logit_scale": out.logit_scale.detach()}


def batches(dataset: Dataset, batch_size: int) -> Iterator[list[dict]]:
    """A dataset's items in order, `batch_size` at a time (map-style or one pass of a stream)."""
    items = iter(dataset) if isinstance(dataset, IterableDataset) else (
        dataset[i] for i in range(len(dataset)))  # type: ignore[arg-type]
    while batch := list(itertools.islice(items, batch_size)):
        yield batch


@torch.no_grad()
def validation_metrics(model: CLIP, tokenizer: TextTokenizer, dataset: Dataset, batch_size: int = 64,
                       autocast: torch.autocast | None = None) -> dict[str, float]:
    """Loss, top-1 retrieval accuracy both ways and matched-pair cosine, within batches.

    Retrieval counts as right when the retrieved caption (or the retrieved image's caption)
    equals the true one, since repeated captions cannot be told apart. Batches of `batch_size`
    in dataset order make the numbers comparable between runs.
    """
    model.eval()
    device = model.device
    totals = {"val_loss": 0.0, "val_image_to_text": 0.0, "val_text_to_image": 0.0, "val_cosine": 0.0}
    n = 0
    for items in batches(dataset, batch_size):
        captions = [item["caption"] for item in items]
        images = torch.stack([item["image"] for item in items]).to(device)
        text = tokenizer.encode_batch(captions).to(device)
        same = same_caption(captions, captions, device)
        with autocast or torch.autocast(device.type, enabled=False):
            out = model(images, text, positives=same)
        rows = torch.arange(len(items), device=device)
        totals["val_loss"] += out.loss.item() * len(items)
        totals["val_image_to_text"] += same[rows, out.logits_per_image.argmax(1)].sum().item()
        totals["val_text_to_image"] += same[rows, out.logits_per_text.argmax(1)].sum().item()
        totals["val_cosine"] += (out.image_embeds * out.text_embeds).sum().item()
        n += len(items)
    return {k: v / n for k, v in totals.items()}


def check_compatible(config: CLIPConfig, tokenizer: TextTokenizer) -> None:
    """Name any mismatch between CLIP's config and its tokenizer up front."""
    problems = tokenizer.mismatches(config.text_vocab_size, config.text_length, "CLIP")
    if problems:
        raise DalleError("; ".join(problems))


def train_clip(run: CLIPRun, *, resume: bool = False, overwrite: bool = False,
               show_progress: bool = True) -> CLIP:
    """Train CLIP as `run` says; the result lands in `<run.out>/model` and the run in
    `<run.out>/config.json`. WordSwaps learns the hard negatives' swaps from a folder's captions."""
    run = run.fitted()
    tokenizer = TextTokenizer.from_pretrained(run.tokenizer)
    check_compatible(run.model, tokenizer)
    dataset = open_images(run.data, run.model.image_size, training=True)
    run = run.sized_for(len(dataset) if isinstance(dataset, Sized) else None)
    if run.hard_negatives and not hasattr(dataset, "variants"):
        warnings.warn(f"hard negatives learn word swaps from the captions of an image folder; "
                      f"{run.data} is a stream of shards, so CLIP trains without them", stacklevel=2)
        run = dataclasses.replace(run, hard_negatives=False)
    validate = None
    if run.val_data is not None:
        val = open_images(run.val_data, run.model.image_size)
        validate = lambda m, autocast: validation_metrics(  # noqa: E731
            cast(CLIP, unwrap(m)), tokenizer, val, autocast=autocast)
    torch.manual_seed(run.train.seed)
    model = CLIP(run.model)
    swaps = None
    if run.hard_negatives:
        swaps = WordSwaps(line for text in dataset.variants  # type: ignore[union-attr]
                          for line in caption_variants(text))
    loss = CLIPLoss(tokenizer, run.train.seed, run.max_crop, swaps)
    trainer = Trainer(model, dataset, run.train, run.out, loss, validate_fn=validate, best_metric="val_loss",
                      resume=resume, overwrite=overwrite, show_progress=show_progress)
    try:
        if trainer.ctx.is_main:
            run.record()
        return trainer.fit()  # type: ignore[return-value]
    finally:
        trainer.close()
