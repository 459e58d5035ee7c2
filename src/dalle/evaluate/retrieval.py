"""CLIP score and CLIP R-precision of generated images against their captions (docs/design.md,
"Evaluation"; the CLIP reranker of paper §2.6 used as a judge).

Both take any scorer with `encode_image(images) -> (N, E)` and `encode_text(text_ids) -> (N, E)`;
embeddings are L2-normalised here again, so cosines are exact whatever the scorer returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from dalle.errors import DalleError


class ImageTextScorer(Protocol):
    """A joint image-text embedding, such as our CLIP: one (N, E) embedding per image or caption."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, text_ids: torch.Tensor) -> torch.Tensor: ...


def _device(model: ImageTextScorer) -> torch.device | None:
    if isinstance(model, nn.Module):
        return next(model.parameters(), torch.empty(0)).device
    return None


@torch.no_grad()
def _encode(encode: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, batch_size: int,
            device: torch.device | None) -> torch.Tensor:
    outputs = [encode(batch if device is None else batch.to(device)) for batch in inputs.split(batch_size)]
    return F.normalize(torch.cat(outputs).float(), dim=-1).cpu()


def _check_pairs(images: torch.Tensor, text_ids: torch.Tensor) -> None:
    if text_ids.ndim != 2:
        raise DalleError(f"text_ids must be (N, T) token ids, got shape {tuple(text_ids.shape)}")
    if len(images) != len(text_ids):
        raise DalleError(f"{len(images)} images but {len(text_ids)} captions; they must pair up")
    if len(images) == 0:
        raise DalleError("no images to score")


def clip_score(model: ImageTextScorer, images: torch.Tensor, text_ids: torch.Tensor,
               batch_size: int = 64) -> float:
    """Mean over image-caption pairs of max(100 * cos(image, caption), 0).

    The usual definition (as in torchmetrics; Hessel et al. 2021's CLIPScore scales by 2.5
    instead of 100): 0 for unrelated pairs, at most 100.
    """
    _check_pairs(images, text_ids)
    device = _device(model)
    image_emb = _encode(model.encode_image, images, batch_size, device)
    text_emb = _encode(model.encode_text, text_ids, batch_size, device)
    return float((100 * (image_emb * text_emb).sum(-1)).clamp_min(0).mean())


def r_precision(model: ImageTextScorer, images: torch.Tensor, text_ids: torch.Tensor, r: int = 100,
                distractor_text_ids: torch.Tensor | None = None, seed: int = 0,
                batch_size: int = 64) -> float:
    """CLIP R-precision: how often an image's own caption outranks R - 1 random other captions.

    Protocol (Xu et al. 2018's R-precision with CLIP as the judge, as in Park et al. 2021): for each
    image i, draw R - 1 distractors without replacement from the distinct captions of
    `distractor_text_ids` (default: the captions `text_ids` of the set itself) whose token ids differ
    from caption i; the image counts as retrieved when the cosine to its caption is strictly greater
    than to every distractor (ties count against it). Returns the fraction retrieved, which is the
    top-1 accuracy among R candidates; chance is 1 / R. Distractors are seeded by `seed`.
    """
    _check_pairs(images, text_ids)
    pool = text_ids if distractor_text_ids is None else distractor_text_ids
    if pool.ndim != 2 or pool.shape[1] != text_ids.shape[1]:
        raise DalleError(f"distractor_text_ids must be (M, {text_ids.shape[1]}) token ids like "
                         f"text_ids, got shape {tuple(pool.shape)}")
    if r < 2:
        raise DalleError(f"r must be at least 2 (the caption and one distractor), got {r}")
    # Every distinct caption is encoded once; captions and pool entries become indices into them.
    captions, inverse = torch.unique(torch.cat([text_ids.cpu(), pool.cpu()]), dim=0, return_inverse=True)
    true_index = inverse[: len(text_ids)]
    pool_index = inverse[len(text_ids):].unique()  # sorted
    in_pool = torch.isin(true_index, pool_index)
    fewest_others = len(pool_index) - int(in_pool.any())
    if fewest_others < r - 1:
        raise DalleError(f"r = {r} needs {r - 1} distinct other captions as distractors but there are "
                         f"only {fewest_others}; pass a smaller r or more distractor_text_ids")

    generator = torch.Generator().manual_seed(seed)
    distractors = torch.empty(len(text_ids), r - 1, dtype=torch.long)
    for i, (caption, present) in enumerate(zip(true_index.tolist(), in_pool.tolist())):
        # Draw among the pool without caption i: positions at or after its own shift up by one.
        picks = torch.randperm(len(pool_index) - present, generator=generator)[: r - 1]
        if present:
            picks += picks >= torch.searchsorted(pool_index, caption)
        distractors[i] = pool_index[picks]

    device = _device(model)
    image_emb = _encode(model.encode_image, images, batch_size, device)
    caption_emb = _encode(model.encode_text, captions, batch_size, device)
    retrieved = 0
    for start in range(0, len(image_emb), batch_size):
        rows = slice(start, start + batch_size)
        cosine = image_emb[rows] @ caption_emb.T
        own = cosine.gather(1, true_index[rows, None])
        retrieved += int((own > cosine.gather(1, distractors[rows])).all(1).sum())
    return retrieved / len(image_emb)


def picture_retrieval(model: ImageTextScorer, generated: torch.Tensor, real: torch.Tensor,
                      captions: list[str], batch_size: int = 64) -> float:
    """How often a generated image's nearest real picture is one of its own caption's.

    Image i was drawn for `captions[i]`, and real picture j shows `captions[j]`; nearness is the
    cosine of the scorer's image embeddings. Where R-precision asks whether the image matches its
    words, this asks whether it looks like the picture it was meant to be, among all the others
    (chance: the share of pictures with that caption, 1 / N for distinct captions).
    """
    if not (len(generated) == len(real) == len(captions)) or not len(real):
        raise DalleError(f"{len(generated)} generated images, {len(real)} real pictures and "
                         f"{len(captions)} captions: they must pair up, and not be empty")
    device = _device(model)
    nearest = (_encode(model.encode_image, generated, batch_size, device)
               @ _encode(model.encode_image, real, batch_size, device).T).argmax(1).tolist()
    return sum(captions[j] == caption for j, caption in zip(nearest, captions)) / len(captions)
