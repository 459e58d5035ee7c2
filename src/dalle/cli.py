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
data_app = typer.Typer(no_args_is_help=True, help="Build image-caption datasets.")
app.add_typer(data_app, name="data")


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
    tau_steps: Annotated[Optional[int], typer.Option(help="Steps to anneal tau 1 -> 1/16 [default: --steps].")] = None,
    kl_weight: Annotated[float, typer.Option(help="Final KL weight beta (paper: 6.6).")] = 6.6,
    kl_warmup_steps: Annotated[Optional[int], typer.Option(help="Steps to ramp beta from 0 [default: min(5000, --steps / 2)].")] = None,
    ema_decay: Annotated[float, typer.Option(help="EMA decay; 0 disables the EMA.")] = 0.999,
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
        tau_steps=tau_steps or steps, kl_warmup_steps=kl_warmup_steps or min(5000, steps // 2))
    train_config = TrainConfig(
        steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
        weight_decay=weight_decay, betas=(0.9, 0.999), ema_decay=ema_decay, bf16=bf16,
        device=device, num_workers=workers, seed=seed, log_every=log_every, log_format=log_format,
        sample_every=sample_every, checkpoint_every=checkpoint_every)
    train_vae(data, out, model_config, train_config, resume=resume)
    typer.echo(f"model saved to {out / 'model'}")


def _load_vae(path: Path, device: str):
    from dalle.dvae import DiscreteVAE
    from dalle.utils import resolve_device

    return DiscreteVAE.from_pretrained(path, device=resolve_device(device)).eval()


@app.command("reconstruct")
def reconstruct_command(
    vae: Annotated[Path, typer.Option(help="dVAE model directory (config.json + model.safetensors).")],
    data: Annotated[Path, typer.Option(help="Image-caption folder, or one image file.")],
    out: Annotated[Path, typer.Option(help="Output PNG: original | reconstruction pairs.")],
    n: Annotated[int, typer.Option(help="Number of images.")] = 16,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Write a grid of originals beside their reconstructions through the dVAE's codes."""
    import torch

    from dalle.data.folder import ImageCaptionFolder, center_square, load_image, to_rgb
    from dalle.train.vae import reconstruction_grid
    from dalle.utils import ensure_writable_dir, from_pil

    model = _load_vae(vae, device)
    size = model.config.image_size
    if data.is_file():
        images = from_pil([center_square(to_rgb(load_image(data)), size)])
    else:
        dataset = ImageCaptionFolder(data, size)
        images = torch.stack([dataset[i]["image"] for i in range(min(n, len(dataset)))])
    ensure_writable_dir(out.parent)
    device_ = next(model.parameters()).device
    reconstruction_grid(model, images.to(device_), columns=min(8, len(images))).save(out)
    typer.echo(f"wrote {out}")


@app.command("eval-vae")
def eval_vae_command(
    vae: Annotated[Path, typer.Option(help="dVAE model directory.")],
    data: Annotated[Path, typer.Option(help="Held-out image-caption folder.")],
    shapes: Annotated[Optional[bool], typer.Option(help="Parse reconstructions per SHAPES.md [default: when every caption is a shapes caption].")] = None,
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


def main() -> None:
    """Entry point: run the app, turning user-caused errors into one line."""
    try:
        app()
    # OSError covers missing paths, permissions and unreadable files (Pillow's UnidentifiedImageError).
    except (OSError, ValueError, RuntimeError) as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted; the last checkpoint is intact (resume with --resume)", err=True)
        sys.exit(130)
