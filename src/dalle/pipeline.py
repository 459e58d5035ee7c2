"""The pipeline directory: tokenizer, dVAE, prior and CLIP together; text in, images out.

    pipeline/
      tokenizer/   tokenizer.json + config.json
      vae/         config.json + model.safetensors
      prior/       config.json + model.safetensors
      clip/        config.json + model.safetensors   (optional: without it, no reranking)
      sampling.json  default temperature, top-k, top-p, guidance  (optional: defaults are off)
      README.md    the model card

`DallePipeline.__call__` encodes one prompt or a list of them, samples `candidates` code grids
per prompt with the prior (paper §2.6; the prompts' grids share batches), decodes them with the
dVAE, and when there are more candidates than images keeps the ones CLIP scores highest against
the prompt (the paper reranked 512 per caption). The CLI, the server and the evaluation all
generate through it. A pipeline loads from a folder, a bundled name or a Hub id (`dalle.hub`),
and `push_pipeline` / `DallePipeline.push_to_hub` share one on the Hub.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import torch
from PIL import Image

from dalle.adapter import ADAPTER_FILE, TRAINING_DIR, AdapterConfig, is_adapter, load_part
from dalle.config import MAX_CANDIDATES, SamplingConfig
from dalle.errors import DalleError
from dalle.hub import resolve, upload, with_front_matter
from dalle.pretrained import CONFIG_NAME, WEIGHTS_NAME
from dalle.prior import Prior
from dalle.sampling import completion_mask, sample_codes
from dalle.text import TOKENIZER_NAME, TextTokenizer
from dalle.utils import ensure_writable_dir, resolve_device, to_pil
from dalle.vae import DiscreteVAE

PARTS = ("tokenizer", "vae", "prior", "clip")
SAMPLING_FILE = "sampling.json"
# A pipeline directory holds these model folders and sampling.json; everything else in it is what
# it says about itself (the model card, the recipe that made it, the attribution and licences its
# data requires: CC-BY art must keep its credit), and saving a loaded pipeline copies it along.
BUNDLED_DIR = Path(__file__).parent / "bundled"  # the pipelines that ship with the package
# The files of each part's folder: a push uploads these and nothing else from them.
PART_FILES = {"tokenizer": (TOKENIZER_NAME, CONFIG_NAME),
              **{part: (CONFIG_NAME, WEIGHTS_NAME) for part in PARTS[1:]}}
# Never pushed with the documents: pickled training checkpoints (a pipeline never reads them, and
# unpickling one can run code), nor hidden files (editors', git's, atomic writes' temporaries).
NOT_PUSHED = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")


def bundled_pipelines() -> list[str]:
    """Names of the pipelines shipped inside the package (`shapes`, `emoji`)."""
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "prior").is_dir()) if BUNDLED_DIR.is_dir() else []


def resolve_pipeline(name_or_dir: str | Path) -> Path:
    """A bundled pipeline's name, else a pipeline directory, else a Hub id `owner/name[@revision]`
    fetched into the local cache (write `./shapes` for a local folder that shares a bundled name;
    a folder that exists wins over a Hub id of the same spelling)."""
    if isinstance(name_or_dir, str) and name_or_dir in bundled_pipelines():
        return BUNDLED_DIR / name_or_dir
    return resolve(name_or_dir)


def check_pipeline_dir(directory: Path) -> None:
    """One line when `directory` is not a pipeline directory (the parts it lacks)."""
    if not directory.is_dir():
        names = ", ".join(bundled_pipelines()) or "none installed"
        raise FileNotFoundError(f"no pipeline directory at {directory} (bundled pipelines: {names}; "
                                "a Hub repository is named owner/name)")
    missing = [part for part in PARTS[:3] if not (directory / part).is_dir()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a pipeline: it has no {', '.join(missing)}/")


def pipeline_files(directory: str | Path) -> dict[str, Path]:
    """What a push uploads from a pipeline directory (path in the repository -> file): each
    part's own files, sampling.json and the documents (card, recipe, attribution, licences),
    without hidden files or pickled checkpoints. A part missing a file is one line."""
    directory = Path(directory)
    check_pipeline_dir(directory)
    parts = [part for part in PARTS if (directory / part).is_dir()]
    files = {f"{part}/{name}": directory / part / name for part in parts for name in PART_FILES[part]}
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a complete pipeline: it has no {', '.join(missing)}")
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if (relative.parts[0] not in PARTS and path.is_file() and path.suffix.lower() not in NOT_PUSHED
                and not any(part.startswith(".") for part in relative.parts)):
            files[relative.as_posix()] = path
    return files


def push_pipeline(directory: str | Path, repo_id: str, *, private: bool | None = None,
                  revision: str | None = None, commit_message: str | None = None,
                  token: str | None = None) -> str:
    """Upload the pipeline in `directory` (`pipeline_files`) to the Hub repository `repo_id`,
    created when missing, on branch `revision` [default: main]; returns the repository's URL.
    Its README.md goes up with the Hub's front matter filled in where it says nothing (a short
    card is written when there is no README.md). The token is huggingface_hub's (`hf auth
    login`, HF_TOKEN)."""
    files = pipeline_files(directory)
    card_file = files.pop("README.md", None)
    card = card_file.read_text(encoding="utf-8") if card_file else _plain_card(repo_id)
    # A card that names no licence says "unknown" (the Hub's word) rather than nothing.
    return upload(files, with_front_matter(card, {"license": "unknown"}), repo_id, private=private,
                  revision=revision, commit_message=commit_message, token=token)


def _plain_card(repo_id: str) -> str:
    """The card of a pipeline that came without one: how to use it, and what it does not say."""
    return (f"# {repo_id}\n\nA DALL-E (Ramesh et al. 2021) text-to-image pipeline of the `dalle` "
            "package: tokenizer, dVAE, prior and, where present, CLIP. It was pushed without a model "
            "card, so its training data, licence and training are not recorded here.\n\n## Use\n\n"
            f"```bash\ndalle generate --pipeline {repo_id} \"a prompt\"\n```\n\n```python\n"
            f"from dalle import DallePipeline\n\npipe = DallePipeline.from_pretrained(\"{repo_id}\")\n"
            "images = pipe(\"a prompt\", images=4).pil()\n```\n")


