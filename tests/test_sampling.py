import pytest
import torch

from dalle.config import PriorConfig
from dalle.prior import Prior
from dalle.sampling import completion_mask, filter_logits, sample_codes

LAYOUTS = ["sparse", "dense", "row", "column", "conv"]


def tiny(layout: str = "sparse", **kwargs) -> Prior:
    torch.manual_seed(0)
    config = PriorConfig(**{**PriorConfig.tiny().to_dict(), "layout": layout, **kwargs})
    model = Prior(config).eval()
    with torch.no_grad():  # sharper logits than at init, so that sampling is far from uniform
        model.image_head.weight.mul_(40)
    return model


def text_ids(config: PriorConfig, b: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.text_vocab_size, (b, config.text_length + 1), generator=g)


def draw(model, text, seed=0, **kwargs):
    return sample_codes(model, text, generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("grid, kernel", [(4, 3), (5, 11)])
def test_cached_sampling_equals_full_recompute(layout, grid, kernel):
    model = tiny(layout, grid_size=grid, conv_kernel=kernel, row_window=None)
    text = text_ids(model.config)
    cached = draw(model, text, seed=1)
    full = draw(model, text, seed=1, use_cache=False)
    assert torch.equal(cached, full)
    assert len(cached.unique()) > 2  # the draw is not degenerate


@pytest.mark.parametrize("layout", ["sparse", "row"])
def test_cached_logits_match_the_training_forward(layout):
    model = tiny(layout)
    config = model.config
    text = text_ids(config)
    codes = torch.randint(0, config.codebook_size, (3, config.grid_size, config.grid_size))
    reference = model(text, codes).image_logits
    cache = model.new_cache()
    with torch.no_grad():
        steps = [model.prefill(text, cache)]
        flat = codes.flatten(1)
        for p in range(1, config.grid_size**2):
            steps.append(model.step(flat[:, p - 1], p, cache))
    torch.testing.assert_close(torch.stack(steps, 1), reference, atol=1e-4, rtol=1e-4)


def test_guided_cached_equals_full_recompute():
    model = tiny()
    text = text_ids(model.config)
    uncond = text_ids(model.config, b=1, seed=5)[0]
    kwargs = dict(guidance_scale=3.0, unconditional=uncond, top_k=8)
    assert torch.equal(draw(model, text, **kwargs), draw(model, text, use_cache=False, **kwargs))


def test_same_seed_same_images_other_seed_other_images():
    model = tiny()
    text = text_ids(model.config)
    assert torch.equal(draw(model, text, seed=3), draw(model, text, seed=3))
    assert not torch.equal(draw(model, text, seed=3), draw(model, text, seed=4))


def test_inpainting_keeps_unmasked_codes():
    model = tiny()
    config = model.config
    text = text_ids(config)
    given = torch.randint(0, config.codebook_size, (3, config.grid_size, config.grid_size))
    mask = completion_mask(config.grid_size, keep_rows=2)
    out = draw(model, text, codes=given, mask=mask)
    assert torch.equal(out[:, :2], given[:, :2])
    assert not torch.equal(out[:, 2:], given[:, 2:])
    free = torch.rand(config.grid_size, config.grid_size, generator=torch.Generator().manual_seed(0)) < 0.5
    out = draw(model, text, codes=given, mask=free)
    assert torch.equal(out[:, ~free], given[:, ~free])
    # The kept codes are context: with the cache they give what a full recompute gives.
    assert torch.equal(out, draw(model, text, codes=given, mask=free, use_cache=False))


def test_filter_logits():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    assert torch.isfinite(filter_logits(logits, top_k=2)[0, :2]).all()
    probs = logits.softmax(-1)[0]  # 0.64, 0.24, 0.09, 0.03
    kept = torch.isfinite(filter_logits(logits, top_p=0.8))[0]
    assert kept.tolist() == [True, True, False, False] and probs[:1].sum() < 0.8 <= probs[:2].sum()
    assert torch.isfinite(filter_logits(logits, top_p=0.1))[0].tolist() == [True, False, False, False]
    torch.testing.assert_close(filter_logits(logits, temperature=2.0), logits / 2)


def test_bad_arguments_are_named():
    model = tiny()
    config = model.config
    text = text_ids(config)
    with pytest.raises(ValueError, match="temperature must be positive"):
        draw(model, text, temperature=0)
    with pytest.raises(ValueError, match="top_k"):
        draw(model, text, top_k=0)
    with pytest.raises(ValueError, match="unconditional"):
        draw(model, text, guidance_scale=2.0)
    with pytest.raises(ValueError, match="mask must be 4x4"):
        draw(model, text, codes=torch.zeros(4, 4, dtype=torch.long), mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="codes to complete must be 4x4"):
        draw(model, text, codes=torch.zeros(2, 2, dtype=torch.long), mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="keep_rows"):
        completion_mask(4, 4)


def test_bf16_sampling_runs():
    model = tiny()
    out = draw(model, text_ids(model.config), autocast=True)
    assert out.shape == (3, 4, 4)


def test_draw_follows_the_probabilities():
    from dalle.sampling import draw

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5], [0.1, 0.0, 0.0, 0.9]]).repeat(2000, 1)
    out = draw(probs, torch.Generator().manual_seed(0)).view(2000, 2)
    assert set(out[:, 0].tolist()) == {1, 3} and set(out[:, 1].tolist()) == {0, 3}
    assert abs((out[:, 0] == 1).float().mean() - 0.5) < 0.05
    assert abs((out[:, 1] == 0).float().mean() - 0.1) < 0.03


