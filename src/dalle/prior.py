"""Stage 2: the prior, a decoder-only sparse transformer over text then image tokens (paper §2.2, B).

One stream per caption–image pair:

    position   0 .. L-1             L      L+1 .. L+N-1
    token      text ids + pads      SOI    image codes 0 .. N-2

`L` is the text length (each empty position holds its own pad id, §2.2), SOI the start-of-image id
of the tokenizer, N = grid^2. Position L + p is image cell p of the attention layouts: it predicts
code p and gets the row and column embeddings of cell p. Text gets learned positional embeddings.
Text and image logits come from separate heads over their own vocabularies, and the loss is the
cross-entropy of each normalised by its own token count, weighted 1/8 and 7/8 (paper §2.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from dalle.attention import LayerCache, attention_pairs, layer_layouts, reference_attention, sparse_attention
from dalle.config import PriorConfig
from dalle.errors import DalleError
from dalle.flex_attention import flex_attention_layout, flex_preferred
from dalle.pretrained import PretrainedModel, init_transformer_weights


class Attention(nn.Module):
    """Multi-head self-attention over the stream with one of the paper's layouts.

    `backend` says which function computes the whole stream's layout (the sampling cache is
    the same for all): ``blocks`` is `sparse_attention`, ``flex`` is `flex_attention_layout`,
    ``reference`` the dense mask of `reference_attention` (tests), and ``auto`` (the default) is
    ``flex`` on CUDA (heads of 16 or more, `flex_preferred`) and ``blocks`` elsewhere: on CPU
    FlexAttention has no backward.
    """

    BACKENDS = ("auto", "blocks", "flex", "reference")

    def __init__(self, config: PriorConfig, layout: str) -> None:
        super().__init__()
        self.config, self.layout = config, layout
        inner = config.heads * config.head_dim
        self.qkv = nn.Linear(config.dim, 3 * inner)
        self.out = nn.Linear(inner, config.dim)
        self.backend = "auto"

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None,
                position: int | torch.Tensor | None = None) -> torch.Tensor:
        """The whole stream; or with `cache`, its prefix (text + start-of-image) when `position`
        is None, else the one image position `position`."""
        c = self.config
        q, k, v = self.qkv(x).unflatten(-1, (3, c.heads, c.head_dim)).permute(2, 0, 3, 1, 4)
        if cache is not None:
            y = cache.prefill(q, k, v) if position is None else cache.step(q, k, v, position)
        else:
            backend = self.backend
            if backend == "auto":
                backend = "flex" if flex_preferred(q.device, c.head_dim) else "blocks"
            attend = {"blocks": sparse_attention, "flex": flex_attention_layout,
                      "reference": reference_attention}[backend]
            y = attend(q, k, v, self.layout, c.text_length, c.grid_size,
                       row_window=c.row_window, conv_kernel=c.conv_kernel)
        return self.out(y.transpose(1, 2).flatten(2))

    def new_cache(self, device: torch.device) -> LayerCache:
        c = self.config
        return LayerCache(self.layout, c.text_length, c.grid_size, row_window=c.row_window,
                          conv_kernel=c.conv_kernel, device=device)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: PriorConfig, layout: str) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.dim)
        self.attn = Attention(config, layout)
        self.mlp_norm = nn.LayerNorm(config.dim)
        self.mlp = nn.Sequential(nn.Linear(config.dim, config.mlp_ratio * config.dim), nn.GELU(),
                                 nn.Linear(config.mlp_ratio * config.dim, config.dim))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None,
                position: int | torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), cache, position))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


@dataclass
class PriorOutput:
    loss: torch.Tensor  # text_weight * text_loss + image_weight * image_loss
    text_loss: torch.Tensor  # nats per text token
    image_loss: torch.Tensor  # nats per image token
    text_logits: torch.Tensor  # (B, L - 1, text vocab): position i predicts text token i + 1
    image_logits: torch.Tensor  # (B, N, K): image cell p predicts code p


def forward_flops(config: PriorConfig, executed: bool = False) -> dict[str, int]:
    """FLOPs of one teacher-forced forward pass of one stream, by part.

    A matmul of (m, k) by (k, n) is 2 m k n FLOPs; embeddings, norms, activations, softmax and the
    loss are free. Per layer: the QKV and output projections and the MLP over all S = T + N
    positions. Heads: the text head over the T - 1 text positions that predict text, the image
    head over the N image positions. Attention: QK^T and AV are 4 D FLOPs per head for each
    query-key pair the layout lets attend, or with `executed` each pair the kernels are handed
    (`attention_pairs`); the latter is what torch's FlopCounterMode counts.
    """
    c = config
    tokens = c.text_length + c.image_tokens
    inner, hidden = c.heads * c.head_dim, c.mlp_ratio * c.dim
    pairs = sum(attention_pairs(layout, c.text_length, c.grid_size, row_window=c.row_window,
                                conv_kernel=c.conv_kernel, executed=executed)
                for layout in layer_layouts(c.depth, c.layout))
    return {
        "projections": c.depth * 2 * tokens * c.dim * 4 * inner,  # QKV (3 inner) and out (inner)
        "mlp": c.depth * 2 * tokens * c.dim * hidden * 2,
        "attention": 4 * c.heads * c.head_dim * pairs,
        "text head": 2 * (c.text_length - 1) * c.dim * c.text_vocab_size,
        "image head": 2 * c.image_tokens * c.dim * c.codebook_size,
    }


def estimate_mfu(flops_per_token: float, tokens_per_second: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: the model's FLOP/s (recomputation by activation checkpointing not
    counted) as a fraction of `peak_flops`, the peak FLOP/s of every device together."""
    return flops_per_token * tokens_per_second / peak_flops


