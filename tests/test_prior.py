import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dalle.config import PriorConfig
from dalle.prior import Prior, estimate_mfu

LAYOUTS = ["sparse", "dense", "row", "column", "conv"]


def tiny(layout: str = "sparse", **kwargs) -> Prior:
    torch.manual_seed(0)
    return Prior(PriorConfig(**{**PriorConfig.tiny().to_dict(), "layout": layout, **kwargs}))


def batch(config: PriorConfig, b: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, config.text_vocab_size, (b, config.text_length + 1), generator=g)
    codes = torch.randint(0, config.codebook_size, (b, config.grid_size, config.grid_size), generator=g)
    return text, codes


def test_paper_preset_counts_about_12b_on_meta():
    with torch.device("meta"):
        model = Prior(PriorConfig.paper())
    assert 11.5e9 < model.num_parameters() < 12.5e9
    assert [b.attn.layout for b in model.blocks][:7] == ["row", "column", "row", "row", "row", "column", "row"]
    assert model.blocks[-1].attn.layout == "conv"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_image_logits_depend_only_on_earlier_codes(layout):
    model = tiny(layout).eval()
    config = model.config
    text, codes = batch(config, b=1)
    base = model(text, codes)
    n = config.grid_size**2
    for q in (0, 5, n - 2):
        changed = codes.clone().flatten(1)
        changed[0, q] = (changed[0, q] + 1) % config.codebook_size
        out = model(text, changed.view_as(codes))
        same = (out.image_logits - base.image_logits).abs().amax(-1)[0] < 1e-6
        assert same[: q + 1].all(), "a cell saw its own or a later code"
        assert torch.equal(out.text_logits, base.text_logits), "text saw the image"


def test_text_is_causal():
    model = tiny().eval()
    text, codes = batch(model.config, b=1)
    base = model(text, codes)
    changed = text.clone()
    changed[0, 3] = (changed[0, 3] + 1) % model.config.text_vocab_size
    out = model(changed, codes)
    diff = (out.text_logits - base.text_logits).abs().amax(-1)[0]
    assert (diff[:3] < 1e-6).all() and diff[3:].max() > 0
    assert (out.image_logits - base.image_logits).abs().max() > 0  # every image token sees all text


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sparse_model_equals_dense_mask_reference(layout):
    model = tiny(layout)
    model.set_attention("blocks")
    text, codes = batch(model.config)
    out = model(text, codes)
    out.loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_attention("reference")
    ref = model(text, codes)
    ref.loss.backward()
    assert torch.allclose(out.image_logits, ref.image_logits, atol=1e-5)
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-5)


def test_loss_is_weighted_and_normalised_per_stream():
    model = tiny(text_loss_weight=0.25, image_loss_weight=0.75)
    text, codes = batch(model.config)
    out = model(text, codes)
    assert torch.allclose(out.loss, 0.25 * out.text_loss + 0.75 * out.image_loss)
    expected = torch.nn.functional.cross_entropy(
        out.image_logits.flatten(0, 1), codes.flatten())
    assert torch.allclose(out.image_loss, expected)
    # An untrained model is near chance on both streams.
    assert abs(out.image_loss.item() - math.log(model.config.codebook_size)) < 0.5


def test_bad_inputs_get_clear_errors():
    model = tiny()
    text, codes = batch(model.config)
    with pytest.raises(ValueError, match="text must be"):
        model(text[:, :-1], codes)
    with pytest.raises(ValueError, match="image codes must lie"):
        model(text, codes + 100)
    with pytest.raises(ValueError, match="text ids must lie"):
        model(text + 1000, codes)
    with pytest.raises(ValueError, match="expected 4x4 image codes"):
        model(text, codes[:, :2])
    with pytest.raises(ValueError, match="layout"):
        PriorConfig(layout="diagonal")


def test_save_load_round_trip(tmp_path):
    model = tiny().eval()
    model.save_pretrained(tmp_path / "prior")
    loaded = Prior.from_pretrained(tmp_path / "prior").eval()
    text, codes = batch(model.config)
    assert torch.equal(model(text, codes).image_logits, loaded(text, codes).image_logits)


def test_bf16_autocast_runs():
    model = tiny()
    text, codes = batch(model.config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(text, codes)
    out.loss.backward()
    assert torch.isfinite(out.loss)


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs):
    """FlopCounterMode formula for CPU's fused SDPA, which torch leaves uncounted (QK^T and AV)."""
    b, h, s_q, d = query
    return 2 * b * h * s_q * key[2] * (d + value[3])


def _cpu_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs):
    return 2 * _cpu_attention_flops(query, key, value)  # grad of q, k, v and of the scores: 4 matmuls


@pytest.mark.parametrize("layout", LAYOUTS)
def test_flops_per_token_matches_flop_counter_mode_over_a_training_step(layout):
    # A 16x16 grid cuts the sparse layouts into blocks (smaller grids make one masked call).
    model = tiny(layout, grid_size=16)
    text, codes = batch(model.config)
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
               torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
                   _cpu_attention_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(text, codes).loss.backward()
    tokens = len(text) * model.sequence_length
    assert model.flops_per_token(executed=True) * tokens == pytest.approx(counter.get_total_flops(), rel=0.02)
    assert model.flops_per_token() < model.flops_per_token(executed=True)
    if layout == "dense":  # causal: about half of the S^2 square is useful
        attention = 12 * model.config.heads * model.config.head_dim * model.config.depth
        square = model.sequence_length * attention
        assert model.flops_per_token(executed=True) - model.flops_per_token() == pytest.approx(square / 2, rel=0.05)


def test_estimate_mfu_is_model_flops_over_the_peak():
    model = tiny()
    assert estimate_mfu(model.flops_per_token(), 1000.0, 1e12) == pytest.approx(
        model.flops_per_token() * 1000 / 1e12)
