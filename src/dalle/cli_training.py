"""The `dalle train-vae|train-prior|train-clip` commands, generated from the run configs.

Each command has one option per field of its run config (`dalle.train.runs`): the run's own
fields, its model config's and TrainConfig's, named as the fields are (`--batch-size` is
`TrainConfig.batch_size`). Every option defaults to "not given": the run starts from `--preset`
(or from `--config`, or on `--resume` from the run folder's config.json) and only the options
given override it, so the defaults live in one place, the library. Help texts are below; a field
without one fails at import, so a new field cannot reach the CLI undocumented.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, cast

import typer

from dalle.config import TrainConfig
from dalle.errors import DalleError
from dalle.threads import TRAINING_HELP, use_threads
from dalle.train.checkpoint import CHECKPOINT_NAME
from dalle.train.runs import RUN_FILE, RunConfig

# Options shared by the three commands (data paths, the run's own settings, model and training
# fields); the per-stage texts of `data` and `val_data` are in STAGE_HELP.
FIELD_HELP = {
    # run fields
    "out": "Run folder: config.json, checkpoint, metrics, samples, model/.",
    "tokenizer": "Tokenizer directory from `dalle train-tokenizer`.",
    "max_crop": "Train on random square crops removing up to this fraction of the side (0: none).",
    "caption_drop": "Probability of replacing a caption by pads (enables classifier-free guidance).",
    "attention": "How the layouts are computed: auto (flex on CUDA, else blocks), blocks, flex (CUDA for training) or reference (dense mask).",
    "hard_negatives": "Add word-swapped captions per sample as negatives: one word replaced, two traded (folders only).",
    # VAEConfig
    "image_size": "Image side in pixels.",
    "channels": "Image channels.",
    "downsample": "Grid factor f: image side / code grid side.",
    "codebook_size": "Codebook size K (paper: 8192).",
    "hidden": "Width of the first encoder group (paper: 256).",
    "blocks_per_group": "Resblocks per group (paper: 2).",
    "decoder_init": "Decoder input width (paper: 128).",
    "tau_start": "Gumbel-softmax temperature at the start (paper: 1).",
    "tau_end": "Temperature at the end of its cosine annealing (paper: 1/16).",
    "tau_steps": "Steps to anneal the temperature [the run's --steps unless given].",
    "kl_weight": "Final KL weight beta (paper: 6.6).",
    "kl_warmup_steps": "Steps to ramp beta from 0 [min(5000, --steps / 2) unless given].",
    "logit_laplace_eps": "Logit-Laplace pixel squashing epsilon (paper: 0.1).",
    "likelihood": "Pixel likelihood: logit-laplace (paper) or gaussian (fixed scale; keeps colour in the codes on black- or white-background data).",
    "gaussian_sigma": "Scale of the Gaussian likelihood.",
    # PriorConfig
    "dim": "Model width (paper: 3968).",
    "depth": "Layers (paper: 64).",
    "heads": "Attention heads (paper: 62).",
    "head_dim": "Width per head (paper: 64).",
    "mlp_ratio": "MLP width / model width.",
    "dropout": "Residual and embedding dropout.",
    "layout": "sparse (the paper's row/column/conv schedule), dense, row, column or conv.",
    "row_window": "Image tokens a row layer looks back [the grid side].",
    "conv_kernel": "Side of the convolutional layer's causal neighbourhood (paper: 11).",
    "text_loss_weight": "Weight of the text tokens' loss (paper: 1/8).",
    "image_loss_weight": "Weight of the image tokens' loss (paper: 7/8).",
    # CLIPConfig
    "patch_size": "Image tokens are patch_size x patch_size (a conv stem).",
    "image_width": "Width of the image tower.",
    "image_depth": "Image transformer layers.",
    "image_heads": "Attention heads of the image tower.",
    "text_width": "Width of the text tower.",
    "text_depth": "Text transformer layers.",
    "text_heads": "Attention heads of the text tower.",
    "embed_dim": "Width of the shared embedding.",
    "logit_scale_init": "Initial log of the logit scale (CLIP: log(1 / 0.07)).",
    "logit_scale_max": "The logit scale is clamped at this (CLIP: 100).",
    # TrainConfig
    "steps": "Optimizer updates.",
    "batch_size": "Global batch size (under torchrun each process takes its share).",
    "lr": "Peak learning rate.",
    "schedule": "Learning-rate decay after the warm-up: cosine, linear or constant.",
    "warmup_steps": "Linear learning-rate warm-up steps.",
    "min_lr_ratio": "Final learning rate / peak.",
    "betas": "AdamW betas.",
    "weight_decay": "AdamW weight decay (on matrices and kernels only).",
    "grad_clip": "Gradient norm clip; 0 disables it.",
    "ema_decay": "EMA decay; 0 disables the EMA.",
    "export": "Weights model/ receives at the end: ema or raw.",
    "keep_best": "Export the weights of the validation with the lowest loss (kept in best/ as the run goes), not the last: early stopping that still trains every step.",
    "bf16": "bf16 autocast (CPU and CUDA).",
    "activation_checkpointing": "Recompute each block's activations in the backward pass.",
    "fsdp": "Shard parameters, gradients and optimizer state over the torchrun processes (FSDP2).",
    "compile": "torch.compile each block for training (the first step compiles: half a minute or more on a CPU); if that fails, one warning and the run trains without it.",
    "device": "auto, cpu, cuda or cuda:N.",
    "seed": "Seed for weights, data order and noise.",
    "num_workers": "Data loader worker processes.",
    "log_every": "Steps between metrics rows.",
    "log_format": "Also log to tensorboard (RUN/tensorboard) or wandb (RUN/wandb; offline without a W&B login); metrics.csv is always written: csv, tensorboard or wandb.",
    "sample_every": "Steps between sample grids; 0 never.",
    "eval_every": "Steps between validation passes (with --val-data).",
    "checkpoint_every": "Steps between checkpoints.",
}
STAGE_HELP = {
    "VAERun": {"data": "Image-caption folder or shard folder."},
    "PriorRun": {"data": "Codes directory from `dalle encode-dataset`.",
                 "val_data": "Held-out codes directory for the validation loss.",
                 "vae": "The dVAE that made the codes: with it the run draws sample grids every --sample-every steps."},
    "CLIPRun": {"data": "Image-caption folder or shard folder.",
                "val_data": "Held-out image-caption folder for retrieval accuracy."},
}


def run_fields(run_class: type[RunConfig]) -> dict[str, tuple[Any, Any]]:
    """Every setting a user may give for `run_class`: name -> (type, default of the small preset).

    The run's own fields come first, then its model's (less those the data determines), then
    TrainConfig's."""
    default_run = {f.name: f.default for f in dataclasses.fields(run_class)}
    model_class = run_class.model_class
    model = model_class.preset("small")
    train = cast(TrainConfig, default_run["train"])
    settings: dict[str, tuple[Any, Any]] = {}
    hints = typing.get_type_hints(run_class)
    for name, default in default_run.items():
        if name not in ("model", "train"):
            settings[name] = (hints[name], default)
    for source in (model, train):
        source_hints = typing.get_type_hints(type(source))
        for f in dataclasses.fields(source):  # type: ignore[arg-type]
            if f.name not in run_class.derived:
                settings[f.name] = (source_hints[f.name], getattr(source, f.name))
    return settings


