"""The one training loop shared by every stage (dVAE, prior, CLIP).

A stage supplies a model, a dataset, and a loss function `loss_fn(model, batch, step) -> (loss,
metrics)`; the loop supplies AdamW, the LR schedule, gradient clipping, bf16 autocast, the EMA,
data parallelism (DDP or FSDP), activation checkpointing, torch.compile, logging, sample grids,
validation and exact-resume checkpoints.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm import tqdm

from dalle.config import JSONConfig, TrainConfig
from dalle.errors import DalleError
from dalle.pretrained import WEIGHTS_NAME, PretrainedModel
from dalle.prior import estimate_mfu
from dalle.train import distributed as D
from dalle.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from dalle.train.curves import plot_curves
from dalle.train.ema import EMA
from dalle.train.logger import MetricsLogger
from dalle.train.run_folder import RunFolder
from dalle.train.sampler import StepBatchSampler
from dalle.train.schedules import WarmupDecay
from dalle.train.signals import StopRequest, TrainingStopped
from dalle.utils import atomic_write, fast_bf16, resolve_device

# The TrainConfig fields that shape a run's trajectory: a resumed run must keep them.
TRAJECTORY = ("steps", "batch_size", "lr", "schedule", "warmup_steps", "min_lr_ratio", "betas",
              "weight_decay", "grad_clip", "ema_decay", "bf16", "seed")
# Under torchrun the processes agree on a stop signal every this many steps (a collective; on
# one process it is read every step).
STOP_CHECK_EVERY = 10

LossFn = Callable[[nn.Module, Any, int], tuple[torch.Tensor, dict[str, Any]]]
SampleFn = Callable[[nn.Module, Any], Image.Image]
ValidateFn = Callable[[nn.Module, torch.autocast], dict[str, float]]

# Dense bf16 peak FLOP/s of one GPU (vendors' datasheets), by a part of its CUDA name; first match.
BF16_PEAK_FLOPS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
                   ("A100", 312e12))


def known_peak_flops(device: torch.device, bf16: bool) -> float | None:
    """The datasheet peak FLOP/s of `device` in bf16, if this table knows it; else None."""
    if not bf16 or device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for part, flops in BF16_PEAK_FLOPS if part in name), None)


def _first_line(error: Exception) -> str:
    """`error` in one line: its type and the first line of its message, or the first two where
    the first only introduces the second (dynamo's "backend='inductor' raised:")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else "".join(lines[:1])
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and kernels only, not on biases and gains.

    The fused kernel (one pass over every tensor) makes the step 3x faster on CPU than the
    per-op version; FSDP's sharded parameters keep the default implementation.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    devices = {p.device.type for p in decay + no_decay}
    fused = not config.fsdp and devices <= {"cpu", "cuda"}
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=fused or None)


BEST_DIR = "best"  # with keep_best: the weights of the lowest validation so far


