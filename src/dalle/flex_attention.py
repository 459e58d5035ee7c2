"""The prior's attention layouts on PyTorch's FlexAttention (paper §2.2, appendix B.1).

FlexAttention takes a layout as a `mask_mod(b, h, q, kv) -> bool` and a `BlockMask`: the stream
cut into 128 x 128 tiles of queries by keys, each marked empty, partial or full. Its kernels skip
the empty tiles, apply `mask_mod` only inside partial ones and never materialise the S x S scores,
so a layer costs the tiles its layout touches, not S^2. ``row`` and ``conv`` are block-sparse in
stream order: an image query looks back at most W + 1 tokens, or k // 2 grid rows. ``column`` is
not (a column's tokens lie G apart, in every tile), so, as the paper computes column layers on
the transposed image states (appendix B.1), its image part is permuted to column-major order
first: there a column is G consecutive tokens attending causally among themselves, a diagonal of
small causal blocks; the output is permuted back. Text attends causally to text and every image
query to all of the text, as in `dalle.attention.attention_mask`.

Fused kernels exist only under `torch.compile`; uncompiled, `flex_attention` is a math path that
materialises every score, for tests: slower than `reference_attention` (``row``, T = G = 32, B = 2,
8 heads of 32, one CPU thread: forward + backward 3.0 s against 0.39 s). So the compiled function
is the default on CUDA, built once per process. On CPU it is opt-in (``compiled=True``) and for
inference only: torch's CPU FlexAttention has no backward (it refuses inputs that need gradients),
and in the same measurement its compiled forward took 25-32 ms against 9-27 ms for
`dalle.attention.sparse_attention`, after a 29 s compile. Blocks stay the CPU path until
FlexAttention earns its place there in a benchmark.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import cast

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from dalle.attention import _allowed, _check_args, _check_shapes
from dalle.errors import DalleError

# Query and key tile of the block mask: torch's default. On CUDA the Triton kernels tile by 64 or
# 128 and need the mask's tiles to be multiples of theirs; the CPU kernel takes any size. S need
# not be a multiple: create_block_mask pads the last tiles with masked positions.
_BLOCK_SIZE = 128
# Devices whose FlexAttention has no backward (torch 2.13); training there must use another backend.
_NO_BACKWARD = ("cpu", "mps")
# The smallest head the compiled GPU kernels take (Triton's tl.dot needs 16).
_MIN_GPU_HEAD_DIM = 16


def flex_preferred(device: torch.device, head_dim: int) -> bool:
    """Whether compiled FlexAttention is the default here: on CUDA with heads it compiles for."""
    return device.type == "cuda" and head_dim >= _MIN_GPU_HEAD_DIM


def flex_attention_layout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str, text_length: int,
                          grid: int, *, row_window: int | None = None, conv_kernel: int = 11,
                          compiled: bool | None = None) -> torch.Tensor:
    """Attention of (B, H, S, D) queries, keys and values under a layout, by FlexAttention.

    Equal to `reference_attention` up to rounding. `compiled` runs `torch.compile(flex_attention)`
    (default: on CUDA only; there heads need at least 16 dimensions); uncompiled is the unfused
    math path, for tests. On CPU gradients are refused with a `DalleError` (torch has no CPU
    backward for FlexAttention).
    """
    window, kernel = _check_args(layout, text_length, grid, row_window, conv_kernel)
    _check_shapes(q, k, v, text_length, grid)
    if not torch.is_grad_enabled():
        # torch refuses CPU inputs that require gradients even where none will be computed.
        q, k, v = q.detach(), k.detach(), v.detach()
    elif q.device.type in _NO_BACKWARD and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise DalleError(f"FlexAttention has no backward on {q.device.type}: train there with the "
                         f"'blocks' attention backend (Prior.set_attention('blocks'))")
    attend: Callable[..., object] = flex_attention
    if compiled or (compiled is None and q.device.type == "cuda"):
        if q.device.type != "cpu" and q.shape[-1] < _MIN_GPU_HEAD_DIM:
            raise DalleError(f"compiled FlexAttention needs heads of at least {_MIN_GPU_HEAD_DIM} on "
                             f"{q.device.type}, got {q.shape[-1]}: use the 'blocks' attention backend")
        attend = _compiled_flex_attention()
    block_mask = _block_mask(layout, text_length, grid, window, kernel, q.device)
    if layout != "column":
        return cast(torch.Tensor, attend(q, k, v, block_mask=block_mask))
    q, k, v = (_transpose_image(x, text_length, grid) for x in (q, k, v))
    out = cast(torch.Tensor, attend(q, k, v, block_mask=block_mask))
    return _transpose_image(out, text_length, grid)  # transposing twice is the identity


@lru_cache(maxsize=1)
def _compiled_flex_attention() -> Callable[..., object]:
    """`torch.compile(flex_attention)`, made on first use: one compiled function per process, so
    every layer shares its compiled kernels (one per layout and shape)."""
    return torch.compile(flex_attention)


@lru_cache(maxsize=64)
@torch.inference_mode(False)  # a mask cached under inference mode must still serve autograd later
def _block_mask(layout: str, text_length: int, grid: int, window: int, kernel: int,
                device: torch.device) -> BlockMask:
    """The layout's block mask over the stream (the transposed stream for ``column``), broadcast
    over batch and heads; built once and shared by every layer of the layout."""
    T = text_length

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        if layout == "column":  # transposed order: image index c * G + r, a column is a run of G
            image = (kv - T) // grid == (q - T) // grid
        else:
            image = _allowed(layout, q - T, kv - T, grid, window, kernel)
        # Causal throughout (every image rule is too); text keys visible to all later queries.
        return (kv <= q) & ((kv < T) | image)

    size = T + grid * grid
    return create_block_mask(mask_mod, None, None, size, size, device=device, BLOCK_SIZE=_BLOCK_SIZE)


def _transpose_image(x: torch.Tensor, text_length: int, grid: int) -> torch.Tensor:
    """(B, H, S, D) with the image part's G x G grid transposed: raster order <-> column-major."""
    image = x[:, :, text_length:].unflatten(2, (grid, grid)).transpose(2, 3).flatten(2, 3)
    return torch.cat([x[:, :, :text_length], image], dim=2)
