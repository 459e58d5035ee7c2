"""`dalle recipe shapes|emoji`: data to a bundled-ready pipeline with its model card, resumable.

A recipe is a list of stages, each one `dalle` command line, run in order inside one run folder:

    <run>/data/  tokenizer/  vae/  codes/<split>/  prior/  clip/  pipeline/  eval/  stages/

A stage that finishes leaves `stages/<name>.json` (its command line and seconds) and is skipped on
the next call; an interrupted training or encoding stage continues from its checkpoint with
`--resume`, and an interrupted data stage is rebuilt from scratch (it is deterministic). The last
stage writes the model card, `pipeline/README.md`, from the stage records and the evaluations.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dalle.evaluate.fid import INCEPTION_PACKAGE
from dalle.utils import atomic_write

@dataclass
class Stage:
    """One `dalle` command line; `resume_if` (relative to the run) exists after an interruption
    when the command can continue with `--resume`, and `rebuild` is cleared before a restart."""

    name: str
    args: list[str]
    resume_if: str | None = None
    rebuild: str | None = None


@dataclass
class Recipe:
    name: str
    budget: str  # a key of _TRAINING: cpu, gpu or quick
    stages: list[Stage]
    evaluation: str  # the file in <run>/eval/ the model card quotes
    data_note: str
    extra_files: list[str] = field(default_factory=list)  # copied from <run>/data into the pipeline


def _train(run: Path, part: str, *args: str) -> Stage:
    return Stage(f"train-{part}", [f"train-{part}", "--out", str(run / part), *args],
                 resume_if=f"{part}/checkpoint.pt")


def _encode(run: Path, split: str) -> Stage:
    return Stage(f"encode-{split}", ["encode-dataset", "--vae", str(run / "vae/model"), "--data",
                                     str(run / "data" / split), "--out", str(run / "codes" / split)],
                 resume_if=f"codes/{split}/progress.json")


# Training sizes per budget: `cpu` takes about 1.5 h (emoji) to 2.5 h (shapes) on 2 CPU cores,
# `gpu` about 5 min of one H100 (launch-bound at these model sizes, so it trains on bigger batches),
# `quick` only checks that every stage runs. The model sizes are the same for cpu and gpu: the
# bundled pipelines must stay under 40 MB together.
_TRAINING = {
    "quick": {"vae": ["--steps", "20", "--batch-size", "8", "--sample-every", "0"],
              "prior": ["--steps", "10", "--batch-size", "8", "--dim", "32", "--depth", "2",
                        "--heads", "2", "--head-dim", "16"],
              "clip": ["--steps", "10", "--batch-size", "8", "--width", "32", "--image-depth", "1",
                       "--text-depth", "1"]},
    "cpu": {"vae": [],
            "prior": ["--steps", "1500", "--batch-size", "32", "--lr", "1e-3", "--warmup-steps", "100"],
            "clip": []},
    "gpu": {"vae": ["--steps", "4000", "--batch-size", "128", "--bf16", "--workers", "6"],
            "prior": ["--steps", "2000", "--batch-size", "256", "--lr", "1e-3", "--warmup-steps", "200"],
            "clip": ["--steps", "1000", "--batch-size", "128", "--bf16", "--workers", "6"]},
}


def default_budget() -> str:
    return "gpu" if torch.cuda.is_available() else "cpu"


def _image_eval(quick: bool, prompts: int) -> list[str]:
    """`dalle eval images` flags; FID needs the Inception-v3 wheel (scripts/install.sh --test adds
    it), and without it the evaluation skips FID."""
    fid = [] if not quick and importlib.util.find_spec(INCEPTION_PACKAGE) else ["--no-fid"]
    return [*fid, "--prompts", "4", "--r", "2"] if quick else [*fid, "--prompts", str(prompts)]


def _with_flags(args: list[str], extra: tuple[str, ...]) -> list[str]:
    """`args` with each `--flag value` pair of `extra` replacing that flag's value or appended,
    and each switch of `extra` (a flag followed by another flag or nothing) added once."""
    out, i = list(args), 0
    while i < len(extra):
        flag = extra[i]
        if i + 1 == len(extra) or extra[i + 1].startswith("--"):  # a switch
            if flag not in out:
                out.append(flag)
            i += 1
            continue
        value, i = extra[i + 1], i + 2
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


def _model_stages(run: Path, budget: str, vocab_size: int, val_split: str, *,
                  vae_eval_split: str = "test-zero-shot", vae_extra: tuple[str, ...] = (),
                  prior_extra: tuple[str, ...] = (), clip_extra: tuple[str, ...] = (),
                  sampling: tuple[str, ...] = ()) -> list[Stage]:
    """Tokenizer to assembled pipeline, the same for every recipe: `val_split` is the held-out
    split that validates the prior and CLIP, `vae_eval_split` the one the dVAE is measured on, the
    extras are a recipe's own flags for a stage (image size, grid factor, dropout), and `sampling`
    the pipeline's default sampling flags for `dalle assemble` (its sampling.json)."""
    d = run / "data"
    vae, prior, clip = (_with_flags(_TRAINING[budget][part], extra)
                        for part, extra in (("vae", vae_extra), ("prior", prior_extra),
                                            ("clip", clip_extra)))
    return [
        Stage("tokenizer", ["train-tokenizer", "--data", str(d / "train"), "--out",
                            str(run / "tokenizer"), "--vocab-size", str(vocab_size), "--text-length", "32"]),
        _train(run, "vae", "--data", str(d / "train"), *vae),
        Stage("eval-vae", ["eval-vae", "--vae", str(run / "vae/model"), "--data",
                           str(d / vae_eval_split), "--json", str(run / "eval/vae.json")]),
        *(_encode(run, split) for split in ("train", val_split)),
        _train(run, "prior", "--data", str(run / "codes/train"), "--tokenizer", str(run / "tokenizer"),
               "--vae", str(run / "vae/model"), "--val-data", str(run / "codes" / val_split),
               "--bf16", *prior),
        _train(run, "clip", "--data", str(d / "train"), "--tokenizer", str(run / "tokenizer"),
               "--val-data", str(d / val_split), *clip),
        Stage("assemble", ["assemble", "--tokenizer", str(run / "tokenizer"), "--vae",
                           str(run / "vae/model"), "--prior", str(run / "prior/model"), "--clip",
                           str(run / "clip/model"), "--out", str(run / "pipeline"), "--bf16-weights",
                           *sampling]),
    ]


