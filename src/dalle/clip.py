"""CLIP, the contrastive text-image model that reranks DALL-E's samples (paper §2.6).

Radford et al. 2021: an image tower and a text tower map into one space where a matched pair has
a high cosine similarity, learned with a symmetric InfoNCE loss at a learned temperature. DALL-E
draws N candidates for a caption and keeps the ones CLIP scores highest.

Image tower: a conv stem turns the image into a grid of tokens, which get learned position
embeddings, a transformer and a mean over the grid. Text tower: the tokenizer's ids behind a
learned summary token (BERT's [CLS]) through a transformer whose attention never looks at pads or
start-of-image, so a caption embeds the same however many pads follow it; the empty caption
embeds as the summary token alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dalle.config import CLIPConfig
from dalle.errors import DalleError
from dalle.pretrained import PretrainedModel, init_transformer_weights


class SelfAttention(nn.Module):
    """Multi-head self-attention; `mask` (B, 1, 1, T) says which keys each query may see."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(),
                                 nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), mask)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """A stack of blocks and a final LayerNorm."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


class ImageEncoder(nn.Module):
    """Conv stem (stride-2 3x3 convs, widths doubling up to `image_width`, then a 1x1 conv),
    grid tokens + positions, transformer, mean over the grid, projection."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        stages = int(math.log2(config.patch_size))
        layers: list[nn.Module] = []
        channels = 3
        for i in range(stages):
            width = max(1, config.image_width >> (stages - 1 - i))
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.GELU()]
            channels = width
        layers.append(nn.Conv2d(channels, config.image_width, 1))
        self.stem = nn.Sequential(*layers)
        self.position = nn.Parameter(torch.randn(config.grid_size**2, config.image_width) * 0.02)
        self.transformer = Transformer(config.image_width, config.image_depth, config.image_heads,
                                       config.mlp_ratio)
        self.proj = nn.Linear(config.image_width, config.embed_dim, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images * 2 - 1).flatten(2).transpose(1, 2) + self.position
        return self.proj(self.transformer(x).mean(1))