@dataclass
class Generation:
    """What one prompt produced: the kept images, best first, with their codes and CLIP scores."""

    prompt: str
    images: torch.Tensor  # (n, 3, H, W) in [0, 1]
    codes: torch.Tensor  # (n, G, G)
    scores: torch.Tensor | None  # (n,) CLIP scores of the kept images; None without CLIP
    indices: torch.Tensor  # (n,) which candidate each kept image is, 0 the first sampled
    # How they were made, so that a saved image can say (dalle.outputs): the call's seed, its
    # candidates per prompt, and the sampling settings with the pipeline's defaults filled in.
    seed: int = 0
    candidates: int = 0
    sampling: dict[str, Any] = field(default_factory=dict)

    def pil(self) -> list[Image.Image]:
        """The images as RGB PIL images, best first."""
        return to_pil(self.images)


def check_parts(tokenizer: TextTokenizer, vae: DiscreteVAE, prior: Prior, clip=None) -> None:
    """Name any mismatch between the parts' vocabularies and grids."""
    p, v = prior.config, vae.config
    problems = tokenizer.mismatches(p.text_vocab_size, p.text_length, "the prior")
    if v.codebook_size != p.codebook_size or v.grid_size != p.grid_size:
        problems.append(f"the dVAE ({v.codebook_size} codes, {v.grid_size}x{v.grid_size} grid) does "
                        f"not match the prior ({p.codebook_size} codes, "
                        f"{p.grid_size}x{p.grid_size} grid)")
    if clip is not None:
        problems += tokenizer.mismatches(clip.config.text_vocab_size, clip.config.text_length, "CLIP")
    if problems:
        raise DalleError("; ".join(problems))