def shapes_recipe(run: Path, budget: str = "cpu") -> Recipe:
    """The shapes benchmark (SHAPES.md): the measured configuration in README.md "Results"."""
    d, quick = run / "data", budget == "quick"
    # 100,000 training scenes, not 20,000: on 20,000 the prior overfits within its 5,000 steps
    # (README, "What took shapes from 51% to 88.5%"); scenes cost nothing to make.
    sizes = (["--train", "256", "--test-seen", "32", "--test-zero-shot", "32"] if quick
             else ["--train", "100000"])
    prompts = ["--prompts", "4", "--candidates", "2"] if quick else ["--prompts", "200", "--candidates", "16"]
    return Recipe("shapes", budget, [
        Stage("data", ["data", "shapes", "--out", str(d), *sizes], rebuild="data"),
        # The Gaussian likelihood keeps colour in the codes on the black background (README,
        # "Stage 1 on shapes"): 17.8% -> 92.8% of test-zero-shot reconstructions parse at f = 8.
        # lr 1e-3: at 2e-3 the encoder saturated (every cell one-hot, so no gradient reaches it)
        # for its first 1,500 steps in a run on 100,000 scenes (README, same section).
        # The cpu budget's 1,500 prior steps and 900 CLIP steps are too few here: shapes trains
        # the prior 5,000 and CLIP 2,700.
        *_model_stages(run, budget, vocab_size=1000, val_split="test-seen",
                       vae_extra=("--likelihood", "gaussian", "--lr", "1e-3"),
                       prior_extra=("--steps", "5000") if budget == "cpu" else (),
                       clip_extra=("--steps", "2700") if budget == "cpu" else (),
                       # Guidance 2 against 1 on the earlier CPU pipeline, 300 prompts per split:
                       # first-sample full match 30% -> 40% zero-shot, 36% -> 39% seen.
                       sampling=("--guidance", "2")),
        Stage("eval", ["eval", "shapes", "--pipeline", str(run / "pipeline"), "--data", str(d),
                       "--out", str(run / "eval"), "--bf16", *prompts]),
    ], evaluation="results.md", data_note=(
        "The `shapes` benchmark (SHAPES.md), generated by `dalle data shapes`: test-zero-shot "
        "scenes combine attribute pairs that training never shows together. Synthetic; no "
        "licence restrictions."))


