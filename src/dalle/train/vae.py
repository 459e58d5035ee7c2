"""Training Stage 1, the dVAE, with the shared loop (paper §2.1, appendix A.2)."""

from __future__ import annotations

from collections.abc import Sized
from typing import Any, cast

import torch
from PIL import Image
from torch import nn

from dalle.config import VAEConfig
from dalle.data.augment import random_crops, sample_rng
from dalle.data.sources import first_images, open_images
from dalle.train.loop import Trainer
from dalle.train.runs import VAERun
from dalle.utils import image_grid
from dalle.vae import DiscreteVAE


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


def keyed_gumbel_noise(shape: tuple[int, ...], indices: torch.Tensor, step: int, seed: int,
                       device: torch.device) -> torch.Tensor:
    """Gumbel(0, 1) noise for each sample, a function of (seed, step, dataset index) only.

    Keying the noise to the sample rather than to a process's RNG makes a run independent of how
    the batch is split: one process and N data-parallel processes draw identical noise.
    """
    noise = torch.empty((len(indices), *shape), device=device)
    generator = torch.Generator(device=device)
    for row, index in zip(noise, indices.tolist()):
        generator.manual_seed(((seed * 1_000_003 + step) * 1_000_003 + index) % (2**63))
        row.exponential_(generator=generator)
    return -noise.log()


class VAELoss:
    """The loop's loss function for the dVAE: images -> (loss, metrics).

    `max_crop` > 0 trains on random square crops (appendix A.2), keyed to the sample like the noise.
    """

    def __init__(self, seed: int, max_crop: float = 0.0) -> None:
        self.seed, self.max_crop = seed, max_crop

    def __call__(self, model: nn.Module, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict]:
        images = batch["image"]
        if self.max_crop > 0:
            rngs = [sample_rng(self.seed, step, i) for i in batch["index"].tolist()]
            images = random_crops(images, rngs, self.max_crop)
        # channels_last lets oneDNN / cuDNN pick their fastest convolution kernels.
        images = images.contiguous(memory_format=torch.channels_last)
        config = cast(DiscreteVAE, unwrap(model)).config
        grid = (config.codebook_size, images.shape[2] // config.downsample, images.shape[3] // config.downsample)
        noise = keyed_gumbel_noise(grid, batch["index"], step, self.seed, images.device)
        out = model(images, step=step, gumbel_noise=noise)
        mse = (out.reconstruction - images.float()).pow(2).mean()
        return out.loss, {"nll": out.nll, "kl": out.kl, "tau": out.tau,
                          "kl_weight": out.kl_weight, "relaxed_mse": mse.detach()}


@torch.no_grad()
def reconstruction_grid(model: DiscreteVAE, images: torch.Tensor, columns: int = 8) -> Image.Image:
    """Originals and their reconstructions through argmax codes, side by side in pairs."""
    recon = model.decode(model.encode(images.float()))
    pairs = torch.stack([images.float(), recon.to(images.device).float()], dim=1).flatten(0, 1)
    return image_grid(pairs, columns=2 * columns)


def new_vae(config: VAEConfig) -> DiscreteVAE:
    """A fresh dVAE laid out as training runs it: channels_last, as VAELoss gives its images."""
    model = DiscreteVAE(config)
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it


def train_vae(run: VAERun, *, resume: bool = False, overwrite: bool = False,
              show_progress: bool = True) -> DiscreteVAE:
    """Train a dVAE as `run` says; the result lands in `<run.out>/model` and the run in
    `<run.out>/config.json`."""
    dataset = open_images(run.data, run.model.image_size, training=True)
    run = run.sized_for(len(dataset) if isinstance(dataset, Sized) else None)
    torch.manual_seed(run.train.seed)
    model = new_vae(run.model)
    preview = first_images(dataset, 16)
    trainer = Trainer(model, dataset, run.train, run.out, VAELoss(run.train.seed, run.max_crop),
                      sample_fn=lambda m, images: reconstruction_grid(cast(DiscreteVAE, m), images),
                      sample_batch=preview,
                      resume=resume, overwrite=overwrite, show_progress=show_progress)
    try:
        if trainer.ctx.is_main:
            run.record()
        return trainer.fit()  # type: ignore[return-value]
    finally:
        trainer.close()
