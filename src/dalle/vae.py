"""Stage 1: the discrete VAE (paper §2.1, appendix A).

An encoder maps an image to a grid of logits over a codebook of K codes, a decoder maps (relaxed)
one-hot codes back to the parameters of a logit-Laplace distribution over pixels (or, as an
option, the mean of a Gaussian of fixed scale). Training uses
the Gumbel-softmax relaxation, soft in both passes, and maximises the ELB with a KL term to the
uniform prior. Module and parameter names mirror OpenAI's released `dall_e` package (with
`weight`/`bias` for its `w`/`b`) so that its weights import as a plain rename.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from dalle.config import VAEConfig
from dalle.errors import DalleError
from dalle.pretrained import PretrainedModel


def conv(n_in: int, n_out: int, kernel: int) -> nn.Conv2d:
    """A 'same' convolution initialised as in the released model: N(0, 1/fan_in), zero bias."""
    layer = nn.Conv2d(n_in, n_out, kernel, padding=(kernel - 1) // 2)
    nn.init.normal_(layer.weight, std=1 / math.sqrt(n_in * kernel**2))
    nn.init.zeros_(cast(torch.Tensor, layer.bias))  # Conv2d's bias=True default: never None
    return layer


class BottleneckBlock(nn.Module):
    """Residual bottleneck block: identity (1x1 conv if the width changes) + gain * residual.

    The residual path is four ReLU-conv pairs through n_out / 4 channels; the encoder uses kernels
    3,3,3,1 and the decoder 1,3,3,3. The residual is scaled by 1 / n_layers**2 where n_layers is
    the total number of blocks, so the network starts near the identity (appendix A.1).
    """

    def __init__(self, n_in: int, n_out: int, n_layers: int, kernels: tuple[int, ...]) -> None:
        super().__init__()
        n_hid = n_out // 4
        widths = [n_in, n_hid, n_hid, n_hid, n_out]
        self.id_path = conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        layers: list[tuple[str, nn.Module]] = []
        for i, k in enumerate(kernels):
            layers += [(f"relu_{i + 1}", nn.ReLU()), (f"conv_{i + 1}", conv(widths[i], widths[i + 1], k))]
        self.res_path = nn.Sequential(OrderedDict(layers))
        self.post_gain = 1 / n_layers**2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


def _group(n_in: int, n_out: int, config: VAEConfig, kernels: tuple[int, ...],
           resample: tuple[str, nn.Module] | None) -> nn.Sequential:
    n_layers = config.num_groups * config.blocks_per_group
    blocks: list[tuple[str, nn.Module]] = [
        (f"block_{i + 1}", BottleneckBlock(n_in if i == 0 else n_out, n_out, n_layers, kernels))
        for i in range(config.blocks_per_group)
    ]
    if resample is not None:
        blocks.append(resample)
    return nn.Sequential(OrderedDict(blocks))


class Encoder(nn.Module):
    """Image (mapped pixels) -> logits over the codebook, one per grid cell.

    7x7 input conv, then groups of widths hidden * (1, 2, 4, ...), max-pooled 2x between groups,
    then ReLU and a 1x1 conv to K logits.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        h, g = config.hidden, config.num_groups
        layers: list[tuple[str, nn.Module]] = [("input", conv(config.channels, h, 7))]
        for i in range(g):
            n_in, n_out = h * 2 ** max(i - 1, 0), h * 2**i
            pool = ("pool", nn.MaxPool2d(kernel_size=2)) if i < g - 1 else None
            layers.append((f"group_{i + 1}", _group(n_in, n_out, config, (3, 3, 3, 1), pool)))
        output = OrderedDict([("relu", nn.ReLU()), ("conv", conv(h * 2 ** (g - 1), config.codebook_size, 1))])
        layers.append(("output", nn.Sequential(output)))
        self.blocks = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Decoder(nn.Module):
    """(Relaxed) one-hot codes -> the likelihood's maps: logit-Laplace mu and ln b per pixel
    (Gaussian: mu only).

    1x1 input conv from K channels, groups of widths hidden * (..., 4, 2, 1) with nearest-neighbour
    2x upsampling between groups, then ReLU and a 1x1 conv.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        h, g = config.hidden, config.num_groups
        layers: list[tuple[str, nn.Module]] = [("input", conv(config.codebook_size, config.decoder_init, 1))]
        for i in range(g):
            n_out = h * 2 ** (g - 1 - i)
            n_in = config.decoder_init if i == 0 else 2 * n_out
            up = ("upsample", nn.Upsample(scale_factor=2, mode="nearest")) if i < g - 1 else None
            layers.append((f"group_{i + 1}", _group(n_in, n_out, config, (1, 3, 3, 3), up)))
        output = OrderedDict([("relu", nn.ReLU()), ("conv", conv(h, config.decoder_outputs, 1))])
        layers.append(("output", nn.Sequential(output)))
        self.blocks = nn.Sequential(OrderedDict(layers))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.blocks(z)

    def forward_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Decode integer codes (B, h, w): the 1x1 input conv on a one-hot is a column lookup."""
        first = cast(nn.Conv2d, self.blocks.input)
        table = first.weight[:, :, 0, 0].t()  # (K, decoder_init)
        x = F.embedding(codes, table) + cast(torch.Tensor, first.bias)  # conv() has a bias
        x = x.permute(0, 3, 1, 2)
        for name, module in self.blocks.named_children():
            if name != "input":
                x = module(x)
        return x


@dataclass
class VAEOutput:
    """One training forward pass: the loss and its parts, all per pixel value (nats)."""

    loss: torch.Tensor
    nll: torch.Tensor
    kl: torch.Tensor
    tau: float
    kl_weight: float
    reconstruction: torch.Tensor


