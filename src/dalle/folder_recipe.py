"""`dalle recipe folder DATA --out RUN --budget B`: your own captioned pictures to a pipeline.

The recipe of `dalle.recipe` (tokenizer, dVAE, codes, prior, CLIP, assembly, evaluation, model
card), with every setting derived from the data and a time budget where the user gave none:

1. **Survey** the data: pairs, image sides, caption words, licence and attribution files.
2. **Size** the models: image size and grid from the images' sides, the codebook from the number
   of code positions the data holds, the BPE vocabulary from the caption words, the text length
   from the longest tokenised caption, batches cut to the set.
3. **Time** one training step of each stage on this machine (a synthetic batch, the median of 3
   steps after 2 warm-up ones) and split the budget among the stages: that gives each stage's
   steps, and the prior's size, the largest that its share trains for enough epochs
   (`choose_prior_size`).

The plan is written to `RUN/plan.json` before anything trains, and a second call reads it
instead of timing again: a run interrupted and restarted continues with the same steps, so it
ends with the weights an uninterrupted run would have. A folder holding only a plan.json runs
that plan.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import random
import statistics
import tarfile
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from dalle.card import copy_notices, find_notices
from dalle.config import PriorConfig, SamplingConfig, TrainConfig
from dalle.data.folder import IMAGE_SUFFIXES, ScanReport, find_pairs, read_captions
from dalle.data.shards import list_shards
from dalle.data.sources import is_shards
from dalle.errors import DalleError
from dalle.evaluate.fid import inception_available
from dalle.recipe import TRAINING, Recipe, Step, budget_option, evaluate_images_pipeline, model_steps
from dalle.text import TextTokenizer
from dalle.train.runs import CLIPRun, PriorRun, VAERun
from dalle.utils import atomic_write, fast_bf16, resolve_device

PLAN_FILE = "plan.json"
PLAN_VERSION = 1
# The named budgets, in minutes of this machine: `minutes` a first look, `cpu` about what the
# bundled emoji recipe took on 2 CPU cores, `gpu` a few minutes of one GPU with bigger batches.
NAMED_BUDGETS = {"minutes": 10, "cpu": 90, "gpu": 15}
# The share of the training time each stage gets. The prior is the model that draws, and the
# slowest per step; the dVAE must reconstruct well before its codes are worth modelling.
SHARES = {"vae": 0.35, "prior": 0.5, "clip": 0.15}
# Below these a stage is undertrained whatever the data; the plan then warns.
ENOUGH_STEPS = {"vae": 1000, "prior": 500, "clip": 200}
QUICK = TRAINING["quick"]
RUNS: dict[str, type[VAERun] | type[PriorRun] | type[CLIPRun]] = {
    "vae": VAERun, "prior": PriorRun, "clip": CLIPRun}
OVERHEAD = 1.15  # checkpoints, sample grids, validation and data loading, over the timed steps
STAGE_START = 15.0  # seconds: a stage's process work before its first step (loading, workers)
MIN_PAIRS = 20
# The prior's training pictures are encoded as they are and as random crops (the paper's
# augmentation before encoding, appendix B.2): one view per EPOCHS_PER_VIEW passes the budget
# gives the prior, so that it sees each code grid about that often, up to MAX_VIEWS.
EPOCHS_PER_VIEW, MAX_VIEWS = 16, 16
# The priors the plan chooses among, by width x depth (heads of 32), smallest first; the last is
# the `small` preset of the bundled pipelines. The plan takes the largest that the budget trains
# for MIN_PRIOR_EPOCHS passes, or else the smallest: on four styles of emoji (docs/results.md) a
# 128x4 prior's held-out loss fell until about 20 epochs, and at equal minutes of a CPU it ended
# well below the 256x8 one, which had 4 epochs (3.75 against 3.90 bits per image token).
PRIOR_SIZES: dict[str, dict[str, Any]] = {
    "128x4": {"dim": 128, "depth": 4, "heads": 4, "head_dim": 32},
    "192x6": {"dim": 192, "depth": 6, "heads": 6, "head_dim": 32},
    "256x8": {"dim": 256, "depth": 8, "heads": 8, "head_dim": 32}}
MIN_PRIOR_EPOCHS = 20
VAL_PERCENT, MAX_VAL = 5, 500  # the held-out split of a folder without one


@dataclasses.dataclass(frozen=True)
class Survey:
    """What the data holds, as the plan sizes from it."""

    kind: str  # "folder", "splits" (train/ and val/ folders) or "shards"
    pairs: int  # the training pairs
    held_out: int  # the pairs that validate the prior and CLIP and that the evaluation draws from
    skipped: int
    image_side: int  # median shorter side of the images looked at
    distinct_words: int
    notices: list[str]  # licence / attribution / readme files at the top of the data folder


def _notice_names(folder: Path) -> list[str]:
    return [p.name for p in find_notices(folder)]


def _shard_members(shard: Path) -> dict[str, dict[str, bytes]]:
    """The samples of one shard: key -> {extension: bytes}."""
    from webdataset.tariterators import base_plus_ext

    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shard) as tar:
        for member in tar:
            key, ext = base_plus_ext(member.name)
            file = tar.extractfile(member) if member.isreg() else None
            if key and ext and file is not None:
                samples.setdefault(key, {})[ext.lower()] = file.read()
    return samples


def _image_sides(images: list[Path]) -> int:
    from PIL import Image

    sides = []
    for path in images[:: max(1, len(images) // 200)]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except (OSError, ValueError):
            continue
    return int(statistics.median(sides)) if sides else 0


def survey(data: Path) -> Survey:
    """Count and measure the pairs of an image folder, a folder with train/ and val/ splits, or
    shards (a one-line error for anything else)."""
    if not data.exists():
        raise FileNotFoundError(f"data {data} does not exist")
    if is_shards(data):
        return _survey_shards(data)
    splits = (data / "train").is_dir() and (data / "val").is_dir()
    report = ScanReport()
    pairs = list(find_pairs(data / "train" if splits else data, report))
    if len(pairs) < MIN_PAIRS:
        raise DalleError(f"{data} has {len(pairs)} image-caption pairs (image + same-named .txt); "
                         f"`dalle recipe folder` needs at least {MIN_PAIRS}")
    captions = [c.read_text(errors="replace").strip() for _, c in pairs]
    held = (sum(1 for _ in find_pairs(data / "val", ScanReport())) if splits
            else len(validation_pairs(pairs, data)))
    return Survey("splits" if splits else "folder", len(pairs) - (0 if splits else held), held,
                  sum(report.skipped.values()), _image_sides([image for image, _ in pairs]),
                  _distinct_words(captions), _notice_names(data))


def _survey_shards(data: Path) -> Survey:
    from PIL import Image

    from dalle.data.shards import count_samples

    shards = list_shards(data)
    if len(shards) < 2:
        raise DalleError(f"{data} is one shard; the recipe holds out the last shard for "
                         "validation, so pack at least two (`dalle data pack` makes 8)")
    pairs, held = sum(count_samples(s)[0] for s in shards[:-1]), count_samples(shards[-1])[0]
    sides = []
    for sample in list(_shard_members(shards[0]).values())[:50]:
        image = next((sample[e] for e in sample if "." + e in IMAGE_SUFFIXES), None)
        if image is not None:
            try:
                with Image.open(io.BytesIO(image)) as opened:
                    sides.append(min(opened.size))
            except (OSError, ValueError):
                continue
    captions = list(itertools.islice(read_captions(data), 100_000))
    return Survey("shards", pairs, held, 0, int(statistics.median(sides)) if sides else 0,
                  _distinct_words(captions), _notice_names(data if data.is_dir() else data.parent))


def _distinct_words(captions: list[str]) -> int:
    return len({word for caption in captions for word in caption.lower().split()})


def is_validation(name: str) -> bool:
    """Whether a pair, by its path inside the data folder, is held out: a hash, so the split does
    not move when pairs are added or the folder is listed in another order."""
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % 100 < VAL_PERCENT


def validation_pairs(pairs: list[tuple[Path, Path]], root: Path) -> list[tuple[Path, Path]]:
    """The (image, caption) pairs of the folder `root` that the recipe holds out: those that
    `is_validation` picks, or every 20th (at least two) of a set so small that the hash picked
    fewer than two or all; at most MAX_VAL."""
    val = [p for p in pairs if is_validation(str(p[0].relative_to(root)))]
    if len(val) < 2 or len(val) == len(pairs):
        val = pairs[:: max(2, min(100 // VAL_PERCENT, len(pairs) // 2))]
    return val[:MAX_VAL]


def split_data(data: str | Path, out: str | Path, kind: str) -> None:
    """`out/train` and `out/val` for the recipe: links to the user's files (a folder), links to its
    splits, or links to the training shards and the last shard unpacked as a folder. The notices
    (licences, attribution) are copied to `out` for the pipeline."""
    data, out = Path(data).absolute(), Path(out)
    (out / "train").mkdir(parents=True)
    (out / "val").mkdir()
    if kind == "shards":
        shards = list_shards(data)
        for shard in shards[:-1]:
            (out / "train" / shard.name).symlink_to(shard)
        for key, sample in _shard_members(shards[-1]).items():
            extension = next((e for e in sample if "." + e in IMAGE_SUFFIXES), None)
            if extension is not None and "txt" in sample:
                name = key.replace("/", "__")
                (out / "val" / f"{name}.{extension}").write_bytes(sample[extension])
                (out / "val" / f"{name}.txt").write_bytes(sample["txt"])
    elif kind == "splits":
        for split in ("train", "val"):
            for image, caption in find_pairs(data / split, ScanReport()):
                _link_pair(image, caption, data / split, out / split)
    else:
        pairs = list(find_pairs(data, ScanReport()))
        held = {image for image, _ in validation_pairs(pairs, data)}
        for image, caption in pairs:
            _link_pair(image, caption, data, out / ("val" if image in held else "train"))
    copy_notices(find_notices(data if data.is_dir() else data.parent), out)


def _link_pair(image: Path, caption: Path, root: Path, split: Path) -> None:
    name = str(image.relative_to(root).with_suffix("")).replace(os.sep, "__")
    (split / (name + image.suffix)).symlink_to(image.absolute())
    (split / (name + ".txt")).symlink_to(caption.absolute())


def parse_budget(budget: str) -> float:
    """Minutes of this machine: a named budget or a positive number."""
    if budget in NAMED_BUDGETS:
        return float(NAMED_BUDGETS[budget])
    try:
        minutes = float(budget)
    except ValueError:
        minutes = -1.0
    if not 0 < minutes < 60 * 24 * 30:
        raise DalleError(f"--budget {budget!r} is not a budget: give a number of minutes or one of "
                         f"{', '.join(NAMED_BUDGETS)}")
    return minutes


# --- sizing -------------------------------------------------------------------------------------

def model_settings(found: Survey, gpu: bool) -> dict[str, dict[str, Any]]:
    """Run-config overrides for each stage that depend on the data and the device, not the time."""
    side = found.image_side
    # 64 px with f = 8 (8x8 codes) is the size the bundled pipelines train well on 2 cores; small
    # images go to 32 px at f = 4 (still 8x8, as the Fashion-MNIST recipe), and on a GPU images of
    # 128 px or more keep that size at f = 8 (16x16 codes).
    image_size, downsample = (32, 4) if side <= 40 else (128, 8) if gpu and side >= 128 else (64, 8)
    grid = image_size // downsample
    # Each code should get at least ~16 positions of the data to learn from: a codebook larger
    # than that stays mostly dead (the small preset's 512 for a thousand pictures or more).
    codebook = max(64, min(512, 2 ** int(math.log2(max(1, found.pairs * grid * grid // 16)))))
    batches = {"vae": 128, "prior": 256, "clip": 128} if gpu else {"vae": 16, "prior": 32, "clip": 64}
    batches = {stage: min(batch, found.pairs) for stage, batch in batches.items()}
    workers = {"num_workers": 6} if gpu else {}
    return {
        # The Gaussian likelihood at lr 1e-3 (docs/results.md: the logit-Laplace's scale collapses
        # on flat backgrounds) and bf16 where it is fast (`fast_bf16`), which ran the dVAE 1.6x
        # faster on 2 cores of a Xeon with AMX.
        "vae": {"image_size": image_size, "downsample": downsample, "codebook_size": codebook,
                "likelihood": "gaussian", "lr": 1e-3, "bf16": gpu or fast_bf16("cpu"),
                "batch_size": batches["vae"],
                **workers},
        "prior": {"batch_size": batches["prior"], "lr": 1e-3},  # bf16: every recipe's prior
        "clip": {"image_size": image_size, "patch_size": image_size // 8,
                 "batch_size": batches["clip"], "bf16": gpu, **workers},
    }


def tokenizer_settings(found: Survey, data: Path) -> dict[str, Any]:
    """The BPE vocabulary from the caption words and the text length from the captions as that
    BPE tokenises them with dropout (rounded up to a multiple of 4)."""
    bpe = max(512, min(16_384, 256 + 4 * found.distinct_words))
    sources = [data / "train"] if found.kind == "splits" else [data]
    captions = list(itertools.islice(itertools.chain.from_iterable(read_captions(s) for s in sources),
                                     100_000))
    tokenizer = TextTokenizer.train(captions, bpe, text_length=256)
    # Training encodes with BPE dropout, which splits words into more tokens: the length covers
    # the longest caption, and 99% of ten dropout draws of each (a draw longer than the text
    # length falls back to the caption's plain encoding).
    longest = max(len(tokenizer.tokenize(c)) for c in captions[:10_000])
    draws = sorted(len(tokenizer.tokenize(c, random.Random(draw)))
                   for c in captions[:2_000] for draw in range(10))
    covered = max(longest, draws[int(0.99 * (len(draws) - 1))])
    # The captions may hold fewer merges than the setting allows: the timing sizes the prior's
    # text embedding and head by the tokens this BPE learned (the recipe's learns the same).
    return {"bpe_vocab_size": bpe, "text_length": min(256, 4 * math.ceil(covered / 4)),
            "trained_vocab_size": tokenizer.config.bpe_vocab_size}


def _timed(step: Callable[[], object], device: torch.device) -> float:
    """Seconds per call of `step`: the median of three after two calls (the first calls
    allocate the optimizer's state and pick kernels)."""
    times = []
    for call in range(5):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if call >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _training_step(model: torch.nn.Module, loss: Callable[[], torch.Tensor], train: TrainConfig,
                   device: torch.device) -> Callable[[], None]:
    """One step as the training loop takes it: its optimizer (fused AdamW), bf16 if asked."""
    from dalle.train.loop import build_optimizer

    optimizer = build_optimizer(model, train)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=train.bf16):
            value = loss()
        value.backward()
        optimizer.step()
    return step