class Prior(PretrainedModel):
    """The DALL-E transformer: `forward(text, codes)` for training, logits for sampling."""

    config_class = PriorConfig
    config: PriorConfig

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = config
        self.text_embedding = nn.Embedding(config.text_vocab_size, config.dim)
        self.text_position = nn.Embedding(config.text_length, config.dim)
        self.image_embedding = nn.Embedding(config.codebook_size, config.dim)
        self.image_row = nn.Embedding(config.grid_size, config.dim)
        self.image_column = nn.Embedding(config.grid_size, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        blocks = [Block(config, layout) for layout in layer_layouts(config.depth, config.layout)]
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(config.dim)
        self.text_head = nn.Linear(config.dim, config.text_vocab_size, bias=False)
        self.image_head = nn.Linear(config.dim, config.codebook_size, bias=False)
        self.apply(init_transformer_weights)
        for block in blocks:  # GPT-2: scale residual projections by 1 / sqrt(2 * depth)
            for linear in (block.attn.out, cast(nn.Linear, block.mlp[2])):
                nn.init.normal_(linear.weight, std=0.02 / math.sqrt(2 * config.depth))

    def parallel_units(self) -> list[nn.Module]:
        """The transformer blocks: what FSDP shards one by one and activation checkpointing
        recomputes (`dalle.train.distributed`)."""
        return list(self.blocks)

    @property
    def sequence_length(self) -> int:
        """Positions of one stream the transformer runs over: text, start-of-image, N - 1 codes."""
        return self.config.text_length + self.config.image_tokens

    def flops_per_token(self, executed: bool = False) -> float:
        """Training FLOPs per stream position: forward + backward, 3x the forward pass (the
        backward computes gradients of inputs and weights, 2x), attention included; see
        `forward_flops`. Times tokens/s it gives the model FLOP/s that `estimate_mfu` takes."""
        return 3 * sum(forward_flops(self.config, executed).values()) / self.sequence_length

    def _check(self, text: torch.Tensor, codes: torch.Tensor) -> None:
        c = self.config
        if text.ndim != 2 or text.shape[1] != c.text_length + 1:
            raise DalleError(f"text must be (batch, {c.text_length + 1}) ids (text length + "
                             f"start-of-image), got {tuple(text.shape)}")
        if codes.shape[1] > c.grid_size**2:
            raise DalleError(f"at most {c.grid_size**2} image codes, got {codes.shape[1]}")
        if text.numel() and (text.min() < 0 or text.max() >= c.text_vocab_size):
            raise DalleError(f"text ids must lie in [0, {c.text_vocab_size})")
        if codes.numel() and (codes.min() < 0 or codes.max() >= c.codebook_size):
            raise DalleError(f"image codes must lie in [0, {c.codebook_size})")

    def embed(self, text: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The stream's input: (B, L + 1 + n) where n = codes.shape[1] image codes precede."""
        c, L = self.config, self.config.text_length
        n_image = 1 + codes.shape[1]  # SOI plus the given codes
        cells = torch.arange(n_image, device=text.device)
        text_part = self.text_embedding(text[:, :L]) + self.text_position.weight
        image_part = torch.cat([self.text_embedding(text[:, L:]), self.image_embedding(codes)], 1)
        image_part = image_part + self.image_row(cells // c.grid_size) + self.image_column(cells % c.grid_size)
        return self.dropout(torch.cat([text_part, image_part], 1))

    def hidden_states(self, text: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        x = self.embed(text, codes)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def set_attention(self, backend: str) -> None:
        """Compute every layer's attention with `backend`, one of `Attention.BACKENDS`."""
        if backend not in Attention.BACKENDS:
            raise DalleError(f"unknown attention backend {backend!r}; "
                             f"expected one of {', '.join(Attention.BACKENDS)}")
        for block in self.blocks:
            cast(Block, block).attn.backend = backend

    def new_cache(self) -> list[LayerCache]:
        """Empty per-layer caches for `prefill` and `step` (sampling, paper §2.6)."""
        return [cast(Block, block).attn.new_cache(self.device) for block in self.blocks]

    def prefill(self, text: torch.Tensor, cache: list[LayerCache]) -> torch.Tensor:
        """Run text + start-of-image into `cache`; the logits (B, K) of image code 0."""
        self._check(text, text.new_zeros(len(text), 0))
        x = self.embed(text, text.new_zeros(len(text), 0))
        for block, layer in zip(self.blocks, cache):
            x = block(x, layer)
        return self.image_head(self.norm(x[:, -1])).float()

    def step(self, code: torch.Tensor, position: int | torch.Tensor,
             cache: list[LayerCache]) -> torch.Tensor:
        """Feed code `position - 1` (B,) at image position `position` (an int, or a 0-d tensor
        for CUDA graphs); logits (B, K) of its code."""
        c = self.config
        cell = position if isinstance(position, torch.Tensor) else torch.tensor(position, device=code.device)
        x = (self.image_embedding(code) + self.image_row(cell // c.grid_size)
             + self.image_column(cell % c.grid_size))[:, None]
        for block, layer in zip(self.blocks, cache):
            x = block(x, layer, position)
        return self.image_head(self.norm(x[:, -1])).float()

    def forward(self, text: torch.Tensor, codes: torch.Tensor) -> PriorOutput:
        """Teacher-forced loss on text (B, L + 1) ids and image codes (B, grid, grid) or (B, N)."""
        c, L = self.config, self.config.text_length
        codes = codes.flatten(1)
        if codes.shape[1] != c.grid_size**2:
            raise DalleError(f"expected {c.grid_size}x{c.grid_size} image codes, got {codes.shape[1]}")
        self._check(text, codes)
        h = self.hidden_states(text, codes[:, :-1])
        text_logits = self.text_head(h[:, : L - 1]).float()
        image_logits = self.image_head(h[:, L:]).float()
        text_loss = (F.cross_entropy(text_logits.flatten(0, 1), text[:, 1:L].flatten())
                     if L > 1 else text_logits.new_zeros(()))
        image_loss = F.cross_entropy(image_logits.flatten(0, 1), codes.flatten())
        loss = c.text_loss_weight * text_loss + c.image_loss_weight * image_loss
        return PriorOutput(loss, text_loss, image_loss, text_logits, image_logits)