def cosine_anneal(step: int, start: float, end: float, steps: int) -> float:
    """Half-cosine from `start` at step 0 to `end` at `steps`, constant after."""
    t = min(max(step, 0) / max(steps, 1), 1.0)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t))


class DiscreteVAE(PretrainedModel):
    """The dVAE: `encode` images to codes, `decode` codes to images, `forward` for training.

    Images are float tensors (B, C, H, W) in [0, 1]. Pixels are mapped to [eps, 1 - eps] before
    the encoder and the likelihood (the logit-Laplace needs them away from 0 and 1).
    """

    config_class = VAEConfig
    config: VAEConfig

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def parallel_units(self) -> list[nn.Module]:
        """The encoder's and decoder's groups (not the input and output convs): what FSDP shards
        one by one and activation checkpointing recomputes (`dalle.train.distributed`)."""
        return [module for coder in (self.encoder, self.decoder)
                for name, module in coder.blocks.named_children() if name.startswith("group_")]

    # -- pixels <-> the logit-Laplace domain (appendix A.3) --
    def map_pixels(self, x: torch.Tensor) -> torch.Tensor:
        eps = self.config.logit_laplace_eps
        return (1 - 2 * eps) * x + eps

    def unmap_pixels(self, x: torch.Tensor) -> torch.Tensor:
        eps = self.config.logit_laplace_eps
        return ((x - eps) / (1 - 2 * eps)).clamp(0, 1)

    def _check_images(self, images: torch.Tensor) -> None:
        c, s = self.config.channels, self.config.image_size
        if images.ndim != 4 or images.shape[1] != c or images.shape[2] % self.config.downsample \
                or images.shape[3] % self.config.downsample:
            raise DalleError(
                f"expected images of shape (B, {c}, H, W) with H, W multiples of "
                f"{self.config.downsample} (trained at {s}x{s}), got {tuple(images.shape)}"
            )

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder logits (B, K, h, w) for images in [0, 1]."""
        self._check_images(images)
        return self.encoder(self.map_pixels(images))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) for Stage 2: the argmax of the encoder logits, no noise (§2.2)."""
        return self.logits(images).argmax(dim=1)

    def reconstruct_from_stats(self, stats: torch.Tensor) -> torch.Tensor:
        """Decoder output (B, 2C or C, H, W) -> image in [0, 1]: phi^-1(sigmoid(mu)), clamped."""
        mu = stats[:, : self.config.channels].float()
        return self.unmap_pixels(torch.sigmoid(mu))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] from codes (B, h, w)."""
        if codes.dtype not in (torch.int32, torch.int64) or codes.ndim != 3:
            raise DalleError(f"expected integer codes of shape (B, h, w), got {codes.dtype} {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.config.codebook_size):
            raise DalleError(f"codes must lie in [0, {self.config.codebook_size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        return self.reconstruct_from_stats(self.decoder.forward_codes(codes.long()))

    def nll(self, images: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """Summed negative log-likelihood of images under the configured likelihood.

        logit-Laplace (appendix A.3): f(x | mu, b) = exp(-|logit(x) - mu| / b) / (2 b x (1 - x));
        Gaussian: N(x | sigmoid(mu), sigma^2); both on mapped pixels x.
        """
        x = self.map_pixels(images.float())
        if self.config.likelihood == "gaussian":
            sigma = self.config.gaussian_sigma
            per_value = (x - torch.sigmoid(stats.float())).square() / (2 * sigma**2)
            return per_value.sum() + x.numel() * math.log(sigma * math.sqrt(2 * math.pi))
        mu, log_b = stats.float().chunk(2, dim=1)
        logit_x = torch.log(x) - torch.log1p(-x)
        per_pixel = (logit_x - mu).abs() * torch.exp(-log_b) + log_b + math.log(2) + torch.log(x * (1 - x))
        return per_pixel.sum()

    def schedules(self, step: int) -> tuple[float, float]:
        """(tau, KL weight) at `step`: tau cosine-annealed, KL weight cosine-ramped from 0."""
        c = self.config
        tau = cosine_anneal(step, c.tau_start, c.tau_end, c.tau_steps)
        kl_weight = cosine_anneal(step, 0.0, c.kl_weight, c.kl_warmup_steps)
        return tau, kl_weight

    def forward(self, images: torch.Tensor, step: int = 0,
                gumbel_noise: torch.Tensor | None = None) -> VAEOutput:
        """Training loss at `step`: (NLL + beta * KL(q || uniform)) / number of pixel values.

        `gumbel_noise` (shaped like the logits) lets the caller choose the noise; by default it is
        drawn from torch's global RNG.
        """
        tau, kl_weight = self.schedules(step)
        logits = self.logits(images).float()
        if gumbel_noise is None:
            gumbel_noise = -torch.empty_like(logits).exponential_().log()
        # Soft in both passes (no straight-through): the decoder sees the relaxed sample itself.
        z = F.softmax((logits + gumbel_noise) / tau, dim=1)
        stats = self.decoder(z)
        log_q = F.log_softmax(logits, dim=1)
        kl = (log_q.exp() * (log_q + math.log(self.config.codebook_size))).sum()
        n_values = images.numel()
        nll = self.nll(images, stats)
        loss = (nll + kl_weight * kl) / n_values
        return VAEOutput(loss=loss, nll=nll.detach() / n_values, kl=kl.detach() / n_values,
                          tau=tau, kl_weight=kl_weight,
                          reconstruction=self.reconstruct_from_stats(stats.detach()))
