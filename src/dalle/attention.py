"""The prior's attention layouts, computed sparsely (paper §2.2, appendix B.1).

The stream holds S = T + N positions: text at [0, T), then a G x G image grid in raster order, so
position T + r * G + c is grid cell (r, c), raster index r * G + c. Text attends causally to text
and never to the image; every image token attends to all text. Between image tokens, a query at
raster index iq = r * G + c may see the key at ik = r' * G + c' where the layer's layout allows:

- ``dense``:  ik <= iq, plain causal attention (the baseline);
- ``row``:    iq - W <= ik <= iq: the previous W + 1 tokens with self (W = G), wrapping across rows;
- ``column``: c' == c and r' <= r, computed on the transposed image states;
- ``conv``:   r - k // 2 <= r' <= r, |c' - c| <= k // 2 and ik <= iq: a k x k causal
  neighbourhood (k = 11), in the last layer only.

`attention_mask` is the dense definition and `reference_attention` applies it in O(S^2).
`sparse_attention` attends the text causally on its own, cuts the image queries into blocks of
whole grid rows (or columns), hands every block only the keys it can see (the text and the few
grid rows its window reaches) and runs all blocks in one SDPA call: O(N (T + window)) work rather
than O(S^2). On grids so small that the blocks would see most of the stream anyway it makes one
masked SDPA call instead.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F

from dalle.errors import DalleError

LAYOUTS = ("dense", "row", "column", "conv")
# The fewest queries in a block of `sparse_attention`. Smaller blocks measured slower on CPU:
# they copy the shared text keys more often and give SDPA smaller tasks.
_MIN_BLOCK = 64
# Blocks that would hand SDPA more than this fraction of the S^2 query-key pairs save too little
# to pay for gathering them: one masked call over the whole stream is then faster. Measured
# forward + backward on CPU: 8x8 grids (78% of the pairs) 0.87 -> 0.52 ms; 16x16 conv (56%)
# 3.52 ms in blocks, 3.68 ms whole.
_BLOCKS_WORTH = 0.7


def layer_layouts(n_layers: int, layout: str = "sparse") -> list[str]:
    """The layout of each layer, first to last (appendix B.1).

    For ``"sparse"``, layers i = 1 .. L - 1 use ``column`` where (i - 2) % 4 == 0 and ``row``
    otherwise, and the last layer uses ``conv``. Any name in `LAYOUTS` is repeated in every layer.
    """
    if n_layers < 1:
        raise DalleError(f"n_layers must be at least 1, got {n_layers}")
    if layout == "sparse":
        return ["column" if (i - 2) % 4 == 0 else "row" for i in range(1, n_layers)] + ["conv"]
    if layout not in LAYOUTS:
        raise DalleError(f"unknown attention layout {layout!r}; "
                         f"expected 'sparse' or one of {', '.join(LAYOUTS)}")
    return [layout] * n_layers


def attention_mask(layout: str, text_length: int, grid: int, *, row_window: int | None = None,
                   conv_kernel: int = 11, device: torch.device | str | None = None) -> torch.Tensor:
    """The dense (S, S) boolean mask of a layout, True where query row i may attend to key j.

    `row_window` is W of the ``row`` layout (default G, i.e. G + 1 tokens with self) and
    `conv_kernel` the odd side k of the ``conv`` neighbourhood.
    """
    window, kernel = _check_args(layout, text_length, grid, row_window, conv_kernel)
    T, N = text_length, grid * grid
    mask = torch.zeros(T + N, T + N, dtype=torch.bool, device=device)
    mask[:T, :T] = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    mask[T:, :T] = True
    raster = torch.arange(N, device=device)
    mask[T:, T:] = _allowed(layout, raster[:, None], raster[None, :], grid, window, kernel)
    return mask


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """`scaled_dot_product_attention`, run in fp32 for bf16 inputs on CPU, whose bf16 kernels are
    2-4x slower than fp32 at these head sizes (measured: benchmarks/run.py --only scaling)."""
    if q.device.type != "cpu" or q.dtype != torch.bfloat16:
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    with torch.autocast("cpu", enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs).to(q.dtype)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str, text_length: int,
                        grid: int, *, row_window: int | None = None, conv_kernel: int = 11) -> torch.Tensor:
    """Attention of (B, H, S, D) queries, keys and values under the layout's dense mask: O(S^2)."""
    _check_shapes(q, k, v, text_length, grid)
    mask = attention_mask(layout, text_length, grid, row_window=row_window, conv_kernel=conv_kernel,
                          device=q.device)
    return sdpa(q, k, v, attn_mask=mask)


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str, text_length: int,
                     grid: int, *, row_window: int | None = None, conv_kernel: int = 11) -> torch.Tensor:
    """Attention of (B, H, S, D) queries, keys and values computing only what the layout allows.

    Equal to `reference_attention` up to rounding. ``dense`` is causal attention over the whole
    stream. Otherwise text queries attend causally to the text alone, and image queries go in
    blocks of whole grid rows (or columns), each with just the keys it can see (see `_plan`),
    through one SDPA call.
    """
    window, kernel = _check_args(layout, text_length, grid, row_window, conv_kernel)
    _check_shapes(q, k, v, text_length, grid)
    if layout == "dense":
        return sdpa(q, k, v, is_causal=True)
    T = text_length
    plan = _eager_plan(layout, T, grid, window, kernel, q.device)
    if plan.keys is None:
        return sdpa(q, k, v, attn_mask=plan.mask)
    text = sdpa(q[:, :, :T], k[:, :, :T], v[:, :, :T], is_causal=True)
    return torch.cat([text, _image_blocks(q, k, v, plan, T)], dim=2)


