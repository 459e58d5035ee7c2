import pytest
import torch
import torch.nn.attention.flex_attention as torch_flex

from dalle import flex_attention
from dalle.attention import LAYOUTS, reference_attention
from dalle.errors import DalleError
from dalle.flex_attention import _block_mask, flex_attention_layout
from test_prior import batch, tiny

# (text_length, grid): grids below and above the 11 x 11 conv kernel; 4 + 12 * 12 = 148 positions
# spill into a second, partial 128-token tile.
SIZES = [(3, 4), (6, 5), (5, 6), (4, 12)]
# (layout, options): the defaults, odd row windows and small conv kernels.
CASES = [("dense", {}), ("row", {}), ("row", {"row_window": 3}), ("row", {"row_window": 5}), ("column", {}),
         ("conv", {}), ("conv", {"conv_kernel": 3}), ("conv", {"conv_kernel": 5})]


@pytest.fixture
def cpu_backward(monkeypatch):
    """Let FlexAttention take gradients on CPU, so the layouts' gradients are tested here too.

    torch refuses CPU inputs that need gradients at its entry point only; behind it the uncompiled
    path has a math backward for every device, the one its fused CUDA kernels are tested against.
    """
    monkeypatch.setattr(torch_flex, "_validate_device", lambda query, key, value: None)
    monkeypatch.setattr(flex_attention, "_NO_BACKWARD", ())


def qkv(text_length, grid, dtype=torch.float64, device="cpu", head_dim=8):
    generator = torch.Generator().manual_seed(0)
    shape = (2, 2, text_length + grid * grid, head_dim)
    return [torch.randn(shape, generator=generator, dtype=dtype).to(device).requires_grad_() for _ in range(3)]


def check_against_reference(layout, text_length, grid, options, tolerance, **kwargs):
    q, k, v = qkv(text_length, grid, **kwargs)
    out = flex_attention_layout(q, k, v, layout, text_length, grid, **options)
    ref = reference_attention(q, k, v, layout, text_length, grid, **options)
    torch.testing.assert_close(out, ref, atol=tolerance, rtol=tolerance)
    upstream = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (q, k, v), upstream)
    ref_grads = torch.autograd.grad(ref, (q, k, v), upstream)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("layout,options", CASES)
@pytest.mark.parametrize("text_length,grid", SIZES)
def test_flex_equals_reference_with_gradients(layout, options, text_length, grid, cpu_backward):
    check_against_reference(layout, text_length, grid, options, tolerance=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_flex_runs_on_cpu_without_gradients(layout):
    q, k, v = qkv(5, 6)
    with torch.no_grad():  # inference: torch's CPU FlexAttention needs no patch
        out = flex_attention_layout(q, k, v, layout, 5, 6, conv_kernel=3)
    torch.testing.assert_close(out, reference_attention(q, k, v, layout, 5, 6, conv_kernel=3))


def test_flex_refuses_gradients_on_cpu_with_a_clear_error():
    q, k, v = qkv(3, 4)
    with pytest.raises(DalleError, match="no backward on cpu.*'blocks'"):
        flex_attention_layout(q, k, v, "row", 3, 4)


def assert_backends_agree(model, text, codes, backend: str, tolerance: float) -> None:
    """`backend` gives the model the loss and gradients of the dense-mask reference."""
    losses, grads = [], []
    for name in (backend, "reference"):
        model.set_attention(name)
        model.zero_grad()
        out = model(text, codes)
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(losses[0], losses[1], atol=tolerance, rtol=tolerance)
    for grad, ref_grad in zip(*grads):
        torch.testing.assert_close(grad, ref_grad, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("layout", ["sparse", "dense"])
def test_prior_with_flex_equals_the_dense_reference(layout, cpu_backward):
    model = tiny(layout)
    assert_backends_agree(model, *batch(model.config), "flex", tolerance=1e-6)


def test_block_masks_are_built_once_per_layout_and_shared_by_its_layers():
    model = tiny("sparse", depth=6)  # row, column, row, row, row, conv
    model.set_attention("flex")
    text, codes = batch(model.config)
    _block_mask.cache_clear()
    with torch.no_grad():
        model(text, codes)
        model(text, codes)
    info = _block_mask.cache_info()
    assert (info.misses, info.hits) == (3, 9)


def test_block_mask_cached_under_inference_mode_serves_autograd(cpu_backward):
    _block_mask.cache_clear()
    q, k, v = qkv(3, 5)
    with torch.inference_mode():
        flex_attention_layout(q, k, v, "column", 3, 5)
    flex_attention_layout(q, k, v, "column", 3, 5).sum().backward()
    assert q.grad is not None and _block_mask.cache_info().hits == 1


def test_column_layout_is_block_sparse_on_transposed_states():
    # At the paper's grid a 128-token tile of the transposed image holds 4 whole columns: it sees
    # the text's tile, its own and at most the one before (a column cut by the tile border).
    masks = {layout: _block_mask(layout, 32, 32, 32, 11, torch.device("cpu")) for layout in ("dense", "column")}
    tiles = {layout: mask.kv_num_blocks + mask.full_kv_num_blocks for layout, mask in masks.items()}
    assert tiles["column"].max() <= 3
    assert tiles["column"].sum() < tiles["dense"].sum() / 2


def test_auto_attends_in_blocks_on_cpu():
    model = tiny("sparse")
    text, codes = batch(model.config)
    _block_mask.cache_clear()
    model(text, codes).loss.backward()  # flex would refuse gradients on CPU
    assert _block_mask.cache_info().currsize == 0


def test_unknown_backend_is_refused():
    with pytest.raises(DalleError, match="unknown attention backend 'triton'"):
        tiny().set_attention("triton")


@pytest.mark.slow  # compiling takes 15-25 s a layout on a loaded 2-core CPU
@pytest.mark.parametrize("layout", LAYOUTS)
def test_compiled_flex_equals_reference_on_cpu(layout):
    q, k, v = qkv(5, 6, dtype=torch.float32)  # the CPU kernels take no float64
    with torch.no_grad():
        out = flex_attention_layout(q, k, v, layout, 5, 6, conv_kernel=3, compiled=True)
    ref = reference_attention(q, k, v, layout, 5, 6, conv_kernel=3)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout,options", CASES)
def test_compiled_flex_equals_reference_with_gradients_on_cuda(layout, options):
    # Triton's kernels take heads of 16 or more; float32 runs in full precision, not TF32.
    check_against_reference(layout, 5, 12, options, tolerance=1e-4, dtype=torch.float32, device="cuda",
                            head_dim=16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prior_on_cuda_attends_with_flex_and_equals_the_dense_reference():
    model = tiny("sparse").cuda()
    text, codes = (x.cuda() for x in batch(model.config))
    _block_mask.cache_clear()
    assert_backends_agree(model, text, codes, "auto", tolerance=1e-4)
    assert _block_mask.cache_info().currsize == 3  # auto chose flex: row, column and conv masks
