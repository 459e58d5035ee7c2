"""Configuration dataclasses with a JSON round-trip, the models' named presets, and each stage's
training defaults.

Every model takes one config and nothing else (nanoGPT style). Each model config has named presets
(`VAEConfig.preset("small")`, torchtitan's "flavours"): `tiny` for tests, `small` the size the
bundled pipelines were trained at, `base` a few hundred million parameters at the paper's 32x32
grid, and `paper` the published model (`VAEConfig.paper()` is the released dVAE of Ramesh et al.
2021 §2.1). `VAE_TRAINING`, `PRIOR_TRAINING` and `CLIP_TRAINING` are each stage's optimiser
defaults, the paper's AdamW settings where it gives them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from dalle.errors import DalleError

T = TypeVar("T", bound="JSONConfig")


def _checked(name: str, hint: Any, value: Any) -> Any:
    """`value` read from JSON as the field type `hint` says, or a DalleError naming the field."""
    if isinstance(hint, type) and issubclass(hint, JSONConfig):  # a nested config
        return hint.from_dict(value)
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
        if typing.get_origin(option) is tuple and isinstance(value, (list, tuple)):
            items = typing.get_args(option)
            if len(value) == len(items):  # JSON has no tuples: a list comes back as one
                return tuple(_checked(f"{name}[{i}]", item, v) for i, (item, v) in enumerate(zip(items, value)))
    wanted = " or ".join("null" if o is type(None) else f"a list of {len(typing.get_args(o))} numbers"
                         if typing.get_origin(o) is tuple else o.__name__ for o in options)
    raise DalleError(f"{name} must be {wanted}, got {json.dumps(value)[:60]}")


class JSONConfig:
    """Mixin for dataclass configs: `to_dict` / `from_dict` / `save` / `load` with clear errors.

    `renamed` maps a field's earlier name to its current one, for files saved before the rename.
    """

    renamed: ClassVar[dict[str, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        if not isinstance(data, dict):
            raise DalleError(f"a {cls.__name__} must be a JSON object, got {type(data).__name__}")
        # Files written before a field was renamed still load.
        data = {cls.renamed.get(key, key): value for key, value in data.items()}
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise DalleError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        kwargs = {key: _checked(f"{cls.__name__}.{key}", hints[key], value) for key, value in data.items()}
        missing = [f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                   if f.name not in kwargs and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise DalleError(f"{cls.__name__} needs field(s) {', '.join(missing)}")
        return cls(**kwargs)

    @classmethod
    def presets(cls: type[T]) -> dict[str, T]:
        """The named configurations of this class (none unless a subclass defines them)."""
        return {}

    @classmethod
    def preset(cls: type[T], name: str, **overrides: Any) -> T:
        """The preset called `name`, with `overrides` replacing some of its fields."""
        presets = cls.presets()
        if name not in presets:
            choices = ", ".join(presets) or "none"
            raise DalleError(f"no {cls.__name__} preset {name!r}; choose from {choices}")
        return dataclasses.replace(presets[name], **overrides)  # type: ignore[type-var]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config file at {path}")
        try:
            return cls.from_json(path.read_text())
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise DalleError(f"{path} is not a valid {cls.__name__}: {e}") from None


@dataclasses.dataclass(frozen=True)
class VAEConfig(JSONConfig):
    """The discrete VAE of paper §2.1 / appendix A.

    `downsample` is the grid factor f (image_size / grid size); the encoder has log2(f) + 1 groups
    of `blocks_per_group` bottleneck resblocks, widths `hidden * 2**g`, max-pooled between groups.
    """

    image_size: int = 256
    channels: int = 3
    downsample: int = 8
    codebook_size: int = 8192  # K

    renamed: ClassVar[dict[str, str]] = {"vocab_size": "codebook_size"}
    hidden: int = 256
    blocks_per_group: int = 2
    decoder_init: int = 128
    # Gumbel-softmax temperature, cosine annealed (paper: 1 -> 1/16).
    tau_start: float = 1.0
    tau_end: float = 1.0 / 16
    tau_steps: int = 150_000
    # KL weight, cosine ramp (paper: 0 -> 6.6 over the first 5k updates).
    kl_weight: float = 6.6
    kl_warmup_steps: int = 5_000
    # Logit-Laplace pixel mapping (paper: eps = 0.1).
    logit_laplace_eps: float = 0.1
    # The pixel likelihood: "logit-laplace" (paper, appendix A.3; mu and a learned scale b per
    # pixel) or "gaussian" (mean only, fixed `gaussian_sigma`, on the same mapped pixels). On
    # black-background data a learned scale becomes tiny on the background and wide on objects,
    # so edges outweigh colour and the codes carry geometry but not colour
    # (docs/history.md, "Stage 1 on shapes").
    likelihood: str = "logit-laplace"
    gaussian_sigma: float = 0.07

    def __post_init__(self) -> None:
        if self.downsample < 2 or self.downsample & (self.downsample - 1):
            raise DalleError(f"downsample must be a power of two >= 2, got {self.downsample}")
        if self.image_size % self.downsample:
            raise DalleError(
                f"image_size {self.image_size} is not divisible by downsample {self.downsample}"
            )
        if min(self.image_size, self.channels, self.hidden, self.blocks_per_group) < 1:
            raise DalleError("image_size, channels, hidden and blocks_per_group must be positive")
        if self.hidden % 4 or self.decoder_init < 1 or self.codebook_size < 2:
            raise DalleError("hidden must be a multiple of 4, decoder_init positive and codebook_size at least 2")
        if self.blocks_per_group > MAX_LAYERS or self.downsample > 2**16:
            raise DalleError(f"blocks_per_group must be at most {MAX_LAYERS} and downsample at most "
                             f"65536, got {self.blocks_per_group} and {self.downsample}")
        if not 0 < self.logit_laplace_eps < 0.5:
            raise DalleError("logit_laplace_eps must be in (0, 0.5)")
        if self.likelihood not in ("logit-laplace", "gaussian"):
            raise DalleError(f"likelihood must be 'logit-laplace' or 'gaussian', got {self.likelihood!r}")
        if self.gaussian_sigma <= 0:
            raise DalleError(f"gaussian_sigma must be positive, got {self.gaussian_sigma}")

    @property
    def num_groups(self) -> int:
        return int(math.log2(self.downsample)) + 1

    @property
    def grid_size(self) -> int:
        return self.image_size // self.downsample

    @property
    def decoder_outputs(self) -> int:
        """Decoder output maps: mu and ln b per channel for the logit-Laplace, mu for the Gaussian."""
        return 2 * self.channels if self.likelihood == "logit-laplace" else self.channels

    @classmethod
    def paper(cls) -> VAEConfig:
        """The released dVAE: 256 px, f = 8, K = 8192, 256 hidden, 2 blocks per group."""
        return cls()

    @classmethod
    def tiny(cls) -> VAEConfig:
        """A few-thousand-parameter model for tests."""
        return cls(image_size=16, downsample=4, codebook_size=32, hidden=8, blocks_per_group=1,
                   decoder_init=8, tau_steps=100, kl_warmup_steps=20)

    @classmethod
    def small(cls) -> VAEConfig:
        """The bundled pipelines' dVAE: 64 px -> 8x8 codes of 512, 0.8M parameters. Its tau and
        KL schedules are for VAE_TRAINING's 10,000 steps; a run of another length gets its own
        (`dalle.train.runs.VAERun`)."""
        return cls(image_size=64, downsample=8, codebook_size=512, hidden=32, blocks_per_group=1,
                   decoder_init=64, tau_steps=10_000, kl_warmup_steps=5_000)

    @classmethod
    def base(cls) -> VAEConfig:
        """The paper's 256 px -> 32x32 grid of 8192 codes at half its width."""
        return cls(hidden=128, decoder_init=64)

    @classmethod
    def presets(cls) -> dict[str, VAEConfig]:
        return {"tiny": cls.tiny(), "small": cls.small(), "base": cls.base(), "paper": cls.paper()}