def _image_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: _Plan, text_length: int) -> torch.Tensor:
    """The image queries' attention, (B, H, N, D): every block of `plan` in one SDPA call.

    The blocks' queries, keys and values are gathered copies, the keys and values about twice
    the size of the originals for a row layer. SDPA would keep them for its backward pass; they
    are kept as a note of where they came from instead and gathered again when the backward
    needs them (`saved_tensors_hooks`), so a layer holds what dense attention holds, for the
    price of a gather (benchmarks/run.py --only scaling).
    """
    B, H, _, D = q.shape
    blocks, n_queries, n_keys = plan.mask.shape[1:]
    in_fp32 = q.device.type == "cpu" and q.dtype == torch.bfloat16  # as `sdpa` does
    sources = ((q, plan.queries, n_queries), (k, plan.keys, n_keys), (v, plan.keys, n_keys))

    def gather(x: torch.Tensor, index: torch.Tensor | None, n: int) -> torch.Tensor:
        x = x[:, :, text_length:] if index is None else x.index_select(2, index)
        x = x.reshape(B * H, blocks, n, D)
        return x.float() if in_fp32 else x

    gathered = [gather(*source) for source in sources]

    def pack(saved: torch.Tensor) -> torch.Tensor | int:
        for i, copy in enumerate(gathered):
            if saved.data_ptr() == copy.data_ptr() and saved.shape == copy.shape and saved.dtype == copy.dtype:
                return i
        return saved

    def unpack(saved: torch.Tensor | int) -> torch.Tensor:
        return gather(*sources[saved]) if isinstance(saved, int) else saved

    fp32 = torch.autocast("cpu", enabled=False) if in_fp32 else nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack), fp32:
        image = F.scaled_dot_product_attention(gathered[0], gathered[1], gathered[2], attn_mask=plan.mask)
    gathered.clear()  # the hooks outlive this call: they must not keep the copies alive
    image = image.to(q.dtype).reshape(B, H, blocks * n_queries, D)
    return image if plan.outputs is None else image.index_select(2, plan.outputs)


@lru_cache(maxsize=64)
def attention_pairs(layout: str, text_length: int, grid: int, *, row_window: int | None = None,
                    conv_kernel: int = 11, executed: bool = False) -> int:
    """Query-key pairs of one head of one layer: those the layout lets attend, or (`executed`)
    those `sparse_attention` hands its kernels.

    Executed: S^2 for ``dense`` (SDPA's causal flag skips half, but counts the whole square, as
    FlopCounterMode has it); otherwise T^2 for the text plus every block's queries x keys, or S^2
    where the plan makes one masked call over the whole stream (small grids).
    """
    window, kernel = _check_args(layout, text_length, grid, row_window, conv_kernel)
    S = text_length + grid * grid
    if not executed:
        return int(attention_mask(layout, text_length, grid, row_window=window, conv_kernel=kernel).sum())
    if layout == "dense":
        return S * S
    plan = _plan(layout, text_length, grid, window, kernel, torch.device("cpu"))
    return plan.mask.numel() + (0 if plan.keys is None else text_length**2)


