"""Training Stage 2, the prior, from pre-tokenised codes with the shared loop (paper §2.2, B.2)."""

from __future__ import annotations

import math
import warnings
from typing import Any, cast

import torch
from PIL import Image
from torch import nn

from dalle.config import PriorConfig, VAEConfig
from dalle.data.augment import sample_rng
from dalle.data.captions import pick_caption
from dalle.data.codes import CodesDataset
from dalle.errors import DalleError
from dalle.prior import Prior
from dalle.sampling import sample_codes
from dalle.text import TextTokenizer
from dalle.train.loop import Trainer
from dalle.train.runs import PriorRun
from dalle.train.vae import unwrap
from dalle.utils import captioned, image_grid
from dalle.vae import DiscreteVAE


class PriorLoss:
    """The loop's loss function for the prior: captions + codes -> (loss, metrics).

    Each sample's caption is one of its variants (`pick_caption`), encoded here with BPE dropout
    (training only) and, with probability `caption_drop`, replaced by the empty caption (all
    pads), which classifier-free guidance uses as its unconditional stream at sampling time.
    """

    def __init__(self, tokenizer: TextTokenizer, seed: int, caption_drop: float = 0.0) -> None:
        if not 0 <= caption_drop < 1:
            raise DalleError(f"caption_drop must be in [0, 1), got {caption_drop}")
        self.tokenizer, self.seed, self.caption_drop = tokenizer, seed, caption_drop

    def encode(self, captions: list[str], indices: torch.Tensor, step: int) -> torch.Tensor:
        rngs = [sample_rng(self.seed, step, i) for i in indices.tolist()]
        captions = [pick_caption(c, rng) for c, rng in zip(captions, rngs)]
        captions = ["" if rng.random() < self.caption_drop else c for c, rng in zip(captions, rngs)]
        return self.tokenizer.encode_batch(captions, rngs)

    def __call__(self, model: nn.Module, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict]:
        codes = batch["codes"]
        text = self.encode(batch.get("variants", batch["caption"]), batch["index"], step).to(codes.device)
        out = model(text, codes)
        return out.loss, {"text_loss": out.text_loss.detach(), "image_loss": out.image_loss.detach()}


@torch.no_grad()
def validation_loss(model: Prior, tokenizer: TextTokenizer, dataset: CodesDataset,
                    batch_size: int = 64, autocast: torch.autocast | None = None) -> dict[str, float]:
    """Mean text and image cross-entropy over a codes set (no dropout, no caption drop)."""
    model.eval()
    device = model.device
    totals = {"text": 0.0, "image": 0.0}
    n = 0
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        text = tokenizer.encode_batch([item["caption"] for item in items]).to(device)
        codes = torch.stack([item["codes"] for item in items]).to(device)
        with autocast or torch.autocast(device.type, enabled=False):
            out = model(text, codes)
        totals["text"] += out.text_loss.item() * len(items)
        totals["image"] += out.image_loss.item() * len(items)
        n += len(items)
    image = totals["image"] / n
    return {"val_text_loss": totals["text"] / n, "val_image_loss": image,
            "val_image_bits": image / math.log(2)}


SAMPLE_CAPTIONS = 4  # captions in a sample grid, spread over the training set
SAMPLES_PER_CAPTION = 3


def sample_batch(tokenizer: TextTokenizer, codes: CodesDataset) -> dict[str, Any]:
    """The fixed captions a run's sample grids show, with their text ids and real codes."""
    picks = [round(i * (len(codes) - 1) / max(1, SAMPLE_CAPTIONS - 1))
             for i in range(min(SAMPLE_CAPTIONS, len(codes)))]
    items = [codes[i] for i in dict.fromkeys(picks)]
    captions = [item["caption"] for item in items]
    return {"caption": captions, "text": tokenizer.encode_batch(captions),
            "codes": torch.stack([item["codes"] for item in items])}


