import math

import pytest
import torch
import torch.nn.functional as F

from dalle.config import VAEConfig
from dalle.vae import DiscreteVAE, cosine_anneal


@pytest.fixture
def model():
    torch.manual_seed(0)
    return DiscreteVAE(VAEConfig.tiny())


def test_paper_preset_parameter_counts():
    with torch.device("meta"):
        m = DiscreteVAE(VAEConfig.paper())
    enc = sum(p.numel() for p in m.encoder.parameters())
    dec = sum(p.numel() for p in m.decoder.parameters())
    # The released dall_e Encoder / Decoder have 53,786,240 and 43,829,766 parameters.
    assert enc == 53_786_240
    assert dec == 43_829_766


@pytest.mark.parametrize("downsample,groups", [(4, 3), (8, 4)])
def test_shapes_and_grid(downsample, groups):
    c = VAEConfig(image_size=32, downsample=downsample, codebook_size=16, hidden=8, blocks_per_group=1, decoder_init=8)
    m = DiscreteVAE(c)
    assert len([n for n, _ in m.encoder.blocks.named_children() if n.startswith("group")]) == groups
    x = torch.rand(2, 3, 32, 32)
    logits = m.logits(x)
    assert logits.shape == (2, 16, 32 // downsample, 32 // downsample)
    codes = m.encode(x)
    assert codes.shape == (2, 32 // downsample, 32 // downsample)
    assert torch.equal(codes, logits.argmax(1))
    assert m.decode(codes).shape == x.shape


def test_residual_gain(model):
    n_layers = model.config.num_groups * model.config.blocks_per_group
    block = model.encoder.blocks.group_1.block_1
    assert block.post_gain == 1 / n_layers**2
    kernels = [m.kernel_size[0] for m in block.res_path if isinstance(m, torch.nn.Conv2d)]
    assert kernels == [3, 3, 3, 1]
    kernels = [m.kernel_size[0] for m in model.decoder.blocks.group_1.block_1.res_path if isinstance(m, torch.nn.Conv2d)]
    assert kernels == [1, 3, 3, 3]


def test_decode_from_codes_equals_one_hot_decoder(model):
    codes = torch.randint(0, model.config.codebook_size, (3, 4, 4))
    one_hot = F.one_hot(codes, model.config.codebook_size).permute(0, 3, 1, 2).float()
    expected = model.reconstruct_from_stats(model.decoder(one_hot))
    torch.testing.assert_close(model.decode(codes), expected, atol=1e-6, rtol=1e-5)


def test_logit_laplace_is_a_density(model):
    # Integrating f(x | mu, b) over the mapped range [eps, 1 - eps] gives (almost) 1 for a mu inside it.
    eps = model.config.logit_laplace_eps
    mu, log_b = torch.tensor(0.3), torch.tensor(-1.0)
    x = torch.linspace(eps, 1 - eps, 200_001, dtype=torch.float64)[1:-1]
    logit = torch.log(x) - torch.log1p(-x)
    density = torch.exp(-(logit - mu).abs() / log_b.exp()) / (2 * log_b.exp() * x * (1 - x))
    mass = torch.trapezoid(density, x)
    assert 0.97 < float(mass) <= 1.0


def test_nll_matches_formula(model):
    images = torch.rand(1, 3, 16, 16)
    stats = torch.randn(1, 6, 16, 16)
    eps = 0.1
    x = (1 - 2 * eps) * images + eps
    mu, log_b = stats[:, :3], stats[:, 3:]
    b = log_b.exp()
    f = torch.exp(-(torch.logit(x) - mu).abs() / b) / (2 * b * x * (1 - x))
    torch.testing.assert_close(model.nll(images, stats), -f.log().sum(), rtol=1e-4, atol=1e-3)


def test_gaussian_likelihood():
    torch.manual_seed(0)
    model = DiscreteVAE(VAEConfig(**{**VAEConfig.tiny().to_dict(), "likelihood": "gaussian",
                                      "gaussian_sigma": 0.05}))
    images = torch.rand(2, 3, 16, 16)
    stats = model.decoder(F.softmax(model.logits(images), dim=1))
    assert stats.shape == (2, 3, 16, 16)  # the mean only: no scale maps
    x = 0.8 * images + 0.1
    expected = -torch.distributions.Normal(torch.sigmoid(stats), 0.05).log_prob(x).sum()
    torch.testing.assert_close(model.nll(images, stats), expected, rtol=1e-5, atol=1e-2)
    assert model.decode(model.encode(images)).shape == images.shape
    out = model(images, step=10)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    with pytest.raises(ValueError, match="likelihood must be"):
        VAEConfig(likelihood="laplace")


def test_schedules(model):
    c = model.config
    assert model.schedules(0) == (c.tau_start, 0.0)
    tau, beta = model.schedules(10**9)
    assert tau == pytest.approx(c.tau_end) and beta == pytest.approx(c.kl_weight)
    assert cosine_anneal(50, 1.0, 0.0, 100) == pytest.approx(0.5)
    taus = [model.schedules(s)[0] for s in range(0, c.tau_steps + 1, 10)]
    assert all(a >= b for a, b in zip(taus, taus[1:]))


def test_loss_is_normalised_and_kl_is_to_uniform(model):
    images = torch.rand(2, 3, 16, 16)
    out = model(images, step=10**9)
    assert out.loss.ndim == 0
    # KL(q || uniform) computed independently
    logits = model.logits(images)
    q = logits.softmax(1)
    kl = (q * (q.log() + math.log(model.config.codebook_size))).sum() / images.numel()
    torch.testing.assert_close(out.kl, kl.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.loss.detach(), out.nll + model.config.kl_weight * out.kl, rtol=1e-5, atol=1e-6)


def test_relaxation_is_soft_in_both_passes(model):
    # With given noise, the decoder input is softmax((logits + g) / tau): gradients reach the encoder
    images = torch.rand(2, 3, 16, 16)
    noise = torch.zeros(2, model.config.codebook_size, 4, 4)
    out = model(images, step=0, gumbel_noise=noise)
    out.loss.backward()
    assert model.encoder.blocks.input.weight.grad.abs().sum() > 0
    logits = model.logits(images)
    expected = model.reconstruct_from_stats(model.decoder(F.softmax(logits / 1.0, dim=1)))
    torch.testing.assert_close(out.reconstruction, expected.detach(), atol=1e-5, rtol=1e-4)


def test_save_and_load(model, tmp_path):
    model.save_pretrained(tmp_path / "vae")
    assert {p.name for p in (tmp_path / "vae").iterdir()} == {"config.json", "model.safetensors"}
    loaded = DiscreteVAE.from_pretrained(tmp_path / "vae")
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(loaded.encode(x), model.encode(x))


def test_config_weight_mismatch_is_clear(model, tmp_path):
    model.save_pretrained(tmp_path / "vae")
    other = VAEConfig.tiny().__class__(**{**VAEConfig.tiny().to_dict(), "codebook_size": 64})
    other.save(tmp_path / "vae" / "config.json")
    with pytest.raises(ValueError, match="does not match"):
        DiscreteVAE.from_pretrained(tmp_path / "vae")


def test_bad_inputs_are_named(model):
    with pytest.raises(ValueError, match="expected images"):
        model.encode(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="codes must lie"):
        model.decode(torch.full((1, 4, 4), 999))


def test_bf16_autocast_runs(model):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(2, 3, 16, 16), step=3)
    assert torch.isfinite(out.loss)
