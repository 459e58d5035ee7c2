"""Forward FLOPs of the prior, counted analytically, and torch's FlopCounterMode to check them.

A matmul of (m, k) by (k, n) is 2 m k n FLOPs; embeddings, norms, activations, softmax and the loss
are free. Per layer: the QKV and output projections and the MLP over all S = T + N positions.
Heads: the text head over the T - 1 text positions that predict text, the image head over the N
image positions. Attention: QK^T and AV are 4 D FLOPs per head for each query-key pair, counted two
ways:

- ``useful``: the pairs the layer's layout lets attend (causal dense is about S^2 / 2);
- ``executed``: the pairs the kernels are handed: S^2 for dense (SDPA's causal flag hides half,
  but the count is the whole square, as FlopCounterMode has it), T^2 for the text plus every
  block's queries x keys for the sparse layouts (`dalle.attention`'s block plan), or S^2 where
  that plan makes one masked call over the whole stream (small grids).

Training is 3x the forward pass (backward: 2x).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from dalle.attention import _plan, attention_mask, layer_layouts
from dalle.config import PriorConfig
from dalle.prior import Prior


def attention_pairs(config: PriorConfig, layout: str, executed: bool) -> int:
    """Query-key pairs of one head of one layer: allowed by the layout, or handed to the kernels."""
    T, G = config.text_length, config.grid_size
    S = T + G * G
    if executed and layout == "dense":
        return S * S
    if executed:
        window = G if config.row_window is None else config.row_window
        plan = _plan(layout, T, G, window, config.conv_kernel, torch.device("cpu"))
        return plan.mask.numel() + (0 if plan.keys is None else T * T)
    mask = attention_mask(layout, T, G, row_window=config.row_window, conv_kernel=config.conv_kernel)
    return int(mask.sum())


def prior_forward_flops(config: PriorConfig, batch: int, executed: bool = False) -> dict[str, int]:
    """FLOPs of one teacher-forced forward pass of `batch` streams, by part (see the module doc)."""
    c = config
    tokens = batch * (c.text_length + c.image_tokens)
    inner, hidden = c.heads * c.head_dim, c.mlp_ratio * c.dim
    layouts = layer_layouts(c.depth, c.layout)
    pairs = sum(attention_pairs(c, layout, executed) for layout in layouts)
    return {
        "projections": c.depth * 2 * tokens * c.dim * 4 * inner,  # QKV (3 inner) and out (inner)
        "mlp": c.depth * 2 * tokens * c.dim * hidden * 2,
        "attention": 4 * batch * c.heads * c.head_dim * pairs,
        "text head": 2 * batch * (c.text_length - 1) * c.dim * c.text_vocab_size,
        "image head": 2 * batch * c.image_tokens * c.dim * c.image_vocab_size,
    }


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FlopCounterMode formula for CPU's fused SDPA, which torch leaves uncounted."""
    b, h, s_q, d = query
    return 2 * b * h * s_q * key[2] * (d + value[3])


def counted_forward_flops(model: Prior, text: torch.Tensor, codes: torch.Tensor) -> int:
    """FLOPs of one forward pass as torch's FlopCounterMode counts them."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(text, codes)
    return counter.get_total_flops()