@torch.no_grad()
def sample_grid(prior: Prior, vae: DiscreteVAE, batch: dict[str, Any], seed: int = 0) -> Image.Image:
    """One row per caption, the caption above it: its real image (its codes through the dVAE),
    then SAMPLES_PER_CAPTION images the prior draws for it (same seed at every step, so rows of
    successive grids differ by training only)."""
    generator = torch.Generator(prior.device).manual_seed(seed)
    vae.to(prior.device)
    text = batch["text"].repeat_interleave(SAMPLES_PER_CAPTION, 0)
    drawn = sample_codes(prior, text, generator=generator).view(len(batch["caption"]), SAMPLES_PER_CAPTION, -1)
    grid = prior.config.grid_size
    codes = torch.cat([batch["codes"].view(-1, 1, grid * grid), drawn], 1).view(-1, grid, grid)
    images = vae.decode(codes.to(vae.device)).float()
    rows = [image_grid(images[i : i + 1 + SAMPLES_PER_CAPTION], columns=1 + SAMPLES_PER_CAPTION)
            for i in range(0, len(images), 1 + SAMPLES_PER_CAPTION)]
    return captioned(rows, batch["caption"])


def check_compatible(config: PriorConfig, tokenizer: TextTokenizer, codes: CodesDataset) -> None:
    """Name any mismatch between the prior's config and its tokenizer or codes up front."""
    problems = tokenizer.mismatches(config.text_vocab_size, config.text_length, "the prior")
    if codes.index["codebook_size"] != config.codebook_size:
        problems.append(f"the codes come from a {codes.index['codebook_size']}-code dVAE but the "
                        f"prior expects codebook_size {config.codebook_size}")
    if codes.index["grid"] != config.grid_size:
        problems.append(f"the codes are {codes.index['grid']}x{codes.index['grid']} but the "
                        f"prior expects a {config.grid_size}x{config.grid_size} grid")
    if problems:
        raise DalleError("; ".join(problems))


def train_prior(run: PriorRun, *, resume: bool = False, overwrite: bool = False,
                show_progress: bool = True) -> Prior:
    """Train the prior as `run` says; the result lands in `<run.out>/model` and the run in
    `<run.out>/config.json`."""
    run = run.fitted()
    tokenizer = TextTokenizer.from_pretrained(run.tokenizer)
    dataset = CodesDataset(run.data)
    check_compatible(run.model, tokenizer, dataset)
    run = run.sized_for(len(dataset))
    torch.manual_seed(run.train.seed)
    model = Prior(run.model)
    model.set_attention(run.attention)
    loss = PriorLoss(tokenizer, run.train.seed, run.caption_drop)
    validate = None
    if run.val_data is not None:
        val = CodesDataset(run.val_data)
        check_compatible(run.model, tokenizer, val)
        validate = lambda m, autocast: validation_loss(cast(Prior, unwrap(m)), tokenizer, val, autocast=autocast)  # noqa: E731
    samples: dict[str, Any] = {}
    if run.vae is not None and run.train.sample_every:
        if run.train.fsdp:
            warnings.warn("no sample grids under FSDP: sampling a sharded prior is not supported",
                          stacklevel=2)
        else:
            vae = DiscreteVAE.from_pretrained(run.vae).eval()
            if VAEConfig.from_dict(dataset.index["vae"]) != vae.config:
                raise DalleError(f"the dVAE in {run.vae} did not make the codes in {run.data}; "
                                 "give --vae the one that encoded them")
            samples = {"sample_fn": lambda m, batch: sample_grid(cast(Prior, unwrap(m)), vae, batch),
                       "sample_batch": sample_batch(tokenizer, dataset)}
    # Early stopping (`keep_best`) watches the image tokens' loss: the paper's goal (§2.2, B.2).
    trainer = Trainer(model, dataset, run.train, run.out, loss, validate_fn=validate,
                      best_metric="val_image_loss", **samples,
                      resume=resume, overwrite=overwrite, show_progress=show_progress)
    try:
        if trainer.ctx.is_main:
            run.record()
        return trainer.fit()  # type: ignore[return-value]
    finally:
        trainer.close()