class DallePipeline:
    """Tokenizer + dVAE + prior (+ CLIP) loaded from one directory."""

    def __init__(self, tokenizer: TextTokenizer, vae: DiscreteVAE, prior: Prior, clip=None,
                 sampling: SamplingConfig | None = None) -> None:
        check_parts(tokenizer, vae, prior, clip)
        self.tokenizer, self.vae, self.prior, self.clip = tokenizer, vae.eval(), prior.eval(), clip
        self.sampling = sampling or SamplingConfig()
        self.source: Path | None = None  # the directory it was loaded from, whose documents it keeps
        if clip is not None:
            clip.eval()

    @property
    def device(self) -> torch.device:
        return self.prior.device

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None,
                        adapter: str | Path | None = None) -> DallePipeline:
        """Load from a pipeline directory, a bundled pipeline's name (`shapes`, `emoji`) or a Hub
        id (`owner/name`, `owner/name@revision`; honours HF_HUB_OFFLINE and the local cache).

        `dtype` (e.g. torch.bfloat16) casts the prior's weights only: sampling is bound by reading
        them, so bf16 nearly doubles its speed, while the dVAE and CLIP run once per image and
        stay in float32.
        An adapter directory (`dalle finetune`'s output) loads its base pipeline and applies
        itself; `adapter=` applies one to the pipeline `directory` names (`dalle.adapter`).
        """
        from dalle.clip import CLIP

        if adapter is None and isinstance(directory, (str, Path)) and is_adapter(directory):
            adapter = directory
            directory = AdapterConfig.load(Path(adapter) / ADAPTER_FILE).base
        if adapter is not None:
            return cls._adapted(directory, Path(adapter), device, dtype)
        directory = resolve_pipeline(directory)
        check_pipeline_dir(directory)
        target = resolve_device(device)
        clip = CLIP.from_pretrained(directory / "clip", target) if (directory / "clip").is_dir() else None
        sampling = directory / SAMPLING_FILE
        prior = Prior.from_pretrained(directory / "prior", target)
        pipeline = cls(TextTokenizer.from_pretrained(directory / "tokenizer"),
                       DiscreteVAE.from_pretrained(directory / "vae", target),
                       prior if dtype is None else prior.to(dtype), clip,
                       SamplingConfig.load(sampling) if sampling.exists() else None)
        pipeline.source = directory
        return pipeline

    @classmethod
    def _adapted(cls, base: str | Path, adapter: Path, device: str | torch.device,
                 dtype: torch.dtype | None) -> DallePipeline:
        """The pipeline `base` with the parts `adapter` holds applied (merged in float32, then cast)."""
        config = AdapterConfig.load(adapter / ADAPTER_FILE)
        if Path(base).resolve() == adapter.resolve():
            raise DalleError(f"{adapter / ADAPTER_FILE} names itself as its base pipeline")
        pipeline = cls.from_pretrained(base, device)
        pipeline.prior = load_part(pipeline.prior, adapter / "prior", config.prior).eval()
        if config.clip is not None:
            if pipeline.clip is None:
                raise DalleError(f"{adapter} adapts CLIP but its base {base} has none")
            pipeline.clip = load_part(pipeline.clip, adapter / "clip", config.clip).eval()
        if (adapter / SAMPLING_FILE).is_file():
            pipeline.sampling = SamplingConfig.load(adapter / SAMPLING_FILE)
        check_parts(pipeline.tokenizer, pipeline.vae, pipeline.prior, pipeline.clip)
        if dtype is not None:
            pipeline.prior.to(dtype)
        pipeline.source = adapter
        return pipeline

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write the parts' directories, and the model card, recipe, attribution and licences of
        the directory it was loaded from; `dtype` (e.g. torch.bfloat16) stores weights in it."""
        directory = ensure_writable_dir(directory)
        if self.source is not None and self.source.resolve() != directory.resolve():
            for path in sorted(self.source.iterdir()):
                name = path.name
                if name in PARTS or name in (SAMPLING_FILE, ADAPTER_FILE, TRAINING_DIR) or name.startswith("."):
                    continue
                if path.is_dir():
                    shutil.copytree(path, directory / name, dirs_exist_ok=True)
                elif path.is_file():
                    shutil.copy2(path, directory / name)
        self.tokenizer.save_pretrained(directory / "tokenizer")
        for part in ("vae", "prior", "clip"):
            model = getattr(self, part)
            if model is not None:
                model.save_pretrained(directory / part, dtype=dtype)
        self.sampling.save(directory / SAMPLING_FILE)
        return directory

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, revision: str | None = None,
                    commit_message: str | None = None, token: str | None = None,
                    dtype: torch.dtype | None = None) -> str:
        """Save to a temporary folder (with the card, attribution and licences of the folder it was
        loaded from; `dtype` as in `save_pretrained`) and upload that as `push_pipeline` does;
        returns the repository's URL."""
        with tempfile.TemporaryDirectory(prefix="dalle-pipeline-") as folder:
            self.save_pretrained(folder, dtype=dtype)
            return push_pipeline(folder, repo_id, private=private, revision=revision,
                                 commit_message=commit_message, token=token)

    def to(self, device: str | torch.device) -> DallePipeline:
        for model in (self.vae, self.prior, self.clip):
            if model is not None:
                model.to(device)
        return self

    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(P, T + 1) text ids; for several prompts an error names the one at fault."""
        ids = []
        for i, prompt in enumerate(prompts):
            try:
                ids.append(self.encode_prompt(prompt))
            except DalleError as e:
                if len(prompts) == 1:
                    raise
                raise DalleError(f"prompt {i + 1} of {len(prompts)} ({prompt!r}): {e}") from None
        return torch.stack(ids)

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """The prompt's text ids, with a one-line error for a prompt that cannot condition."""
        if not prompt.strip():
            raise DalleError("the prompt is empty")
        unknown = self.tokenizer.unknown_characters(prompt)
        if len(unknown) == len(set(prompt.lower()) - {" "}):
            raise DalleError(f"the prompt has no character this model's captions ever used "
                             f"({''.join(unknown)!r})")
        ids = self.tokenizer.encode(prompt)
        return ids.to(self.device)

    @torch.no_grad()
    def rerank(self, prompt_ids: torch.Tensor, images: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the `keep` images CLIP scores highest against the prompt, and their scores."""
        if self.clip is None:
            raise DalleError("this pipeline has no CLIP model to rerank with")
        scores = self.clip.score(images, prompt_ids.expand(len(images), -1))
        best = scores.argsort(descending=True)[:keep]
        return best, scores[best]

    @overload
    def __call__(self, prompt: str, *, images: int = ..., candidates: int | None = ...,
                 temperature: float | None = ..., top_k: int | None = ..., top_p: float | None = ...,
                 guidance_scale: float | None = ..., seed: int = ...,
                 init_image: torch.Tensor | None = ..., keep_rows: int | None = ...,
                 batch_size: int = ..., autocast: bool = ..., compile: bool = ...,
                 progress: Callable[[int, int], None] | None = ...,
                 preview: Callable[[int, torch.Tensor], None] | None = ...) -> Generation: ...

    @overload
    def __call__(self, prompt: list[str], *, images: int = ..., candidates: int | None = ...,
                 temperature: float | None = ..., top_k: int | None = ..., top_p: float | None = ...,
                 guidance_scale: float | None = ..., seed: int = ...,
                 init_image: torch.Tensor | None = ..., keep_rows: int | None = ...,
                 batch_size: int = ..., autocast: bool = ..., compile: bool = ...,
                 progress: Callable[[int, int], None] | None = ...,
                 preview: Callable[[int, torch.Tensor], None] | None = ...) -> list[Generation]: ...

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], *, images: int = 4, candidates: int | None = None,
                 temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, guidance_scale: float | None = None,
                 seed: int = 0, init_image: torch.Tensor | None = None,
                 keep_rows: int | None = None, batch_size: int = 16, autocast: bool = False,
                 compile: bool = False,
                 progress: Callable[[int, int], None] | None = None,
                 preview: Callable[[int, torch.Tensor], None] | None = None) -> Generation | list[Generation]:
        """Generate `images` pictures per prompt, each the best of `candidates / images` by CLIP.

        A str gives one `Generation`; a list gives one per prompt, in order. All the prompts'
        candidates are sampled in shared batches of `batch_size` rows (the first prompt's first),
        with one generator seeded by `seed`: the same call gives the same images, a one-prompt
        list gives what the str gives, and a prompt's images depend on the prompts before it.
        Sampling options left as None take the pipeline's defaults (`self.sampling`).
        init_image + keep_rows: complete an image from the first `keep_rows` rows of its codes.
        compile: on a CPU, sample through a compiled step with frozen weights (`compiled_step`):
        the same images, faster after tens of seconds of compiling (once more at a second batch
        size); for many candidates (docs/benchmarks.md).
        progress(done, total) is called with image positions sampled so far, all prompts together.
        preview(first, rows) is called each time a batch finishes a row of codes, with the batch's
        finished rows (n, r, G) (a view: copy what you keep) and its first candidate's index among
        all prompts' candidates; `dalle serve` decodes them to show images as they form.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        candidates = images if candidates is None else candidates
        if not prompts:
            raise DalleError("no prompts given")
        if images < 1:
            raise DalleError(f"images must be at least 1, got {images}")
        if candidates < images:
            raise DalleError(f"candidates ({candidates}) must be at least the number of images "
                             f"kept ({images})")
        if candidates > MAX_CANDIDATES:
            raise DalleError(f"candidates ({candidates}) must be at most {MAX_CANDIDATES} per prompt")
        if candidates > images and self.clip is None:
            raise DalleError("this pipeline has no CLIP model to rerank with; ask for as many "
                             "candidates as images")
        sampling = self.sampling.updated(temperature=temperature, top_k=top_k, top_p=top_p,
                                         guidance_scale=guidance_scale).to_dict()
        ids = self._encode_prompts(prompts)
        codes = mask = None
        grid = self.prior.config.grid_size
        if init_image is not None:
            size = self.vae.config.image_size
            if tuple(init_image.shape[-3:]) != (3, size, size):
                raise DalleError(f"the image to complete must be 3x{size}x{size}, got "
                                 f"{'x'.join(map(str, init_image.shape[-3:]))}")
            codes = self.vae.encode(init_image.reshape(1, 3, size, size).to(self.device))
            mask = completion_mask(grid, grid // 2 if keep_rows is None else keep_rows)
        unconditional = self.tokenizer.encode("").to(self.device)
        generator = torch.Generator(self.device).manual_seed(seed)
        rows = ids.repeat_interleave(candidates, 0)  # prompt 0's candidates, then prompt 1's, ...
        drawn = []
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]

            def report(done: int, codes: torch.Tensor, first: int = start, n: int = len(batch)) -> None:
                if progress is not None:
                    progress(first * grid**2 + done * n, len(rows) * grid**2)
                if preview is not None and done % grid == 0:
                    preview(first, codes[:, : done // grid])

            drawn.append(sample_codes(
                self.prior, batch, **sampling, unconditional=unconditional, codes=codes, mask=mask,
                generator=generator, autocast=autocast, compile=compile,
                progress=report if progress or preview else None))
        all_codes = torch.cat(drawn)
        pictures = torch.cat([self.vae.decode(all_codes[i : i + batch_size])
                              for i in range(0, len(rows), batch_size)])
        results = []
        for i, text in enumerate(prompts):
            mine = slice(i * candidates, (i + 1) * candidates)
            kept, scores = torch.arange(images, device=self.device), None
            if self.clip is not None:
                kept, scores = self.rerank(ids[i], pictures[mine], images)
            results.append(Generation(text, pictures[mine][kept], all_codes[mine][kept], scores, kept,
                                      seed=seed, candidates=candidates, sampling=sampling))
        return results[0] if isinstance(prompt, str) else results