def _time_prior(config: PriorConfig, train: TrainConfig, bpe_vocab_size: int, device: torch.device,
                eval_prompts: int) -> tuple[float, float]:
    """Seconds per training step of a prior of `config`, and per evaluation image generated."""
    from dalle.prior import Prior
    from dalle.sampling import sample_codes

    prior = Prior(config).to(device)
    b = train.batch_size
    text = torch.randint(0, bpe_vocab_size, (b, config.text_length + 1), device=device)
    codes = torch.randint(0, config.codebook_size, (b, config.grid_size, config.grid_size), device=device)
    step = _timed(_training_step(prior, lambda: prior(text, codes).loss, train, device), device)
    prior.eval()
    prompts = text[: min(b, eval_prompts, 16)]
    with torch.no_grad():
        # Guidance doubles the streams, as the pipeline samples with guidance 2.
        generate = _timed(lambda: sample_codes(prior, torch.cat([prompts, prompts])), device)
    return step, generate / len(prompts)


def time_stages(runs: dict[str, Any], tokenizer: dict[str, Any], device: torch.device,
                eval_prompts: int) -> dict[str, float]:
    """Seconds per training step of each stage's model on `device`, on synthetic batches of the
    planned size, and the seconds of encoding one image and generating one evaluation image; the
    prior's two for each of PRIOR_SIZES ("prior-128x4", "generate-128x4", ...)."""
    from dalle.clip import CLIP
    from dalle.train.vae import VAELoss, new_vae
    from dalle.vae import DiscreteVAE

    torch.manual_seed(0)
    bpe = tokenizer["trained_vocab_size"]
    text_vocab = bpe + tokenizer["text_length"] + 1
    seconds: dict[str, float] = {}
    vae_run: VAERun = runs["vae"]
    # Laid out as train_vae lays it out: on 2 CPU cores the plain layout timed 0.29 s a step where
    # training ran at 0.23, and channels_last times at 0.23-0.26.
    vae = new_vae(vae_run.model).to(device)
    b, s = vae_run.train.batch_size, vae_run.model.image_size
    batch = {"image": torch.rand(b, 3, s, s, device=device), "index": torch.arange(b)}
    vae_loss = VAELoss(0)
    seconds["vae"] = _timed(_training_step(vae, lambda: vae_loss(vae, batch, 1)[0],
                                           vae_run.train, device), device)
    encoder = DiscreteVAE(vae_run.model).to(device).eval()  # as encode_codes loads the trained one
    with torch.no_grad():
        images = torch.rand(64, 3, s, s, device=device)
        seconds["encode"] = _timed(lambda: encoder.encode(images), device) / 64
    prior_run: PriorRun = runs["prior"]
    for name, size in PRIOR_SIZES.items():
        config = dataclasses.replace(prior_run.model, **size, text_vocab_size=text_vocab,
                                     text_length=tokenizer["text_length"],
                                     codebook_size=vae_run.model.codebook_size,
                                     grid_size=vae_run.model.grid_size)
        seconds[f"prior-{name}"], seconds[f"generate-{name}"] = _time_prior(
            config, prior_run.train, bpe, device, eval_prompts)
    clip_run: CLIPRun = runs["clip"]
    clip_config = dataclasses.replace(clip_run.model, text_vocab_size=text_vocab,
                                      text_length=tokenizer["text_length"])
    clip = CLIP(clip_config).to(device)
    b, s = clip_run.train.batch_size, clip_config.image_size
    images = torch.rand(b, 3, s, s, device=device)
    # Hard negatives bring two word-swapped captions per image.
    texts = torch.randint(0, bpe, (3 * b, clip_config.text_length + 1), device=device)
    positives = torch.eye(b, 3 * b, dtype=torch.bool, device=device)
    seconds["clip"] = _timed(_training_step(clip, lambda: clip(images, texts, positives=positives).loss,
                                            clip_run.train, device), device)
    return seconds