@dataclasses.dataclass(frozen=True)
class TokenizerConfig(JSONConfig):
    """The text side of paper §2.2: lower-cased byte-level BPE, a fixed text length.

    Ids: [0, bpe_vocab_size) are BPE tokens, then one pad id per text position (paper: 256
    distinct pads), then the start-of-image id; `text_vocab_size` counts them all (the prior's and
    CLIP's `text_vocab_size`). `bpe_vocab_size` is the vocabulary BPE training actually produced
    (at most the size asked for).
    """

    renamed: ClassVar[dict[str, str]] = {"vocab_size": "bpe_vocab_size"}

    bpe_vocab_size: int = 16_384
    text_length: int = 256
    bpe_dropout: float = 0.1  # paper: 10%, applied only when encoding for training
    alphabet: str = ""  # every character of the (normalised) training captions; "" if unknown

    def __post_init__(self) -> None:
        if self.bpe_vocab_size < 1 or self.text_length < 1:
            raise DalleError("bpe_vocab_size and text_length must be positive")
        if not 0 <= self.bpe_dropout < 1:
            raise DalleError(f"bpe_dropout must be in [0, 1), got {self.bpe_dropout}")

    @property
    def pad_id(self) -> int:
        """The pad id of text position 0; position i holds pad_id + i."""
        return self.bpe_vocab_size

    @property
    def start_of_image_id(self) -> int:
        return self.bpe_vocab_size + self.text_length

    @property
    def text_vocab_size(self) -> int:
        return self.bpe_vocab_size + self.text_length + 1


