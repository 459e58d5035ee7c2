"""Forward FLOPs of the prior, counted analytically, and torch's FlopCounterMode to check them.

The analytic count is the model's own (`dalle.prior.forward_flops`, `Prior.flops_per_token`; the
training loop logs model TFLOP/s and MFU from it); this file scales it to a batch. Attention is
counted two ways:

- ``useful``: the query-key pairs the layer's layout lets attend (causal dense is about S^2 / 2);
- ``executed``: the pairs the kernels are handed (`dalle.attention.attention_pairs`), which is
  what FlopCounterMode counts.

Training is 3x the forward pass (backward: 2x).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from dalle.config import PriorConfig
from dalle.prior import Prior, forward_flops


def prior_forward_flops(config: PriorConfig, batch: int, executed: bool = False) -> dict[str, int]:
    """FLOPs of one teacher-forced forward pass of `batch` streams, by part (`forward_flops`)."""
    return {part: batch * flops for part, flops in forward_flops(config, executed).items()}


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
