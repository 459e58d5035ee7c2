"""The pipeline directory: tokenizer, dVAE, prior and CLIP together; text in, images out.

    pipeline/
      tokenizer/   tokenizer.json + config.json
      vae/         config.json + model.safetensors
      prior/       config.json + model.safetensors
      clip/        config.json + model.safetensors   (optional: without it, no reranking)
      sampling.json  default temperature, top-k, top-p, guidance  (optional: defaults are off)
      README.md    the model card

`DallePipeline.__call__` encodes the prompt, samples `candidates` code grids per image with the
prior (paper §2.6), decodes them with the dVAE, and when there are more candidates than images
keeps the ones CLIP scores highest against the prompt (the paper reranked 512 per caption).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dalle.config import SamplingConfig
from dalle.dvae import DiscreteVAE
from dalle.prior import Prior
from dalle.sampling import completion_mask, sample_codes
from dalle.text import TextTokenizer
from dalle.utils import ensure_writable_dir, resolve_device

PARTS = ("tokenizer", "vae", "prior", "clip")
SAMPLING_FILE = "sampling.json"
BUNDLED_DIR = Path(__file__).parent / "bundled"  # the pipelines that ship with the package


def bundled_pipelines() -> list[str]:
    """Names of the pipelines shipped inside the package (`shapes`, `emoji`)."""
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "prior").is_dir()) if BUNDLED_DIR.is_dir() else []


def resolve_pipeline(name_or_dir: str | Path) -> Path:
    """A bundled pipeline's name, or else a pipeline directory (write `./shapes` for a local
    folder that shares a bundled name)."""
    if isinstance(name_or_dir, str) and name_or_dir in bundled_pipelines():
        return BUNDLED_DIR / name_or_dir
    return Path(name_or_dir)


@dataclass
class Generation:
    """What one prompt produced: the kept images, best first, and every candidate's CLIP score."""

    prompt: str
    images: torch.Tensor  # (n, 3, H, W) in [0, 1]
    codes: torch.Tensor  # (n, G, G)
    scores: torch.Tensor | None  # (n,) CLIP scores of the kept images; None without CLIP


def check_parts(tokenizer: TextTokenizer, vae: DiscreteVAE, prior: Prior, clip=None) -> None:
    """Name any mismatch between the parts' vocabularies and grids."""
    p, v = prior.config, vae.config
    problems = tokenizer.mismatches(p.text_vocab_size, p.text_length, "the prior")
    if v.vocab_size != p.image_vocab_size or v.grid_size != p.grid_size:
        problems.append(f"the dVAE ({v.vocab_size} codes, {v.grid_size}x{v.grid_size} grid) does "
                        f"not match the prior ({p.image_vocab_size} codes, "
                        f"{p.grid_size}x{p.grid_size} grid)")
    if clip is not None:
        problems += tokenizer.mismatches(clip.config.text_vocab_size, clip.config.text_length, "CLIP")
    if problems:
        raise ValueError("; ".join(problems))