def epochs_in(seconds: float, step_seconds: float, batch_size: int, pairs: int) -> float:
    """How many times `seconds` of training, at `step_seconds` a step of `batch_size`, goes
    over `pairs`."""
    return seconds / step_seconds * batch_size / pairs


def choose_prior_size(seconds: float, per_step: dict[str, float], batch_size: int, pairs: int) -> str:
    """The largest of PRIOR_SIZES that `seconds` of training, at `per_step["prior-<size>"]` a
    step of `batch_size`, takes MIN_PRIOR_EPOCHS times over `pairs`; else the smallest."""
    trained = [name for name in PRIOR_SIZES
               if epochs_in(seconds, per_step[f"prior-{name}"], batch_size, pairs) >= MIN_PRIOR_EPOCHS]
    return trained[-1] if trained else next(iter(PRIOR_SIZES))


def _rounded(steps: float) -> int:
    return max(10, int(steps // 10 * 10))


def make_plan(data: Path, run: Path, budget: str, echo: Callable[[str], None], *,
              keep_best: bool = False) -> dict[str, Any]:
    """Survey, size and time: the plan that `folder_recipe` runs (see the module docstring);
    `keep_best` exports the prior's and CLIP's weights of their lowest validation loss."""
    minutes = 0.0 if budget == "quick" else parse_budget(budget)
    device = resolve_device("auto")
    gpu = device.type == "cuda"
    if budget == "gpu" and not gpu:
        raise DalleError("--budget gpu needs a CUDA device and this machine has none; give cpu or "
                         "a number of minutes")
    echo(f"[plan] surveying {data}")
    found = survey(data)
    settings = model_settings(found, gpu)
    if keep_best:
        for stage in ("prior", "clip"):
            settings[stage]["keep_best"] = True
    tokenizer = tokenizer_settings(found, data)
    eval_prompts = min(100, found.held_out)
    runs = {"vae": VAERun.create(data=run / "data/train", out=run / "vae", **settings["vae"]),
            "prior": PriorRun.create(data=run / "codes/train", tokenizer=run / "tokenizer",
                                     out=run / "prior", bf16=fast_bf16(), **settings["prior"]),
            "clip": CLIPRun.create(data=run / "data/train", tokenizer=run / "tokenizer",
                                   out=run / "clip", **settings["clip"])}
    if budget == "quick":  # tiny models and a few steps: checks that every stage runs
        for stage, overrides in QUICK.items():
            settings[stage].update(overrides, batch_size=min(overrides["batch_size"], found.pairs),
                                   warmup_steps=overrides["steps"] // 5)
        return _plan(data, budget, minutes, device, found, tokenizer, settings, {}, {},
                     eval_prompts=4, fid=False, warnings=[], views=2)
    echo(f"[plan] timing one training step of each stage on {device.type} "
         f"({torch.get_num_threads()} threads)")
    per_step = time_stages(runs, tokenizer, device, eval_prompts)
    total, batch = minutes * 60, settings["prior"]["batch_size"]
    largest = list(PRIOR_SIZES)[-1]  # the evaluation's time before the prior's size is chosen

    def encoding(views: int) -> float:  # each training picture `views` times, the held-out once
        return (found.pairs * views + found.held_out) * per_step["encode"] * OVERHEAD

    def fixed(views: int) -> float:  # seconds outside training; the 2: decoding and reranking
        return (6 * STAGE_START + encoding(views) + eval_prompts * per_step[f"generate-{largest}"] * 2)

    def prior_epochs(training: float) -> float:
        size = choose_prior_size(SHARES["prior"] * training, per_step, batch, found.pairs)
        return epochs_in(SHARES["prior"] * training, per_step[f"prior-{size}"], batch, found.pairs)

    def training_time(views: int) -> float:
        return (total - fixed(views)) / OVERHEAD

    # Encoding more views leaves less time to train, and so fewer epochs that need views: one
    # more view while the epochs the rest of the budget gives the prior need it, and while the
    # encoding leaves at least half the training time that one view would.
    views = 1
    while (views < MAX_VIEWS and code_views(prior_epochs(training_time(views))) > views
           and training_time(views + 1) >= training_time(1) / 2):
        views += 1
    training = training_time(views)
    if training <= 0:
        raise DalleError(f"a budget of {minutes:g} minute{'' if minutes == 1 else 's'} leaves no time "
                         "to train after encoding "
                         f"and evaluating {found.pairs} pairs; give at least "
                         f"{math.ceil(fixed(1) / 60) + 2} minutes")
    prior_size = choose_prior_size(SHARES["prior"] * training, per_step, batch, found.pairs)
    per_step.update(prior=per_step[f"prior-{prior_size}"], generate=per_step[f"generate-{prior_size}"])
    settings["prior"].update(PRIOR_SIZES[prior_size])
    steps = {stage: _rounded(SHARES[stage] * training / per_step[stage]) for stage in SHARES}
    epochs = {stage: steps[stage] * settings[stage]["batch_size"] / found.pairs for stage in SHARES}
    warmup = {stage: max(10, min(200, steps[stage] // 20)) for stage in SHARES}
    views = min(views, code_views(epochs["prior"]))  # at most the views set aside
    settings["vae"].update(steps=steps["vae"], warmup_steps=warmup["vae"])
    settings["prior"].update(steps=steps["prior"], warmup_steps=warmup["prior"],
                             sample_every=max(50, _rounded(steps["prior"] / 5)),
                             eval_every=max(50, _rounded(steps["prior"] / 10)),
                             checkpoint_every=max(50, _rounded(steps["prior"] / 10)),
                             # Many passes over a small set overfit without dropout (the emoji
                             # recipe's prior, 80 epochs, trains with 0.1).
                             dropout=0.1 if epochs["prior"] > 20 else 0.0)
    settings["clip"].update(steps=steps["clip"], warmup_steps=warmup["clip"],
                            eval_every=max(50, _rounded(steps["clip"] / 5)))
    estimates = {"train-vae": steps["vae"] * per_step["vae"] * OVERHEAD + STAGE_START,
                 "encode": encoding(views) + 2 * STAGE_START,
                 "train-prior": steps["prior"] * per_step["prior"] * OVERHEAD + STAGE_START,
                 "train-clip": steps["clip"] * per_step["clip"] * OVERHEAD + STAGE_START,
                 "eval": eval_prompts * per_step["generate"] * 2 + STAGE_START}
    warnings_ = [f"{stage}: {steps[stage]} steps is few (under {ENOUGH_STEPS[stage]}); "
                 "a larger --budget trains it better" for stage in SHARES
                 if steps[stage] < ENOUGH_STEPS[stage]]
    return _plan(data, budget, minutes, device, found, tokenizer, settings, per_step, estimates,
                 eval_prompts=eval_prompts, fid=inception_available() and found.held_out >= 500,
                 warnings=warnings_, views=views)


def code_views(prior_epochs: float) -> int:
    """How many encodings of each training picture the prior gets (see EPOCHS_PER_VIEW)."""
    return max(1, min(MAX_VIEWS, math.ceil(prior_epochs / EPOCHS_PER_VIEW)))


def _plan(data: Path, budget: str, minutes: float, device: torch.device, found: Survey,
          tokenizer: dict[str, Any], settings: dict[str, dict[str, Any]],
          per_step: dict[str, float], estimates: dict[str, float], *, eval_prompts: int, fid: bool,
          warnings: list[str], views: int = 1) -> dict[str, Any]:
    """The plan as plan.json holds it."""
    epochs = {stage: settings[stage]["steps"] * settings[stage]["batch_size"] / found.pairs
              for stage in SHARES}
    return {"plan_version": PLAN_VERSION, "data": str(data.absolute()), "budget": budget,
            "minutes": minutes, "device": device.type, "threads": torch.get_num_threads(),
            "made": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "survey": dataclasses.asdict(found), "tokenizer": tokenizer, "settings": settings,
            "seconds_per_step": per_step, "epochs": epochs, "estimates": estimates,
            "views": views, "eval_prompts": eval_prompts, "fid": fid, "warnings": warnings}


def describe_plan(plan: dict[str, Any]) -> list[str]:
    """The plan as lines for the terminal: each stage, its settings and its estimated time."""
    s, found, est, epochs = plan["settings"], plan["survey"], plan["estimates"], plan["epochs"]
    views = plan.get("views", 1)  # plans written before views encoded each picture once
    bpe = plan["tokenizer"]
    tokens = (f"{bpe['trained_vocab_size']} (at most {bpe['bpe_vocab_size']})" if "trained_vocab_size" in bpe
              else f"at most {bpe['bpe_vocab_size']}")  # plans written before the timing used it
    vae, clip = s["vae"], s["clip"]
    grid = vae["image_size"] // vae["downsample"]

    def training(stage: str) -> str:
        run = RUNS[stage].create(data="-", out="-", **({} if stage == "vae" else {"tokenizer": "-"}),
                                 **s[stage])
        model, train = run.model, run.train
        steps = (f"{train.steps} steps of {train.batch_size} ({epochs[stage]:.0f} epochs), "
                 f"lr {train.lr:g}, warm-up {train.warmup_steps}")
        if isinstance(model, PriorConfig):
            steps = f"{model.depth} layers of width {model.dim}; {steps}, dropout {model.dropout}"
        return steps + (", keeping its best validation" if train.keep_best else "")

    rows = [
        ("data", f"{found['pairs']} training pairs"
                 + (f" and {found['held_out']} held out" if "held_out" in found else "")
                 + f" ({found['kind']}), median side "
                 f"{found['image_side']} px" + (f", {found['skipped']} skipped" if found["skipped"] else "")),
        ("tokenizer", f"BPE of {tokens} tokens, "
                      f"{plan['tokenizer']['text_length']} text positions"),
        ("train-vae", f"{vae['image_size']} px -> {grid}x{grid} codes of {vae['codebook_size']}, "
                      f"{vae['likelihood']} likelihood; {training('vae')}"),
        ("encode", "the training pictures" + (f" x {views} views (random crops)" if views > 1 else "")
                   + " and the held-out ones to codes"),
        ("train-prior", training("prior")),
        ("train-clip", f"{clip['image_size']} px; {training('clip')}"),
        ("eval", f"{plan['eval_prompts']} held-out captions" + (", FID" if plan["fid"] else "")),
    ]
    where = f"this {plan['device']} ({plan['threads']} threads)"
    lines = [f"plan for {plan['minutes']:g} minutes of {where}:" if est else
             f"plan (quick: tiny models, a few steps) on {where}:"]
    lines += [f"  {name:<12} {text}" + (f"   ~{est[name] / 60:.1f} min" if name in est else "")
              for name, text in rows]
    if est:
        lines.append(f"  {'total':<12} ~{sum(est.values()) / 60:.1f} min")
    lines += [f"  warning: {w}" for w in plan["warnings"]]
    return lines


def load_or_make_plan(data: Path, run: Path, budget: str, echo: Callable[[str], None], *,
                      keep_best: bool = False) -> dict[str, Any]:
    """The plan in `run/plan.json`, checked against this call's data, budget and `keep_best`, or
    a new one."""
    path = run / PLAN_FILE
    if path.exists():
        try:
            plan = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DalleError(f"{path} is not a plan ({e}); remove it to plan again") from None
        if plan.get("plan_version") != PLAN_VERSION:
            raise DalleError(f"{path} is a plan of another version; use a new --out")
        asked = (str(data.absolute()), budget)
        if (plan["data"], plan["budget"]) != asked:
            raise DalleError(f"{run} was planned for {plan['data']} with --budget {plan['budget']}; "
                             "run it with those, or give a new --out")
        planned = bool(plan["settings"]["prior"].get("keep_best", False))
        if planned != keep_best:
            raise DalleError(f"{run} was planned {'with' if planned else 'without'} --keep-best; "
                             "run it the same way, or give a new --out")
        echo(f"[plan] the plan made {plan['made']}, from {path}")
        if plan["device"] == "cpu" and plan["threads"] != torch.get_num_threads():
            warnings.warn(f"the plan was made with {plan['threads']} CPU threads and this run has "
                          f"{torch.get_num_threads()}: it goes on, but the weights will not be "
                          f"bit-identical to an uninterrupted run (--threads {plan['threads']})",
                          stacklevel=2)
        return plan
    if run.exists() and any(p.name != PLAN_FILE for p in run.iterdir()):
        raise DalleError(f"{run} holds files but no {PLAN_FILE}; give a new --out")
    plan = make_plan(data, run, budget, echo, keep_best=keep_best)
    run.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(plan, indent=2) + "\n").encode())
    return plan


def folder_recipe(data: Path, run: Path, budget: str = "minutes",
                  echo: Callable[[str], None] = print, *, keep_best: bool = False) -> Recipe:
    """The recipe for the pictures in `data` within `budget` (named, or minutes), planning it
    first (or reading `run/plan.json`) and printing the plan; `keep_best` (early stopping) gives
    the pipeline the prior and CLIP of their lowest loss on the held-out pairs."""
    plan = load_or_make_plan(data, run, budget, echo, keep_best=keep_best)
    for line in describe_plan(plan):
        echo(line)
    found, s = plan["survey"], plan["settings"]
    with warnings.catch_warnings():
        # The plan cut the batches to the set already; the runs' own warning would repeat it.
        warnings.simplefilter("ignore")
        steps = model_steps(run, s, version=2, val_split="val", vae_eval_split="val",
                            bpe_vocab_size=plan["tokenizer"]["bpe_vocab_size"],
                            text_length=plan["tokenizer"]["text_length"],
                            train_views=plan.get("views", 1),
                            sampling=SamplingConfig(guidance_scale=2.0))
    name = "folder"
    notices = found["notices"]
    return Recipe(name, 1, budget, [
        Step("data", split_data, {"data": Path(plan["data"]), "out": run / "data",
                                  "kind": found["kind"]}, rebuild="data"),
        *steps,
        Step("eval", evaluate_images_pipeline, {
            "pipeline": run / "pipeline", "data": run / "data/val", "out": run / "eval",
            "bf16": fast_bf16(), "prompts": plan["eval_prompts"], "fid": plan["fid"]}),
    ], evaluation="results.json",
        data_note=(f"Captioned pictures from `{plan['data']}` ({found['kind']}); "
                   f"{VAL_PERCENT}% of the pairs (at most {MAX_VAL}; by a hash of each file's path) "
                   "are held out as `val` unless the data came split. "
                   + (f"Notices found with the data and copied here: {', '.join(notices)}."
                      if notices else "No licence or attribution file was found with the data: "
                      "add one before sharing this pipeline.")),
        reproduce=(f"dalle recipe folder {plan['data']} --out RUN {budget_option(budget)}"
                   + (" --keep-best" if keep_best else "")),
        estimates=plan["estimates"])