LAYOUTS = ("sparse", "dense", "row", "column", "conv")
# Layers a config may ask for: far beyond any model here (the paper's prior has 64), but a bound,
# so that a damaged or hostile config.json cannot build modules until memory runs out.
MAX_LAYERS = 1024


@dataclasses.dataclass(frozen=True)
class PriorConfig(JSONConfig):
    """The transformer of paper §2.2 / appendix B; defaults are the 12B model.

    `text_vocab_size` counts every id of the tokenizer (BPE, one pad per position, start-of-image),
    `text_length` the text positions (pads included), `codebook_size` the dVAE codebook and
    `grid_size` its code grid side. `layout` "sparse" is the paper's schedule (row and column
    layers, convolutional last); "dense" is the causal baseline; a layout name uses it everywhere.
    """

    text_vocab_size: int = 16_384 + 256 + 1
    text_length: int = 256
    codebook_size: int = 8192
    grid_size: int = 32
    dim: int = 3968
    depth: int = 64
    heads: int = 62
    head_dim: int = 64
    mlp_ratio: int = 4
    dropout: float = 0.0
    layout: str = "sparse"
    row_window: int | None = None  # image tokens a row layer looks back; default grid_size
    conv_kernel: int = 11
    text_loss_weight: float = 1 / 8
    image_loss_weight: float = 7 / 8

    renamed: ClassVar[dict[str, str]] = {"image_vocab_size": "codebook_size"}

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise DalleError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if min(self.text_vocab_size, self.text_length, self.codebook_size, self.grid_size,
               self.dim, self.depth, self.heads, self.head_dim, self.mlp_ratio) < 1:
            raise DalleError("vocabulary sizes, lengths and widths must be positive")
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise DalleError(f"conv_kernel must be odd, got {self.conv_kernel}")
        if self.depth > MAX_LAYERS:
            raise DalleError(f"depth must be at most {MAX_LAYERS} (the paper's is 64), got {self.depth}")

    @property
    def image_tokens(self) -> int:
        return self.grid_size**2

    @classmethod
    def paper(cls) -> PriorConfig:
        """The 12B model: 64 layers, 62 heads of 64, 256 text + 32x32 image tokens."""
        return cls()

    @classmethod
    def tiny(cls) -> PriorConfig:
        """A model of a few thousand parameters for tests."""
        return cls(text_vocab_size=40, text_length=6, codebook_size=16, grid_size=4, dim=32,
                   depth=3, heads=2, head_dim=16, conv_kernel=3)

    @classmethod
    def small(cls) -> PriorConfig:
        """The bundled pipelines' prior: 8 layers of width 256 (8 heads of 32); 6.8M parameters
        with the shapes vocabularies. A run takes the vocabularies and grid from its data."""
        return cls(dim=256, depth=8, heads=8, head_dim=32)

    @classmethod
    def base(cls) -> PriorConfig:
        """353M parameters at the paper's 32x32 grid and vocabularies: 24 layers of width 1024
        (16 heads of 64)."""
        return cls(dim=1024, depth=24, heads=16, head_dim=64)

    @classmethod
    def presets(cls) -> dict[str, PriorConfig]:
        return {"tiny": cls.tiny(), "small": cls.small(), "base": cls.base(), "paper": cls.paper()}