@pytest.mark.parametrize("layout", LAYOUTS)
def test_step_at_a_tensor_position_equals_an_int_position(layout):
    """The CUDA graph path feeds positions as device tensors: same logits, same cache."""
    model = tiny(layout)
    config = model.config
    text = text_ids(config)
    codes = torch.randint(0, config.codebook_size, (3, config.grid_size**2))
    by_int, by_tensor = model.new_cache(), model.new_cache()
    with torch.no_grad():
        model.prefill(text, by_int)
        model.prefill(text, by_tensor)
        for p in range(1, config.grid_size**2):
            expected = model.step(codes[:, p - 1], p, by_int)
            torch.testing.assert_close(model.step(codes[:, p - 1], torch.tensor(p), by_tensor), expected,
                                       atol=0, rtol=0)
    assert all(torch.equal(a.k, b.k) and torch.equal(a.v, b.v) for a, b in zip(by_int, by_tensor))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("autocast", [False, True])
def test_cuda_graph_sampling_equals_eager(layout, autocast):
    model = tiny(layout).cuda()
    text = text_ids(model.config).cuda()
    uncond = text_ids(model.config, b=1, seed=5)[0]
    for kwargs in ({}, dict(guidance_scale=3.0, unconditional=uncond, top_k=8)):
        runs = [sample_codes(model, text, generator=torch.Generator("cuda").manual_seed(1), autocast=autocast,
                             cuda_graph=graph, **kwargs) for graph in (True, False)]
        assert torch.equal(*runs)
        assert len(runs[0].unique()) > 2


@pytest.mark.slow  # compiling the step takes 15-40 s on a 2-core CPU
def test_compiled_sampling_draws_the_same_codes_as_eager_with_and_without_guidance():
    model = tiny("sparse")
    text = text_ids(model.config)
    uncond = text_ids(model.config, b=1, seed=5)[0]
    for kwargs in ({}, dict(guidance_scale=3.0, unconditional=uncond, top_k=8)):
        compiled, eager = (draw(model, text, seed=1, compile=compile, **kwargs) for compile in (True, False))
        assert torch.equal(compiled, eager)
        assert len(eager.unique()) > 2