def emoji_recipe(run: Path, budget: str = "cpu", source: Path | None = None,
                 cache: Path | None = None) -> Recipe:
    """Emoji in the Google and Twitter styles (DESIGN.md "Data"); captions `{label}, {style} style`."""
    d, quick, cpu = run / "data", budget == "quick", budget == "cpu"
    fetch = [*(["--from", str(source)] if source else []), *(["--cache", str(cache)] if cache else [])]
    return Recipe("emoji", budget, [
        # Without the skin-tone variants (half of all pairs, five near-copies of each person or
        # hand) every other emoji is seen twice as often. On the cpu budget the prior's 9,000
        # steps see each of the 3,628 pairs about 80 times: only then does `red apple, twitter
        # style` draw an apple rather than a red blob (5,000 steps with, or without, skin tones did
        # not; README, "emoji that draws the apple").
        Stage("data", ["data", "emoji", "--out", str(d), "--no-skin-tones", *fetch], rebuild="data"),
        # The gpu budget's ~140 epochs of the prior need dropout. The Gaussian likelihood at lr
        # 1e-3: 5,000 steps gave 20.85 dB and 40% of the codes in use, where the logit-Laplace
        # gave 18.5 dB and 13% (its learned scale is tiny on the white background).
        # On the cpu budget the dVAE trains in bf16 (1.6x the steps per second of fp32 here);
        # guidance 2 with 5,000 prior steps gave FID 188.1 against 197.1 for 1,500 steps and no
        # guidance (README, "emoji on the cpu budget").
        *_model_stages(run, budget, vocab_size=2000, val_split="test-zero-shot",
                       vae_extra=("--likelihood", "gaussian", "--lr", "1e-3")
                       + (("--bf16",) if cpu else ()),
                       prior_extra=() if quick else ("--dropout", "0.1")
                       + (("--steps", "9000") if cpu else ()),
                       sampling=("--guidance", "2")),
        Stage("eval", ["eval", "images", "--pipeline", str(run / "pipeline"), "--data",
                       str(d / "test-zero-shot"), "--out", str(run / "eval"), "--bf16",
                       *_image_eval(quick, prompts=200)]),
    ], evaluation="results.json", extra_files=["ATTRIBUTION.md", "licenses"], data_note=(
        "Emoji art from the npm packages `emoji-datasource-google` (Apache-2.0) and "
        "`emoji-datasource-twitter` (Twemoji, CC-BY-4.0: Copyright 2020 Twitter, Inc and other "
        "contributors), captions from `emojibase-data` (MIT), built by `dalle data emoji "
        "--no-skin-tones` (the skin-tone variants are left out). 10% of the (emoji, style) pairs "
        "are held out as test-zero-shot while the other style of the same emoji stays in training. "
        "See ATTRIBUTION.md and licenses/ in this directory."))