class _Plan(NamedTuple):
    """Where a layout's image blocks read and write: positions in the stream and their mask."""

    queries: torch.Tensor | None  # (blocks * L,) each block's queries; None: the image in order
    keys: torch.Tensor | None  # (blocks * K,) each block's keys and values; None: no blocks
    mask: torch.Tensor  # (1, blocks, L, K) which of its keys each query of a block may see,
    # or without blocks the (1, 1, S, S) mask of the whole stream
    outputs: torch.Tensor | None  # (N,) where each image position's output is; None: in order


@lru_cache(maxsize=64)
@torch.inference_mode(False)  # a plan cached under inference mode must still serve autograd later
def _plan(layout: str, text_length: int, grid: int, window: int, kernel: int, device: torch.device) -> _Plan:
    """Cut a layout's image queries into blocks of L that each see K keys, read off its dense mask.

    A block is m whole grid rows, or m grid columns for ``column`` (the paper's transposed image
    states), with m the fewest that make L = m G at least `_MIN_BLOCK` queries; copies of the
    first image query fill the last block up (their outputs are never read). A block's keys are
    every position one of its queries may see, padded to the longest block with keys none of them
    may see (masked out): K = T + (m + 1) G for ``row`` (W = G), T + m G for ``column`` and at
    most T + (k // 2 + m) G for ``conv``. Blocks are SDPA's head dimension, as its fused CPU kernel
    takes only masks of shape (1 | B, 1 | H, L, S). Where the blocks would still compute more
    than `_BLOCKS_WORTH` of the S^2 pairs, the plan has no blocks, only the dense mask.
    """
    dense = attention_mask(layout, text_length, grid, row_window=window, conv_kernel=kernel, device=device)
    image = torch.arange(grid * grid, device=device).view(grid, grid)
    if layout == "column":
        image = image.T
    order = text_length + image.flatten()
    block = min(-(-_MIN_BLOCK // grid), grid) * grid
    pad = (-grid * grid) % block
    queries = F.pad(order, (0, pad), value=text_length).view(-1, block)
    seen = dense[queries].any(dim=1)
    n_keys = int(seen.sum(dim=1).max())
    # A stable sort lists each block's visible keys first, in stream order.
    keys = torch.sort(seen.logical_not().byte(), dim=1, stable=True).indices[:, :n_keys]
    if text_length**2 + keys.numel() * block > _BLOCKS_WORTH * len(dense) ** 2:
        return _Plan(None, None, dense[None, None], None)
    mask = dense[queries[:, :, None], keys[:, None, :]][None]
    if pad == 0 and layout != "column":
        return _Plan(None, keys.flatten(), mask, None)
    outputs = torch.empty_like(order)
    outputs[order - text_length] = torch.arange(len(order), device=device)
    return _Plan(queries.flatten(), keys.flatten(), mask, outputs)


_eager_plan = _plan


def keep_plans_out_of_compilation() -> None:
    """Build the layout plans eagerly even inside compiled code (training with --compile, compiled
    sampling): a plan reads sizes off tensors, a graph break with a warning in every compiled
    unit, and its result is a constant anyway. Called before compiling rather than at import,
    because torch's compiler costs every command 2 s of start-up to import (`python -X importtime
    -c "import dalle.cli"` on a 2-core EPYC)."""
    global _eager_plan
    _eager_plan = torch.compiler.disable(_plan)


def _allowed(layout: str, iq: torch.Tensor, ik: torch.Tensor, grid: int, window: int,
             kernel: int) -> torch.Tensor:
    """Whether the image query at raster index `iq` may attend to the image key at `ik`."""
    causal = ik <= iq
    if layout == "dense":
        return causal
    if layout == "row":
        return causal & (ik >= iq - window)
    rq, cq, rk, ck = iq // grid, iq % grid, ik // grid, ik % grid
    if layout == "column":
        return (ck == cq) & (rk <= rq)
    return causal & (rk >= rq - kernel // 2) & ((ck - cq).abs() <= kernel // 2)


def _check_args(layout: str, text_length: int, grid: int, row_window: int | None,
                conv_kernel: int) -> tuple[int, int]:
    """Validate the layout's arguments; return the row window (default: the grid side) and kernel."""
    if layout not in LAYOUTS:
        raise DalleError(f"unknown attention layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if text_length < 1 or grid < 1:
        raise DalleError(f"text_length and grid must be positive, got text_length={text_length}, grid={grid}")
    window = grid if row_window is None else row_window
    if window < 0:
        raise DalleError(f"row_window must be non-negative, got {row_window}")
    if conv_kernel < 1 or conv_kernel % 2 == 0:
        raise DalleError(f"conv_kernel must be a positive odd number, got {conv_kernel}")
    return window, conv_kernel


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_length: int, grid: int) -> None:
    if q.dim() != 4 or q.shape != k.shape or k.shape[:3] != v.shape[:3]:
        raise DalleError(f"expected (B, H, S, D) queries, keys and values of one shape, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[2] != text_length + grid * grid:
        raise DalleError(f"sequence length {q.shape[2]} != text_length + grid**2 = "
                         f"{text_length} + {grid}**2 = {text_length + grid * grid}")


class LayerCache:
    """One layer's keys and values while sampling, holding only what its layout can still see.

    The buffer is [T text slots | ring of R image slots], where R is one more than the farthest
    back any image query of the layout looks: W + 1 for ``row``, k // 2 * (G + 1) + 1 for
    ``conv``, (G - 1) G + 1 for ``column`` and N for ``dense`` (capped at N). Image position p
    lives in ring slot p mod R; `step` writes it and attends over the text and the ring with the
    layout's row of the mask, so nothing before the text is ever recomputed.
    """

    def __init__(self, layout: str, text_length: int, grid: int, *, row_window: int | None = None,
                 conv_kernel: int = 11, device: torch.device | str = "cpu") -> None:
        self.text_length = text_length
        self.masks = _ring_masks(layout, text_length, grid, row_window, conv_kernel, torch.device(device))
        self.ring = self.masks.shape[-1] - text_length
        self.k = self.v = torch.empty(0)

    def prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of the text and image position 0 (the start-of-image token), (B, H, T + 1, D).

        These positions attend causally to each other in every layout. The buffers take the
        dtype of `k` (bf16 under autocast).
        """
        B, H, _, D = k.shape
        T = self.text_length
        self.k = k.new_zeros(B, H, T + self.ring, D)
        self.v = v.new_zeros(B, H, T + self.ring, D)
        self.k[:, :, : T + 1] = k
        self.v[:, :, : T + 1] = v
        return sdpa(q, k, v, is_causal=True)

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             position: int | torch.Tensor) -> torch.Tensor:
        """Attention of image position `position` (>= 1) from its (B, H, 1, D) query, key, value.

        `position` may be a 0-d tensor on the cache's device: then nothing here depends on its
        value on the host, so one CUDA graph capture serves every position.
        """
        if isinstance(position, torch.Tensor):
            index = (self.text_length + position % self.ring).view(1)
            self.k.index_copy_(2, index, k)
            self.v.index_copy_(2, index, v)
            mask = self.masks.index_select(0, position.view(1))[0]
        else:
            slot = self.text_length + position % self.ring
            self.k[:, :, slot] = k[:, :, 0]
            self.v[:, :, slot] = v[:, :, 0]
            mask = self.masks[position]
        # One query per step: the native-dtype kernel beats casting the whole cache to fp32.
        return F.scaled_dot_product_attention(q, self.k, self.v, attn_mask=mask)


@lru_cache(maxsize=64)
@torch.inference_mode(False)
def _ring_masks(layout: str, text_length: int, grid: int, row_window: int | None, conv_kernel: int,
                device: torch.device) -> torch.Tensor:
    """(N, 1, 1, T + R) masks: for image position p, which text and ring slots it may see."""
    dense = attention_mask(layout, text_length, grid, row_window=row_window, conv_kernel=conv_kernel,
                           device=device)[text_length:, text_length:]
    n = grid * grid
    p = torch.arange(n, device=device)
    lookback = int((p[:, None] - p[None, :])[dense].max())
    ring = min(lookback + 1, n)
    slots = torch.arange(ring, device=device)
    # The position that ring slot j holds once position p is written: the latest p' <= p with
    # p' = j (mod R); negative when nothing has been written there yet.
    held = p[:, None] - (p[:, None] - slots[None, :]) % ring
    visible = (held >= 0) & dense[p[:, None], held.clamp(min=0)]
    text = torch.ones(n, text_length, dtype=torch.bool, device=device)
    return torch.cat([text, visible], dim=1)[:, None, None, :]  # SDPA's fast path wants 4-D