def _option_type(hint: Any) -> Any:
    """The option's type: Optional of the field's (None meaning "not given")."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    return Optional[hint]  # noqa: UP045 - typer reads this annotation at run time


def _help(run_class: type[RunConfig], name: str, default: Any) -> str:
    text = STAGE_HELP.get(run_class.__name__, {}).get(name) or FIELD_HELP.get(name)
    if text is None:
        raise KeyError(f"no help text for {run_class.__name__}.{name}; add it to FIELD_HELP")
    shown = "" if default in (None, "", dataclasses.MISSING) else f" [small preset: {default}]"
    if isinstance(default, tuple):
        shown = f" [small preset: {' '.join(map(str, default))}]"
    return text + shown.replace("[", "\\[")


def training_command(run_class: type[RunConfig], train: Callable[..., Any],
                     echo: Callable[[str], None]) -> Callable[..., None]:
    """A Typer command for `run_class`: --preset / --config / --resume and one option per field."""
    fields = run_fields(run_class)

    def command(preset: str | None, config: Path | None, resume: bool, overwrite: bool,
                threads: int | None, **given: Any) -> None:
        use_threads(threads, adapt=False)
        overrides = {name: value for name, value in given.items() if value is not None}
        out = overrides.get("out")
        if resume and out is not None and not (Path(out) / CHECKPOINT_NAME).exists():
            raise DalleError(f"nothing to resume in {out}: it has no {CHECKPOINT_NAME}")
        recorded = Path(out) / RUN_FILE if out is not None else None
        if config is None and resume and preset is None and recorded is not None and recorded.exists():
            config = recorded  # --resume alone continues the run as it was recorded
        run = run_class.create(preset=preset, config=config, **overrides)
        train(run, resume=resume, overwrite=overwrite)
        echo(f"model saved to {Path(run.out) / 'model'}; run config in {Path(run.out) / RUN_FILE}")

    presets = ", ".join(run_class.model_class.presets())
    parameters = [
        inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[str], typer.Option(help=f"Model preset: {presets} \\[default: small].", show_default=False)]),  # noqa: UP045
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[Path], typer.Option(help="A run's config.json to start from (options given here override it).")]),  # noqa: UP045
        inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
            bool, typer.Option(help="Continue the run in --out exactly where it stopped (its config.json unless --config).")]),
        inspect.Parameter("overwrite", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
            bool, typer.Option(help="Start again in an --out that holds a run, replacing its files.")]),
        inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[int], typer.Option(help=TRAINING_HELP, min=1, show_default=False)]),  # noqa: UP045
    ]
    for name, (hint, default) in fields.items():
        option = typer.Option(help=_help(run_class, name, default), show_default=False)
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=Annotated[_option_type(hint), option]))
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    return command