class TextEncoder(nn.Module):
    """Summary token + BPE embeddings + positions, transformer with pads masked, projection of the
    summary token."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.bpe_vocab_size = config.bpe_vocab_size
        self.token = nn.Embedding(config.bpe_vocab_size, config.text_width)
        self.position = nn.Embedding(config.text_length + 1, config.text_width)
        self.summary = nn.Parameter(torch.randn(config.text_width) * 0.02)
        self.transformer = Transformer(config.text_width, config.text_depth, config.text_heads,
                                       config.mlp_ratio)
        self.proj = nn.Linear(config.text_width, config.embed_dim, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        real = ids < self.bpe_vocab_size  # pads and start-of-image are the ids above BPE's
        # Masked keys change nothing, so the columns after the batch's last real token are cut.
        length = int(real.any(0).nonzero().max()) + 1 if real.any() else 0
        ids, real = ids[:, :length], real[:, :length]
        x = self.token(ids.masked_fill(~real, 0)) + self.position.weight[: ids.shape[1]]
        x = torch.cat([self.summary.expand(len(ids), 1, -1), x], dim=1)
        keys = torch.cat([real.new_ones(len(ids), 1), real], dim=1)
        return self.proj(self.transformer(x, keys[:, None, None, :])[:, 0])


@dataclass
class CLIPOutput:
    loss: torch.Tensor  # symmetric InfoNCE: mean of the image->text and text->image losses
    logits_per_image: torch.Tensor  # (B, T): scale * cosine of image i and caption j
    logits_per_text: torch.Tensor  # (B, B): the transpose of its first B columns
    image_embeds: torch.Tensor  # (B, E), unit length
    text_embeds: torch.Tensor  # (B, E), unit length, the B matched captions
    logit_scale: torch.Tensor  # the inverse temperature in use


class CLIP(PretrainedModel):
    """Image and text towers into one unit-norm space: `forward` trains, `score` reranks."""

    config_class = CLIPConfig
    config: CLIPConfig

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder(config)
        self.text_encoder = TextEncoder(config)
        self.apply(init_transformer_weights)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init))

    def parallel_units(self) -> list[nn.Module]:
        """Both towers' transformer blocks: what FSDP shards one by one and activation
        checkpointing recomputes (`dalle.train.distributed`)."""
        return [*self.image_encoder.transformer.blocks, *self.text_encoder.transformer.blocks]

    def _check_images(self, images: torch.Tensor) -> None:
        s = self.config.image_size
        if images.ndim != 4 or images.shape[1:] != (3, s, s):
            raise DalleError(f"images must be (batch, 3, {s}, {s}), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise DalleError(f"images must be floats in [0, 1], got {images.dtype}")

    def _check_text(self, text_ids: torch.Tensor) -> None:
        c = self.config
        if text_ids.ndim != 2 or not 1 <= text_ids.shape[1] <= c.text_length + 1:
            raise DalleError(f"text ids must be (batch, at most {c.text_length + 1}), got "
                             f"{tuple(text_ids.shape)}")
        if text_ids.is_floating_point():
            raise DalleError(f"text ids must be integers, got {text_ids.dtype}")
        if text_ids.numel() and (text_ids.min() < 0 or text_ids.max() >= c.text_vocab_size):
            raise DalleError(f"text ids must lie in [0, {c.text_vocab_size}); was this model "
                             f"trained with another tokenizer?")

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) floats in [0, 1] -> (B, embed_dim) unit vectors."""
        self._check_images(images)
        return F.normalize(self.image_encoder(images).float(), dim=-1)

    def encode_text(self, text_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) tokenizer ids, L <= text_length + 1 -> (B, embed_dim) unit vectors."""
        self._check_text(text_ids)
        return F.normalize(self.text_encoder(text_ids).float(), dim=-1)

    def forward(self, images: torch.Tensor, text_ids: torch.Tensor, *,
                positives: torch.Tensor | None = None) -> CLIPOutput:
        """Symmetric InfoNCE: caption i describes image i, for each of the B images.

        Captions beyond the B-th describe no image (hard negatives): they join the image->text
        softmax only. `positives` (B, T) bool marks every image-caption pair that matches, e.g.
        repeats of one caption in a small-vocabulary set, which no model can tell apart; the
        targets spread evenly over them. By default caption i matches image i only.
        """
        n, t = len(images), len(text_ids)
        if t < n:
            raise DalleError(f"{n} images but only {t} captions")
        if positives is None:
            positives = torch.eye(n, t, dtype=torch.bool, device=images.device)
        elif positives.shape != (n, t) or not positives.diagonal().all():
            raise DalleError(f"positives must be a ({n}, {t}) bool matrix with a true diagonal")
        image_embeds, text_embeds = self.encode_image(images), self.encode_text(text_ids)
        scale = self.logit_scale.clamp(max=math.log(self.config.logit_scale_max)).exp()
        logits_per_image = scale * image_embeds @ text_embeds.T
        logits_per_text = logits_per_image[:, :n].T
        image_targets, text_targets = positives.float(), positives[:, :n].T.float()
        loss = (F.cross_entropy(logits_per_image, image_targets / image_targets.sum(1, keepdim=True))
                + F.cross_entropy(logits_per_text, text_targets / text_targets.sum(1, keepdim=True)))
        return CLIPOutput(loss / 2, logits_per_image, logits_per_text, image_embeds,
                          text_embeds[:n], scale)

    def score(self, images: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        """(B,) cosine similarity of each image with its own caption, in [-1, 1].

        To rerank N candidates for one caption, pass its ids repeated N times.
        """
        if len(images) != len(text_ids):
            raise DalleError(f"{len(images)} images but {len(text_ids)} captions")
        return (self.encode_image(images) * self.encode_text(text_ids)).sum(-1)