@dataclasses.dataclass(frozen=True)
class TrainConfig(JSONConfig):
    """One training run of any stage (the loop in `dalle.train` is shared by every model).

    `batch_size` is the global batch: under torchrun each of N processes takes batch_size / N.
    """

    steps: int = 10_000
    batch_size: int = 64
    lr: float = 1e-3
    schedule: str = "cosine"  # cosine | linear | constant, after a linear warm-up
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    grad_clip: float = 0.0  # max gradient norm; 0 disables clipping
    ema_decay: float = 0.999  # 0 disables the EMA
    export: str = "ema"  # which weights `model/` receives at the end: ema | raw
    keep_best: bool = False  # model/ receives the weights of the lowest validation loss, not the last
    bf16: bool = False  # bf16 autocast (CPU and CUDA)
    activation_checkpointing: bool = False  # recompute each block in the backward pass
    fsdp: bool = False  # shard over torchrun processes with FSDP2 instead of DDP
    compile: bool = False  # torch.compile each block; a failure warns once and trains eagerly
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    log_every: int = 50
    log_format: str = "csv"  # csv | tensorboard | wandb (metrics.csv is always written)
    sample_every: int = 500
    eval_every: int = 500  # steps between validation passes, when the stage has one
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "linear", "constant"):
            raise DalleError(f"schedule must be cosine, linear or constant, got {self.schedule!r}")
        if self.export not in ("ema", "raw"):
            raise DalleError(f"export must be ema or raw, got {self.export!r}")
        if self.log_format not in ("csv", "tensorboard", "wandb"):
            raise DalleError(f"log_format must be csv, tensorboard or wandb, got {self.log_format!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise DalleError("steps and batch_size must be positive")
        if not 0 <= self.ema_decay < 1:
            raise DalleError("ema_decay must be in [0, 1)")


# Each stage's training defaults; the run configs of `dalle.train.runs` start from them.
# The dVAE: AdamW as in appendix A.2 (betas 0.9 / 0.999, weight decay 1e-4); lr 2e-3 with a short
# warm-up suits the small dVAE at batch 16 on a CPU.
VAE_TRAINING = TrainConfig(steps=10_000, batch_size=16, lr=2e-3, warmup_steps=100,
                            betas=(0.9, 0.999), weight_decay=1e-4, log_every=250,
                            sample_every=1000, checkpoint_every=1000)
# The prior: appendix B.2's AdamW (betas 0.9 / 0.96, weight decay 4.5e-2) and gradient clipping at
# norm 4; the paper's lr 4.5e-4 with 5,000 warm-up steps is for batch 1024 over 12B parameters.
PRIOR_TRAINING = TrainConfig(steps=5_000, batch_size=64, lr=1e-3, warmup_steps=200,
                             betas=(0.9, 0.96), weight_decay=4.5e-2, grad_clip=4.0, log_every=100,
                             sample_every=500, eval_every=500, checkpoint_every=500)
# CLIP: Radford et al. 2021's betas for transformers (0.9 / 0.98) with decoupled weight decay (0.1
# here, theirs 0.2), clipped at norm 1.
CLIP_TRAINING = TrainConfig(steps=900, batch_size=64, lr=1e-3, warmup_steps=100,
                            betas=(0.9, 0.98), weight_decay=0.1, grad_clip=1.0, ema_decay=0.99,
                            log_every=50, sample_every=0, eval_every=300, checkpoint_every=300)


@dataclasses.dataclass(frozen=True)
class CLIPConfig(JSONConfig):
    """The contrastive text-image model that reranks samples (paper §2.6; Radford et al. 2021).

    Image tower: `log2(patch_size)` stride-2 3x3 convolutions (a conv stem, which trains small
    ViTs far better than a linear patchify; Xiao et al. 2021) give a grid of tokens for a
    transformer. Text tower: a transformer over the tokenizer's ids. `text_vocab_size` and
    `text_length` are the tokenizer's `text_vocab_size` and `text_length` (as in PriorConfig), so its BPE
    vocabulary is `text_vocab_size - text_length - 1`: every higher id is a pad or start-of-image.
    The defaults suit 64x64 images on a CPU.
    """

    image_size: int = 64
    patch_size: int = 8
    image_width: int = 128
    image_depth: int = 4
    image_heads: int = 4
    text_vocab_size: int = 16_384 + 256 + 1
    text_length: int = 256
    text_width: int = 128
    text_depth: int = 3
    text_heads: int = 4
    mlp_ratio: int = 4
    embed_dim: int = 128
    logit_scale_init: float = math.log(1 / 0.07)  # CLIP: temperature 0.07 at the start
    logit_scale_max: float = 100.0  # CLIP: the scale is clamped at 100

    def __post_init__(self) -> None:
        if self.patch_size < 2 or self.patch_size & (self.patch_size - 1):
            raise DalleError(f"patch_size must be a power of two >= 2, got {self.patch_size}")
        if self.image_size % self.patch_size:
            raise DalleError(f"image_size {self.image_size} is not divisible by patch_size "
                             f"{self.patch_size}")
        if min(self.image_width, self.image_depth, self.image_heads, self.text_length,
               self.text_width, self.text_depth, self.text_heads, self.mlp_ratio,
               self.embed_dim) < 1:
            raise DalleError("widths, depths, heads and lengths must be positive")
        if max(self.image_depth, self.text_depth) > MAX_LAYERS:
            raise DalleError(f"image_depth and text_depth must be at most {MAX_LAYERS}")
        if self.image_width % self.image_heads or self.text_width % self.text_heads:
            raise DalleError("image_width and text_width must be multiples of their heads")
        if self.bpe_vocab_size < 1:
            raise DalleError(f"text_vocab_size {self.text_vocab_size} leaves no BPE ids after "
                             f"{self.text_length} pads and start-of-image")
        if self.logit_scale_max <= 0 or self.logit_scale_init > math.log(self.logit_scale_max):
            raise DalleError("logit_scale_max must be positive and logit_scale_init at most its log")

    @property
    def bpe_vocab_size(self) -> int:
        """Ids below this are BPE tokens; the rest are pads and start-of-image."""
        return self.text_vocab_size - self.text_length - 1

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def tiny(cls) -> CLIPConfig:
        """A model of a few thousand parameters for tests."""
        return cls(image_size=16, patch_size=4, image_width=16, image_depth=1, image_heads=2,
                   text_vocab_size=40, text_length=6, text_width=16, text_depth=1, text_heads=2,
                   mlp_ratio=2, embed_dim=8)

    @classmethod
    def small(cls) -> CLIPConfig:
        """The bundled pipelines' CLIP (the defaults): 64 px, towers of width 128."""
        return cls()

    @classmethod
    def base(cls) -> CLIPConfig:
        """ViT-B/16's towers for 256 px images: image width 768, text width 512, 12 layers each
        (Radford et al. 2021)."""
        return cls(image_size=256, patch_size=16, image_width=768, image_depth=12, image_heads=12,
                   text_width=512, text_depth=12, text_heads=8, embed_dim=512)

    @classmethod
    def presets(cls) -> dict[str, CLIPConfig]:
        return {"tiny": cls.tiny(), "small": cls.small(), "base": cls.base()}


# Candidates per prompt, and so images: twice the 512 per caption the paper reranks (§2.6), and a
# bound on the memory one prompt's images take. `dalle serve` caps each request lower
# (dalle.serve.schemas), since its users share one machine.
MAX_CANDIDATES = 1024


@dataclasses.dataclass(frozen=True)
class SamplingConfig(JSONConfig):
    """A pipeline's default sampling settings (`sampling.json`), the ones its model card reports.

    `dalle generate`, `dalle eval` and the server use them for every option a request leaves out.
    """

    temperature: float = 1.0
    top_k: int | None = None  # None: all codes
    top_p: float | None = None  # None: no nucleus filtering
    guidance_scale: float = 1.0  # classifier-free guidance; 1 = off

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise DalleError(f"temperature must be positive, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise DalleError(f"top_k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise DalleError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.guidance_scale < 1:
            raise DalleError(f"guidance_scale must be at least 1 (1 = off), got {self.guidance_scale}")

    def updated(self, **overrides: Any) -> SamplingConfig:
        """These settings with every override that is not None applied."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})