def fashion_mnist_recipe(run: Path, budget: str = "cpu", source: Path | None = None) -> Recipe:
    """Fashion-MNIST at 32 px (8x8 codes at f = 4), from the Debian package or the IDX files in
    `source`; evaluated by FID/KID, CLIP score and R-precision, and by the label accuracy of a
    classifier trained on the real training split."""
    d, quick = run / "data", budget == "quick"
    root = ["--root", str(source)] if source else []
    return Recipe("fashion-mnist", budget, [
        Stage("data", ["data", "fashion-mnist", "--out", str(d), "--image-size", "32", *root],
              rebuild="data"),
        *_model_stages(run, budget, vocab_size=1000, val_split="test", vae_eval_split="test",
                       vae_extra=("--image-size", "32", "--downsample", "4"),
                       clip_extra=("--image-size", "32", "--patch-size", "4")),
        Stage("classifier", ["train-classifier", "--out", str(run / "classifier"), "--image-size", "32",
                             "--epochs", "1" if quick else "2", *root]),
        Stage("eval", ["eval", "images", "--pipeline", str(run / "pipeline"), "--data", str(d / "test"),
                       "--out", str(run / "eval"), "--bf16", "--classifier", str(run / "classifier"),
                       *_image_eval(quick, prompts=500)]),
    ], evaluation="results.json", data_note=(
        "Fashion-MNIST (Xiao et al. 2017; MIT licence, Copyright 2017 Zalando SE) from the Debian package "
        "`dataset-fashion-mnist`, built by `dalle data fashion-mnist`: 60,000 training and 10,000 "
        "test images of 10 clothing classes, upscaled from 28 to 32 px, captioned with their class "
        "(`an ankle boot`)."))


_BUILDERS: dict[str, Callable[..., Recipe]] = {
    "shapes": shapes_recipe, "emoji": emoji_recipe, "fashion-mnist": fashion_mnist_recipe}
_SOURCED = {"emoji", "fashion-mnist"}  # the recipes whose data can come `--from` a folder


def build_recipe(name: str, run: Path, budget: str, source: Path | None = None,
                 cache: Path | None = None) -> Recipe:
    """The recipe called `name`; `source` (`--from`) and `cache` only where that recipe uses them."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(_BUILDERS)}")
    options: dict[str, Path] = {}
    if source is not None:
        if name not in _SOURCED:
            raise ValueError(f"the {name} recipe makes its own data; --from is for "
                             f"{' and '.join(sorted(_SOURCED))}")
        options["source"] = source
    if cache is not None:
        if name != "emoji":
            raise ValueError("--cache keeps the emoji recipe's npm downloads; the "
                             f"{name} recipe has none")
        options["cache"] = cache
    return _BUILDERS[name](run, budget, **options)


def run_recipe(recipe: Recipe, run: Path, invoke: Callable[[list[str]], None],
               echo: Callable[[str], None] = print) -> Path:
    """Run every unfinished stage of `recipe` in `run`, then write the model card."""
    records = run / "stages"
    records.mkdir(parents=True, exist_ok=True)
    (run / "eval").mkdir(exist_ok=True)
    for stage in recipe.stages:
        record = records / f"{stage.name}.json"
        if record.exists():
            echo(f"[{stage.name}] done earlier, skipped")
            continue
        args = list(stage.args)
        if stage.resume_if and (run / stage.resume_if).exists():
            args.append("--resume")
        elif stage.rebuild and (run / stage.rebuild).exists():
            shutil.rmtree(run / stage.rebuild)
        echo(f"[{stage.name}] dalle {' '.join(args)}")
        start = time.perf_counter()
        invoke(args)
        seconds = time.perf_counter() - start
        atomic_write(record, json.dumps({"command": ["dalle", *args], "run": str(run),
                                         "seconds": round(seconds, 1), **machine()}, indent=2).encode())
    for name in recipe.extra_files:
        source, target = run / "data" / name, run / "pipeline" / name
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        elif source.exists():
            shutil.copy2(source, target)
    card = run / "pipeline" / "README.md"
    atomic_write(card, model_card(recipe, run).encode())
    echo(f"[card] wrote {card}")
    return run / "pipeline"


def machine() -> dict:
    """What a stage ran on, for the model card's training times."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "gpu": gpu}


def _last_row_with(path: Path, column: str) -> dict[str, str]:
    """The last metrics.csv row that has `column` filled in ({} when none)."""
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get(column)]
    return rows[-1] if rows else {}


def _resumed(stage: dict) -> bool:
    """Whether a stage record is of a resumed run: its time is then the last attempt's only."""
    return "--resume" in stage["command"]


