import math

import pytest
import torch

from dalle import attention
from dalle.attention import (
    _MIN_BLOCK,
    LAYOUTS,
    _plan,
    attention_mask,
    layer_layouts,
    reference_attention,
    sparse_attention,
)

# (text_length, grid): one-token text, grids below the 11x11 conv kernel, several blocks of grid rows
# (G = 10, 12, 16, 17; 10 and 17 leave a partial last block).
SIZES = [(1, 1), (1, 2), (3, 3), (1, 4), (5, 4), (16, 4), (7, 8), (2, 10), (3, 12), (32, 16), (3, 17)]
# (layout, options): the defaults, and the row window / conv kernel where they matter.
CASES = [("dense", {}), ("row", {}), ("row", {"row_window": 3}), ("row", {"row_window": 13}), ("column", {}),
         ("conv", {}), ("conv", {"conv_kernel": 3}), ("conv", {"conv_kernel": 5})]


def brute_force_mask(layout, text_length, grid, row_window=None, conv_kernel=11):
    """The layout rules, spelt out one (query, key) pair at a time."""
    window = grid if row_window is None else row_window
    half = conv_kernel // 2
    size = text_length + grid * grid
    mask = torch.zeros(size, size, dtype=torch.bool)
    for i in range(size):
        for j in range(size):
            if i < text_length:
                allowed = j <= i
            elif j < text_length:
                allowed = True
            else:
                iq, ik = i - text_length, j - text_length
                (r, c), (r2, c2) = divmod(iq, grid), divmod(ik, grid)
                allowed = {
                    "dense": ik <= iq,
                    "row": iq - window <= ik <= iq,
                    "column": c2 == c and r2 <= r,
                    "conv": r - half <= r2 <= r and abs(c2 - c) <= half and ik <= iq,
                }[layout]
            mask[i, j] = allowed
    return mask


def qkv(text_length, grid, device="cpu"):
    generator = torch.Generator().manual_seed(0)
    shape = (2, 3, text_length + grid * grid, 8)
    return [torch.randn(shape, generator=generator).to(device).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("layout,options", CASES)
@pytest.mark.parametrize("text_length,grid", SIZES[:-2])  # the Python loops are slow at S = 288
def test_mask_matches_the_rules(layout, text_length, grid, options):
    expected = brute_force_mask(layout, text_length, grid, **options)
    assert torch.equal(attention_mask(layout, text_length, grid, **options), expected)


def check_against_reference(layout, text_length, grid, options, device="cpu"):
    q, k, v = qkv(text_length, grid, device=device)
    out = sparse_attention(q, k, v, layout, text_length, grid, **options)
    ref = reference_attention(q, k, v, layout, text_length, grid, **options)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (q, k, v), upstream)
    ref_grads = torch.autograd.grad(ref, (q, k, v), upstream)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5)


@pytest.fixture(params=["blocks", "whole stream"])
def plan_kind(request, monkeypatch):
    """Force `sparse_attention`'s block plan, or its one masked call, at every size."""
    monkeypatch.setattr(attention, "_BLOCKS_WORTH", math.inf if request.param == "blocks" else 0.0)
    attention._plan.cache_clear()
    yield request.param
    attention._plan.cache_clear()


@pytest.mark.parametrize("layout,options", CASES)
@pytest.mark.parametrize("text_length,grid", SIZES)
def test_sparse_equals_reference_with_gradients(layout, text_length, grid, options, plan_kind):
    check_against_reference(layout, text_length, grid, options)


@pytest.mark.parametrize("text_length,grid,blocks", [(32, 8, False), (32, 16, True), (256, 32, True)])
def test_blocks_only_where_they_save_work(text_length, grid, blocks):
    plan = _plan("row", text_length, grid, grid, 11, torch.device("cpu"))
    size = text_length + grid * grid
    if blocks:  # the text's square and the blocks' pairs: well below the stream's square
        assert plan.keys is not None and text_length**2 + plan.mask.numel() <= size**2 / 2
    else:
        assert plan.keys is None and torch.equal(plan.mask[0, 0], attention_mask("row", text_length, grid))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sparse_equals_reference_on_cuda(layout, plan_kind):
    check_against_reference(layout, 5, 8, {}, device="cuda")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bf16_autocast(layout):
    q, k, v = qkv(5, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sparse_attention(q, k, v, layout, 5, 4)
        ref = reference_attention(q, k, v, layout, 5, 4)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
    out.float().sum().backward()
    assert all(x.grad is not None and x.grad.isfinite().all() for x in (q, k, v))


def test_heads_transposed_from_the_model_layout():
    # A transformer splits (B, S, H * D) into heads and transposes: non-contiguous (B, H, S, D).
    x = torch.randn(2, 4 + 8 * 8, 3, 8)
    q, k, v = (x * scale for scale in (1, 2, 3))
    q, k, v = (y.transpose(1, 2) for y in (q, k, v))
    for layout in LAYOUTS:
        torch.testing.assert_close(sparse_attention(q, k, v, layout, 4, 8),
                                   reference_attention(q, k, v, layout, 4, 8), atol=1e-5, rtol=1e-5)


def test_plan_cached_under_inference_mode_serves_autograd():
    q, k, v = qkv(3, 5)
    with torch.inference_mode():
        sparse_attention(q, k, v, "column", 3, 5)
    sparse_attention(q, k, v, "column", 3, 5).sum().backward()
    assert q.grad is not None


@pytest.mark.parametrize("layout,window,extra_rows", [("row", 33, 1), ("column", 32, 0), ("conv", 61, 5)])
def test_paper_layouts_are_sparse(layout, window, extra_rows):
    text_length, grid = 8, 32
    mask = attention_mask(layout, text_length, grid)
    assert mask[text_length:].sum(dim=1).max() == text_length + window
    # A block of m grid rows (columns) computes only the text and the grid rows its window reaches.
    m = -(-_MIN_BLOCK // grid)
    block_mask = _plan(layout, text_length, grid, grid, 11, torch.device("cpu")).mask
    assert block_mask.shape[-2:] == (m * grid, text_length + (m + extra_rows) * grid)


def test_layer_schedule():
    assert layer_layouts(8) == ["row", "column", "row", "row", "row", "column", "row", "conv"]
    assert layer_layouts(1) == ["conv"]
    schedule = layer_layouts(64)
    assert [i + 1 for i, name in enumerate(schedule) if name == "column"] == list(range(2, 64, 4))
    assert schedule[-1] == "conv" and schedule.count("conv") == 1
    assert layer_layouts(3, "dense") == ["dense"] * 3
    assert layer_layouts(2, "row") == ["row", "row"]


def test_errors():
    q, k, v = qkv(3, 4)
    with pytest.raises(ValueError, match="unknown attention layout 'diagonal'"):
        sparse_attention(q, k, v, "diagonal", 3, 4)
    with pytest.raises(ValueError, match="unknown attention layout"):
        attention_mask("strided", 3, 4)
    with pytest.raises(ValueError, match="unknown attention layout"):
        layer_layouts(4, "Sparse")
    with pytest.raises(ValueError, match="sequence length 19 != text_length"):
        sparse_attention(q, k, v, "row", 4, 4)
    with pytest.raises(ValueError, match="sequence length"):
        reference_attention(q, k, v, "row", 3, 5)
    with pytest.raises(ValueError, match="odd"):
        attention_mask("conv", 3, 4, conv_kernel=4)
    with pytest.raises(ValueError, match="n_layers"):
        layer_layouts(0)