class Trainer:
    """Trains `model` on `dataset` with `loss_fn`, writing everything under `out_dir`.

    A map-style dataset is read in batches addressed by step (StepBatchSampler). An
    IterableDataset (shards) must have `set_position(seed, step, global_batch, rank, world_size,
    num_workers)` and then yield exactly the batches of an uninterrupted run from `step` on.

    out_dir/checkpoint.pt  latest checkpoint (atomic), resumed with `resume=True`; it records
                           the seconds trained over every attempt (`trained_seconds`)
    out_dir/metrics.csv    one row per `log_every` steps (also to TensorBoard or W&B, as
                           `log_format` says: out_dir/tensorboard, out_dir/wandb)
    out_dir/curves.png     metrics.csv drawn: losses, learning rate, throughput
    out_dir/samples/       a grid from `sample_fn` every `sample_every` steps
    `validate_fn(model, autocast) -> metrics` runs every `eval_every` steps and at the end on
    the export weights; its metrics join metrics.csv.
    out_dir/model/         the final weights (EMA or raw), `from_pretrained`-loadable; with
                           `keep_best`, those of the validation with the lowest `best_metric`
    out_dir/best/          with `keep_best`: the best weights so far, and best.json its step
    A model with `flops_per_token()` and `sequence_length` (the prior) also logs `model_tflops`
    and, with `peak_flops` (one device's peak FLOP/s) given or known for its GPU, `mfu`.
    """

    def __init__(self, model: PretrainedModel, dataset: Dataset, config: TrainConfig,
                 out_dir: str | Path, loss_fn: LossFn, *, collate_fn: Callable | None = None,
                 sample_fn: SampleFn | None = None, sample_batch: Any = None,
                 validate_fn: ValidateFn | None = None, best_metric: str | None = None,
                 peak_flops: float | None = None, resume: bool = False, overwrite: bool = False,
                 show_progress: bool = True) -> None:
        if config.keep_best and (validate_fn is None or best_metric is None):
            raise DalleError("keep_best chooses among validations: give the run validation data "
                             "(--val-data)")
        self.best_metric = best_metric
        self.best: dict[str, Any] | None = None  # step, metric and value of the best validation
        self.config, self.loss_fn, self.sample_fn = config, loss_fn, sample_fn
        self.sample_batch, self.validate_fn = sample_batch, validate_fn
        self.ctx = D.setup_distributed(resolve_device(config.device))
        # The main process claims the run folder (a lock; a finished run is not replaced unasked).
        self.folder = RunFolder(out_dir, resume=resume, overwrite=overwrite) if self.ctx.is_main else None
        self.out_dir = Path(out_dir)
        self.model = model.to(self.ctx.device).train()
        # Model FLOPs per token (forward + backward) and tokens per sample: model TFLOP/s and MFU.
        count = getattr(model, "flops_per_token", None)
        self.flops_per_token: float | None = count() if count is not None else None
        self.tokens_per_sample: int = getattr(model, "sequence_length", 0)
        self.peak_flops = peak_flops or known_peak_flops(self.ctx.device, config.bf16)
        if config.bf16 and self.ctx.device.type == "cpu" and not fast_bf16(self.ctx.device):
            warnings.warn("this CPU has no fast bf16 (oneDNN needs AVX-512 or AMX), so bf16 "
                          "autocast trains many times slower than fp32 here; leave out --bf16",
                          stacklevel=2)
        if config.activation_checkpointing:
            D.apply_activation_checkpointing(self.model)
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay > 0 else None
        # FSDP shards the model and its EMA copy alike (an FSDP module cannot be deep-copied),
        # before the optimizer exists, so that it holds only this process's shards.
        self.sharded = config.fsdp and self.ctx.enabled
        if self.sharded:
            D.shard_model(self.model, self.ctx)
            if self.ema is not None:
                D.shard_model(self.ema.shadow, self.ctx)
        self.optimizer = build_optimizer(self.model, config)
        schedule = WarmupDecay(config.steps, config.warmup_steps, config.schedule, config.min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.step = 0
        # Seconds trained before this attempt (a resumed run's earlier ones, up to the checkpoint
        # it resumes from; None when that checkpoint did not record them), and when it began.
        self.earlier_seconds: float | None = 0.0
        self.attempt_start = time.perf_counter()
        self._curves_drawn = -float("inf")
        streaming = isinstance(dataset, IterableDataset)
        if streaming and not hasattr(dataset, "set_position"):
            raise TypeError(f"{type(dataset).__name__} is an IterableDataset without set_position(); "
                            f"the Trainer needs it to resume exactly")
        if resume:
            self._restore(load_checkpoint(self.out_dir / CHECKPOINT_NAME), streaming)
        else:
            torch.manual_seed(config.seed + self.ctx.rank)
        # Wrap after restoring: DDP broadcasts rank 0's weights, which are the resumed ones.
        self.train_model = self.model if self.sharded else D.wrap_data_parallel(self.model, self.ctx)
        # Compiled last, as torchtitan does, and after the EMA's copy, which stays eager.
        # Compilation is lazy: until a first step has run through the compiled code, it may fail.
        self.compile_unproven = config.compile and self._compile()
        if streaming:
            # A stream cannot be indexed by step; it is told where this process starts reading.
            dataset.set_position(  # type: ignore[attr-defined]
                seed=config.seed, step=self.step, global_batch=config.batch_size,
                rank=self.ctx.rank, world_size=self.ctx.world_size, num_workers=config.num_workers)
            batching: dict[str, Any] = {"batch_size": config.batch_size // self.ctx.world_size}
        else:
            batching = {"batch_sampler": StepBatchSampler(
                len(dataset), config.batch_size, config.seed,  # type: ignore[arg-type]
                self.ctx.rank, self.ctx.world_size, self.step)}
        # The loader gets its own generator so that creating it never advances the global RNG.
        self.loader = DataLoader(dataset, **batching, collate_fn=collate_fn,
                                 num_workers=config.num_workers,
                                 generator=torch.Generator().manual_seed(config.seed),
                                 pin_memory=self.ctx.device.type == "cuda",
                                 persistent_workers=config.num_workers > 0)
        self.show_progress = show_progress and self.ctx.is_main
        self.logger = None
        if self.ctx.is_main:
            model_config = getattr(model, "config", None)
            settings = {"train": config.to_dict(), "model_class": type(model).__name__,
                        "model": model_config.to_dict() if isinstance(model_config, JSONConfig) else {}}
            self.logger = MetricsLogger(self.out_dir, config.log_format, self.step if resume else None,
                                        config=settings)

    @property
    def autocast(self) -> torch.autocast:
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.config.bf16)

    def _restore(self, state: dict[str, Any], streaming: bool) -> None:
        if state["world_size"] != self.ctx.world_size:
            raise DalleError(f"checkpoint was written by {state['world_size']} processes, this "
                             f"run has {self.ctx.world_size}; exact resume needs the same number")
        saved_workers = state["train_config"]["num_workers"]
        if streaming and saved_workers != self.config.num_workers:
            raise DalleError(f"checkpoint was written with num_workers={saved_workers}, this run has "
                             f"{self.config.num_workers}; a stream resumes exactly only with the same")
        saved_train = TrainConfig.from_dict(state["train_config"])
        changed = [f"{name} {getattr(saved_train, name)} -> {getattr(self.config, name)}"
                   for name in TRAJECTORY if getattr(saved_train, name) != getattr(self.config, name)]
        if changed:
            # A run's length fixes its learning-rate schedule, and the other settings its
            # trajectory: resuming with them changed would not continue the same run.
            raise DalleError(f"the checkpoint's run was trained with other settings ({'; '.join(changed)}); "
                             "resume with the same ones, or start a new run (another --out, or --overwrite)")
        model_config = getattr(self.model, "config", None)
        saved = state.get("model_config")
        if isinstance(model_config, JSONConfig) and saved is not None:
            saved = type(model_config).from_dict(saved).to_dict()  # fields since renamed, renamed
        if model_config is not None and saved != model_config.to_dict():
            saved, now = saved or {}, model_config.to_dict()
            diff = [k for k in now if saved.get(k) != now[k]]
            raise DalleError(f"checkpoint was written for a different model config "
                             f"(differs in: {', '.join(diff) or 'fields'})")
        if state["train_config"].get("fsdp", False) and state["world_size"] > 1 and not self.sharded:
            raise DalleError("checkpoint was written by an FSDP run; resume it with --fsdp")
        if self.sharded and not state["train_config"].get("fsdp", False):
            raise DalleError("checkpoint was written without FSDP; resume it without --fsdp")
        D.load_full_model_state(self.model, state["model"])
        if self.ema is not None and state.get("ema") is not None:
            D.load_full_model_state(self.ema.shadow, state["ema"])
        D.load_full_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.best = state.get("best")
        self.earlier_seconds = state.get("trained_seconds")
        set_rng_state(state["rng"][self.ctx.rank])

    def _checkpoint(self) -> None:
        rngs = D.gather_objects(rng_state(), self.ctx)
        # Under FSDP these gather the shards: every process takes part, rank 0 gets the result.
        model_state = D.full_model_state(self.model)
        ema_state = D.full_model_state(self.ema.shadow) if self.ema is not None else None
        optimizer_state = D.full_optimizer_state(self.model, self.optimizer)
        if self.ctx.is_main:
            model_config = getattr(self.model, "config", None)
            save_checkpoint(self.out_dir / CHECKPOINT_NAME, {
                "step": self.step,
                "model": model_state,
                "ema": ema_state,
                "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict(),
                "rng": rngs,
                "world_size": self.ctx.world_size,
                "best": self.best,
                "trained_seconds": self.trained_seconds(),
                "train_config": self.config.to_dict(),
                "model_config": model_config.to_dict() if isinstance(model_config, JSONConfig) else None,
            })
            self._draw_curves()
        D.barrier(self.ctx)

    def _draw_curves(self, force: bool = False) -> None:
        """curves.png from metrics.csv: at the end, on a stop, and at checkpoints at most once a
        minute (a drawing costs about half a second)."""
        metrics = self.out_dir / "metrics.csv"
        now = time.monotonic()
        if self.ctx.is_main and metrics.exists() and (force or now - self._curves_drawn >= 60):
            plot_curves(metrics)
            self._curves_drawn = now

    @property
    def eval_model(self) -> nn.Module:
        """The weights to sample and export with: the EMA if enabled and asked for."""
        if self.ema is not None and self.config.export == "ema":
            return self.ema.shadow
        return self.model

    def _evaluation(self, fn: Callable[[nn.Module], Any]) -> Any:
        """`fn(export weights)` in eval mode, without touching the training RNG streams.

        A sharded model's forward is a collective, so then every process runs it; otherwise only
        rank 0 does and the others get None.
        """
        if not (self.ctx.is_main or self.sharded):
            return None
        model = self.eval_model
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[self.ctx.device] if self.ctx.device.type == "cuda" else []):
            with torch.no_grad():
                result = fn(model)
        model.train(was_training)
        return result if self.ctx.is_main else None

    def _samples(self) -> None:
        if self.sample_fn is None or self.sample_batch is None:
            return
        batch = to_device(self.sample_batch, self.ctx.device)

        def sample(model: nn.Module) -> Image.Image:
            with self.autocast:
                return self.sample_fn(model, batch)  # type: ignore[misc]

        grid = self._evaluation(sample)
        if grid is not None:
            (self.out_dir / "samples").mkdir(exist_ok=True)
            grid.save(self.out_dir / "samples" / f"step_{self.step:07d}.png")
            if self.logger is not None:
                self.logger.image(self.step, "samples", grid)

    def _validate(self) -> None:
        if self.validate_fn is None:
            return
        metrics = self._evaluation(lambda model: self.validate_fn(model, self.autocast))  # type: ignore[misc]
        if metrics is not None and self.logger is not None:
            self.logger.log(self.step, metrics)
        if self.config.keep_best:
            self._keep_if_best(metrics)
        D.barrier(self.ctx)

    def _keep_if_best(self, metrics: dict[str, float] | None) -> None:
        """Save the export weights to best/ when this validation is the lowest so far (rank 0
        decides; under FSDP every process gathers the weights)."""
        value = None if metrics is None else float(metrics[self.best_metric])  # type: ignore[index]
        better = value is not None and (self.best is None or value < self.best["value"])
        if self.ctx.enabled:  # only rank 0 validates: its decision, agreed by every process
            flag = torch.tensor(float(better), device=self.ctx.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            better = bool(flag.item())
        if not better:
            return
        model = self.eval_model
        if not isinstance(model, PretrainedModel):
            return
        state = D.full_model_state(model)
        if self.ctx.is_main:
            self.best = {"step": self.step, "metric": self.best_metric, "value": value}
            model.save_pretrained(self.out_dir / BEST_DIR, state)
            atomic_write(self.out_dir / BEST_DIR / "best.json", (json.dumps(self.best) + "\n").encode())

    def _compile(self) -> bool:
        """Compile the model's units (`distributed.compile_units`); False if torch.compile
        refuses at once."""
        try:
            D.compile_units(self.model)
        except Exception as e:
            reason = _first_line(e)
        else:
            return True
        self._uncompile(reason)
        return False

    def _uncompile(self, reason: str) -> None:
        """Go on eagerly, with the one warning a failed compilation gives."""
        D.uncompile_units(self.model)
        warnings.warn(f"torch.compile failed ({reason}); training without compilation", stacklevel=2)

    def _loss_and_gradients(self, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        with self.autocast:
            loss, metrics = self.loss_fn(self.train_model, batch, self.step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step}; the last good "
                                     f"checkpoint is {self.out_dir / CHECKPOINT_NAME}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss, metrics

    def _first_compiled_pass(self, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """The first forward and backward through the compiled units, where torch.compile does
        its work (lazily, the backward's too). If it fails, for want of a C++ compiler or for an
        op it cannot lower, the units turn eager and the pass runs again from the same RNG state:
        nothing else has changed, since the optimizer has not stepped, and the gradients are reset
        before the backward. A bug that is not the compiler's fails the eager pass too, and is
        raised from there. Under torchrun each process decides alone: they compile the same code,
        so they fail alike."""
        self.compile_unproven = False
        rng = rng_state()
        try:
            return self._loss_and_gradients(batch)
        except Exception as e:
            reason = _first_line(e)  # not the exception: its traceback holds the failed pass's tensors
        set_rng_state(rng)
        self._uncompile(reason)
        return self._loss_and_gradients(batch)

    def train_step(self, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """One optimizer update on `batch`; returns the loss and the stage's metrics."""
        if self.compile_unproven:
            loss, metrics = self._first_compiled_pass(batch)
        else:
            loss, metrics = self._loss_and_gradients(batch)
        if self.config.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            metrics["grad_norm"] = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        return loss, metrics

    def _efficiency(self, samples_per_s: float) -> dict[str, float]:
        """Achieved model TFLOP/s and, given a peak, MFU over every process's device."""
        if self.flops_per_token is None:
            return {}
        tokens_per_s = samples_per_s * self.tokens_per_sample
        scalars = {"model_tflops": self.flops_per_token * tokens_per_s / 1e12}
        if self.peak_flops:
            scalars["mfu"] = estimate_mfu(self.flops_per_token, tokens_per_s,
                                          self.peak_flops * self.ctx.world_size)
        return scalars

    def trained_seconds(self) -> float | None:
        """Seconds this run has trained so far, over every attempt (see earlier_seconds)."""
        if self.earlier_seconds is None:
            return None
        return self.earlier_seconds + time.perf_counter() - self.attempt_start

    def fit(self, until: int | None = None) -> nn.Module:
        """Train up to step `until` (default: `config.steps`); returns the export weights."""
        c = self.config
        until = min(until or c.steps, c.steps)
        recorded = self.out_dir / "config.json"  # the run's whole config (data paths too), if recorded
        if self.logger is not None and recorded.is_file():
            self.logger.update_config(json.loads(recorded.read_text()))
        progress = tqdm(total=until, initial=self.step, disable=not self.show_progress,
                        dynamic_ncols=True, desc="train")
        if self.step == 0:
            self._samples()
        try:
            with StopRequest() as stop:
                self._train_until(until, stop, progress)
        finally:
            progress.close()
        if self.step < until:
            raise DalleError(f"the data ended at step {self.step} of {until}; a stream to train "
                             f"on must repeat (for shards: epochs=None)")
        self._validate()
        if self.step >= c.steps and isinstance(self.eval_model, PretrainedModel):
            state = D.full_model_state(self.eval_model)
            if self.ctx.is_main:
                if c.keep_best and self.best is not None:
                    state = load_file(self.out_dir / BEST_DIR / WEIGHTS_NAME)
                self.eval_model.save_pretrained(self.out_dir / "model", state)
        self._draw_curves(force=True)
        return self.eval_model

    def _stop_signal(self, stop: StopRequest) -> int | None:
        """The signal that asked this run to stop, agreed by every process (a collective)."""
        signum = stop.signum or 0
        if self.ctx.enabled:
            if self.step % STOP_CHECK_EVERY:
                return None
            flag = torch.tensor(float(signum), device=self.ctx.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            signum = int(flag.item())
        return signum or None

    def _train_until(self, until: int, stop: StopRequest, progress: tqdm) -> None:
        c = self.config
        tick, tick_step = time.perf_counter(), self.step
        for batch in self.loader if self.step < until else []:
            loss, metrics = self.train_step(to_device(batch, self.ctx.device))
            self.step += 1
            progress.update(1)
            if self.step % c.log_every == 0 or self.step == until:
                elapsed = time.perf_counter() - tick
                rate = (self.step - tick_step) * c.batch_size / max(elapsed, 1e-9)
                tick, tick_step = time.perf_counter(), self.step
                scalars = {"loss": float(D.all_mean(loss.detach().float(), self.ctx)),
                           "lr": float(self.scheduler.get_last_lr()[0]), "samples_per_s": rate,
                           **self._efficiency(rate), **{k: float(v) for k, v in metrics.items()}}
                progress.set_postfix(loss=f"{scalars['loss']:.4f}", rate=f"{rate:.0f}/s")
                if self.logger is not None:
                    self.logger.log(self.step, scalars)
            if c.sample_every and self.step % c.sample_every == 0:
                self._samples()
            if c.eval_every and self.step % c.eval_every == 0 and self.step != until:
                self._validate()
            signum = self._stop_signal(stop)
            if (c.checkpoint_every and self.step % c.checkpoint_every == 0) or self.step == until \
                    or signum:
                self._checkpoint()
            if signum and self.step < until:
                self._draw_curves(force=True)
                raise TrainingStopped(signum, self.step, c.steps, self.out_dir / CHECKPOINT_NAME)
            if self.step >= until:
                break

    def close(self) -> None:
        """Flush the log and leave the process group (every process calls it)."""
        if self.logger is not None:
            self.logger.close()
        if self.folder is not None:
            self.folder.release()
        # The DDP wrapper holds the process group: dropping it lets the group be freed now rather
        # than at interpreter exit, where gloo's worker threads can abort the process.
        self.train_model = self.model
        D.teardown_distributed(self.ctx)
