"""dVAE metrics: reconstruction PSNR / MSE through argmax codes, and codebook usage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from dalle.errors import DalleError
from dalle.utils import atomic_write, to_pil
from dalle.vae import DiscreteVAE


@torch.no_grad()
def evaluate_vae(model: DiscreteVAE, dataset: Dataset, batch_size: int = 64,
                 shapes: bool = False) -> dict[str, float]:
    """Reconstruct every image of `dataset` through its codes and measure the result.

    Returns psnr (mean over images, dB, pixels in [0, 1]), mse, perplexity of the code histogram
    (exp of its entropy; K means every code equally used), the fraction of the K codes used, and
    with `shapes=True` the fraction of reconstructions whose docs/shapes.md parse matches the caption.
    """
    from dalle.evaluate.shapes import score_image

    model.eval()
    device = model.device
    counts = torch.zeros(model.config.codebook_size, dtype=torch.float64)
    psnrs, squared_error, n_values, matches = [], 0.0, 0, 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        images = batch["image"].to(device)
        codes = model.encode(images)
        recon = model.decode(codes)
        counts += torch.bincount(codes.flatten().cpu(), minlength=counts.numel()).double()
        err = (recon - images).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        psnrs += (10 * torch.log10(1 / err)).tolist()
        squared_error += float(err.sum()) * images[0].numel()
        n_values += images.numel()
        if shapes:
            matches += sum(score_image(im, cap).full for im, cap in zip(to_pil(recon), batch["caption"]))
    p = counts / counts.sum()
    entropy = -float((p[p > 0] * p[p > 0].log()).sum())
    metrics = {"psnr": sum(psnrs) / len(psnrs), "mse": squared_error / n_values,
               "perplexity": math.exp(entropy), "codes_used": float((counts > 0).float().mean()),
               "n": float(len(psnrs))}
    if shapes:
        metrics["shapes_parse"] = matches / len(psnrs)
    return metrics


def evaluate_vae_folder(vae: str | Path, data: str | Path, *, json_out: str | Path | None = None,
                        shapes: bool | None = None, batch_size: int = 64,
                        device: str = "auto") -> dict[str, float]:
    """`evaluate_vae` of the dVAE saved in `vae` on an image-caption folder, written to `json_out`
    when given. `shapes=None` parses the reconstructions when every caption is a shapes caption."""
    from dalle.data.folder import ImageCaptionFolder
    from dalle.evaluate.shapes import parse_caption

    model = DiscreteVAE.from_pretrained(vae, device=device).eval()
    dataset = ImageCaptionFolder(data, model.config.image_size)
    if shapes is None:
        try:
            for caption in dataset.captions:
                parse_caption(caption)
            shapes = True
        except DalleError:
            shapes = False
    metrics = evaluate_vae(model, dataset, batch_size=batch_size, shapes=shapes)
    if json_out is not None:
        atomic_write(json_out, (json.dumps(metrics, indent=2) + "\n").encode())
    return metrics