def _stage_time(stage: dict | None) -> str:
    """A stage's training time for the model card, with its thread count on a CPU."""
    if stage is None:
        return "-"
    notes = []
    if not stage["gpu"]:
        notes.append(f"{stage['threads']} thread" + ("s" if stage["threads"] > 1 else ""))
    if _resumed(stage):
        notes.append("resumed, last attempt")
    return f"{stage['seconds'] / 60:.1f} min" + (f" ({', '.join(notes)})" if notes else "")


def model_card(recipe: Recipe, run: Path) -> str:
    """pipeline/README.md: data, licences, configs, training time and the measured metrics."""
    from dalle.pipeline import DallePipeline

    pipe = DallePipeline.from_pretrained(run / "pipeline")
    stages = {s.name: json.loads((run / "stages" / f"{s.name}.json").read_text())
              for s in recipe.stages if (run / "stages" / f"{s.name}.json").exists()}
    v, p = pipe.vae.config, pipe.prior.config
    parts = [("tokenizer", f"byte-level BPE, {pipe.tokenizer.config.vocab_size} tokens, "
                           f"{pipe.tokenizer.config.text_length} text positions", "tokenizer"),
             ("dVAE", f"{pipe.vae.num_parameters() / 1e6:.2f}M parameters, {v.image_size}px -> "
                      f"{v.grid_size}x{v.grid_size} codes of {v.vocab_size}", "train-vae"),
             ("prior", f"{pipe.prior.num_parameters() / 1e6:.2f}M parameters, dim {p.dim}, depth "
                       f"{p.depth}, {p.heads} heads of {p.head_dim}, layout {p.layout}", "train-prior"),
             ("CLIP", f"{pipe.clip.num_parameters() / 1e6:.2f}M parameters" if pipe.clip else "none",
              "train-clip")]
    lines = [f"# dalle `{recipe.name}` pipeline", "",
             f"A small DALL-E (Ramesh et al. 2021) trained end to end by `dalle recipe {recipe.name}`.",
             "Weights are stored in bf16.", "", "## Data", "", recipe.data_note, "",
             "Pairs per split: " + ", ".join(f"{split.name} {sum(1 for _ in split.glob('*.txt')):,}"
                                              for split in sorted((run / "data").iterdir()) if split.is_dir()
                                              and split.name != "licenses") + ".", "",
             "## Parts", "", "| part | configuration | training time |", "|---|---|---|"]
    for part, text, stage in parts:
        lines.append(f"| {part} | {text} | {_stage_time(stages.get(stage))} |")
    total = sum(s["seconds"] for s in stages.values())
    resumed = any(_resumed(s) for s in stages.values())
    where = stages.get("train-prior", {})
    if "torch" in where:
        lines += ["", f"Times measured with torch {where['torch']} on "
                  + (f"one {where['gpu']}." if where["gpu"] else f"a CPU with {where['cpus']} cores.")
                  + (" A stage resumed after an interruption counts only its last attempt." if resumed else "")]
    lines += ["", f"All stages together took {'at least ' if resumed else ''}{total / 60:.1f} min; each "
              "stage's exact command is below.", "", "## Metrics", ""]
    vae_metrics = run / "eval" / "vae.json"
    if vae_metrics.exists():
        m = json.loads(vae_metrics.read_text())
        lines.append(f"- dVAE on held-out images: PSNR {m['psnr']:.2f} dB, codebook perplexity "
                     f"{m['perplexity']:.1f}" + (f", shapes parse {m['shapes_parse']:.1%}"
                                                  if "shapes_parse" in m else "") + ".")
    prior_row = _last_row_with(run / "prior" / "metrics.csv", "val_image_bits")
    if prior_row:
        lines.append(f"- Prior validation: {float(prior_row['val_text_loss']):.3f} nats per text "
                     f"token, {float(prior_row['val_image_bits']):.2f} bits per image token.")
    clip_row = _last_row_with(run / "clip" / "metrics.csv", "val_image_to_text")
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
    lines += ["", "## Reproduce", "", "```bash",
              f"dalle recipe {recipe.name} --budget {recipe.budget}   # resumable; or stage by stage:"]
    lines += [" ".join(a for a in s["command"] if a != "--resume").replace(s.get("run", str(run)), "$RUN")
              for s in stages.values()]
    lines += ["```", ""]
    return "\n".join(lines)
