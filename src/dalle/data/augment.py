"""Per-sample randomness keyed to the sample, and the paper's random crops (appendix A.2).

Every random choice made for a training sample (BPE dropout, caption drop, crops) comes from
`sample_rng(seed, step, index)`: a function of the sample's key only, so that a resumed run and a
run split over many processes make the same choices as one uninterrupted process.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from dalle.errors import DalleError


def sample_rng(seed: int, step: int, index: int) -> random.Random:
    """The generator for one sample of one step."""
    return random.Random(f"{seed}:{step}:{index}")


def check_max_crop(max_crop: float) -> None:
    if not 0 <= max_crop < 1:
        raise DalleError(f"max_crop must be in [0, 1), got {max_crop}")


def random_crops(images: torch.Tensor, rngs: list[random.Random], max_crop: float) -> torch.Tensor:
    """Each image cropped to a random square of side >= (1 - max_crop) * S, resized back to S.

    No flips: captions say left and right.
    """
    check_max_crop(max_crop)
    size = images.shape[-1]
    out = []
    for image, rng in zip(images, rngs):
        side = size - rng.randint(0, int(max_crop * size))
        x, y = rng.randint(0, size - side), rng.randint(0, size - side)
        crop = image[None, :, y : y + side, x : x + side]
        out.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)
                   if side < size else crop)
    return torch.cat(out)