class DallePipeline:
    """Tokenizer + dVAE + prior (+ CLIP) loaded from one directory."""

    def __init__(self, tokenizer: TextTokenizer, vae: DiscreteVAE, prior: Prior, clip=None,
                 sampling: SamplingConfig | None = None) -> None:
        check_parts(tokenizer, vae, prior, clip)
        self.tokenizer, self.vae, self.prior, self.clip = tokenizer, vae.eval(), prior.eval(), clip
        self.sampling = sampling or SamplingConfig()
        if clip is not None:
            clip.eval()

    @property
    def device(self) -> torch.device:
        return self.prior.image_head.weight.device

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> DallePipeline:
        """Load from a pipeline directory or a bundled pipeline's name (`shapes`, `emoji`)."""
        from dalle.clip import CLIP

        directory = resolve_pipeline(directory)
        if not directory.is_dir():
            names = ", ".join(bundled_pipelines()) or "none installed"
            raise FileNotFoundError(f"no pipeline directory at {directory} (bundled pipelines: {names})")
        missing = [part for part in PARTS[:3] if not (directory / part).is_dir()]
        if missing:
            raise FileNotFoundError(f"{directory} is not a pipeline: it has no {', '.join(missing)}/")
        target = resolve_device(device)
        clip = CLIP.from_pretrained(directory / "clip", target) if (directory / "clip").is_dir() else None
        sampling = directory / SAMPLING_FILE
        return cls(TextTokenizer.from_pretrained(directory / "tokenizer"),
                   DiscreteVAE.from_pretrained(directory / "vae", target),
                   Prior.from_pretrained(directory / "prior", target), clip,
                   SamplingConfig.load(sampling) if sampling.exists() else None)

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write the parts' directories; `dtype` (e.g. torch.bfloat16) stores weights in it."""
        directory = ensure_writable_dir(directory)
        self.tokenizer.save_pretrained(directory / "tokenizer")
        for part in ("vae", "prior", "clip"):
            model = getattr(self, part)
            if model is not None:
                model.save_pretrained(directory / part, dtype=dtype)
        self.sampling.save(directory / SAMPLING_FILE)
        return directory

    def to(self, device: str | torch.device) -> DallePipeline:
        for model in (self.vae, self.prior, self.clip):
            if model is not None:
                model.to(device)
        return self

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """The prompt's text ids, with a one-line error for a prompt that cannot condition."""
        if not prompt.strip():
            raise ValueError("the prompt is empty")
        unknown = self.tokenizer.unknown_characters(prompt)
        if len(unknown) == len(set(prompt.lower()) - {" "}):
            raise ValueError(f"the prompt has no character this model's captions ever used "
                             f"({''.join(unknown)!r})")
        ids = self.tokenizer.encode(prompt)
        return ids.to(self.device)

    @torch.no_grad()
    def rerank(self, prompt_ids: torch.Tensor, images: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the `keep` images CLIP scores highest against the prompt, and their scores."""
        if self.clip is None:
            raise ValueError("this pipeline has no CLIP model to rerank with")
        scores = self.clip.score(images, prompt_ids.expand(len(images), -1))
        best = scores.argsort(descending=True)[:keep]
        return best, scores[best]

    @torch.no_grad()
    def __call__(self, prompt: str, *, images: int = 4, candidates: int | None = None,
                 temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, guidance_scale: float | None = None,
                 seed: int = 0, init_image: torch.Tensor | None = None,
                 keep_rows: int | None = None, batch_size: int = 16, autocast: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> Generation:
        """Generate `images` pictures for `prompt`, each the best of `candidates / images` by CLIP.

        Sampling options left as None take the pipeline's defaults (`self.sampling`).
        init_image + keep_rows: complete an image from the first `keep_rows` rows of its codes.
        progress(done, total) is called with image positions sampled so far.
        """
        candidates = candidates or images
        if images < 1:
            raise ValueError(f"images must be at least 1, got {images}")
        if candidates < images:
            raise ValueError(f"candidates ({candidates}) must be at least the number of images "
                             f"kept ({images})")
        if candidates > images and self.clip is None:
            raise ValueError("this pipeline has no CLIP model to rerank with; ask for as many "
                             "candidates as images")
        sampling = self.sampling.updated(temperature=temperature, top_k=top_k, top_p=top_p,
                                         guidance_scale=guidance_scale).to_dict()
        ids = self.encode_prompt(prompt)
        codes = mask = None
        grid = self.prior.config.grid_size
        if init_image is not None:
            size = self.vae.config.image_size
            if tuple(init_image.shape[-3:]) != (3, size, size):
                raise ValueError(f"the image to complete must be 3x{size}x{size}, got "
                                 f"{'x'.join(map(str, init_image.shape[-3:]))}")
            codes = self.vae.encode(init_image.reshape(1, 3, size, size).to(self.device))
            mask = completion_mask(grid, grid // 2 if keep_rows is None else keep_rows)
        unconditional = self.tokenizer.encode("").to(self.device)
        generator = torch.Generator(self.device).manual_seed(seed)
        drawn = []
        for start in range(0, candidates, batch_size):
            n = min(batch_size, candidates - start)

            def report(done: int, base: int = start * grid**2, n: int = n) -> None:
                progress(base + done * n, candidates * grid**2)  # type: ignore[misc]

            drawn.append(sample_codes(
                self.prior, ids.expand(n, -1), **sampling, unconditional=unconditional,
                codes=codes, mask=mask,
                generator=generator, autocast=autocast, progress=progress and report))
        all_codes = torch.cat(drawn)
        pictures = torch.cat([self.vae.decode(all_codes[i : i + batch_size])
                              for i in range(0, candidates, batch_size)])
        scores = None
        if self.clip is not None:
            order, scores = self.rerank(ids, pictures, images)
            all_codes, pictures = all_codes[order], pictures[order]
        return Generation(prompt, pictures[:images], all_codes[:images], scores)
