"""Helpers shared by the benchmark scripts (run them from the repository root).

`measure` times a function (median, min and max of several runs after warm-up), `peak_bytes` its
memory, and the rest formats markdown, describes the machine and builds the comparison prior that
several tables use.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import NamedTuple

import torch
from torch.profiler import ProfilerActivity, profile

from dalle.config import PriorConfig
from dalle.utils import resolve_device

# The comparison config's vocabularies: (text ids: BPE + 32 pads + start-of-image, image codes).
VOCABULARIES = {"paper": (16_384 + 32 + 1, 8192), "shapes": (371, 512)}


class Timing(NamedTuple):
    """Median, fastest and slowest of several runs (seconds, or a rate derived from them)."""

    median: float
    min: float
    max: float

    def rate(self, work: float) -> Timing:
        """`work` per second: the fastest run gives the highest rate."""
        return Timing(work / self.median, work / self.max, work / self.min)

    def scale(self, factor: float) -> Timing:
        return Timing(self.median * factor, self.min * factor, self.max * factor)


def sync() -> None:
    """Wait for queued CUDA work, if CUDA is in use, so that wall time covers it."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], repeats: int, warmup: int = 1) -> Timing:
    """Wall seconds of `fn()` over `repeats` runs after `warmup` untimed ones."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), min(times), max(times))


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated while `fn` runs, beyond what was allocated before."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        return torch.cuda.max_memory_allocated() - before
    # On CPU, replay the profiler's allocation and free events in time order.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # no log lines per profiler start and stop
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def fmt(value: float, digits: int | None = None) -> str:
    """A number with thousands separators: 4160.3 -> '4,160'; by default about 3 significant
    digits below 100 (45.67 -> '45.7', 0.314 -> '0.31')."""
    if digits is None:
        digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:,.{digits}f}"


def percent(fraction: float) -> str:
    """A share as a percentage with about two significant digits: 0.39 -> '39%', 0.0035 -> '0.35%'."""
    return f"{fmt(100 * fraction, 0 if fraction >= 0.1 else None)}%"


def fmt_timing(t: Timing) -> str:
    """'median (min–max)' with the median's digits, e.g. '4,160 (4,010–4,220)'."""
    digits = len(fmt(t.median).partition(".")[2])
    return f"{fmt(t.median)} ({fmt(t.min, digits)}–{fmt(t.max, digits)})"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> str:
    """Markdown lines naming torch, the thread count, the CPU and the device."""
    accelerator = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    return (f"- torch {torch.__version__}\n- threads: {torch.get_num_threads()} (torch.get_num_threads())\n"
            f"- CPU: {cpu_model()}\n- device: {device}{accelerator}")


def autocast(device: torch.device, bf16: bool) -> AbstractContextManager:
    """bf16 autocast on `device` when `bf16`, else a no-op."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def precision_name(bf16: bool) -> str:
    return "bf16 autocast" if bf16 else "fp32"


def comparison_config(vocabulary: str = "paper", grid: int = 8, layout: str = "sparse",
                      depth: int = 8) -> PriorConfig:
    """The comparison prior: dim 256, 8 heads of 32, text 32 tokens, one of `VOCABULARIES`."""
    text_ids, codes = VOCABULARIES[vocabulary]
    return PriorConfig(text_vocab_size=text_ids, text_length=32, codebook_size=codes,
                       grid_size=grid, dim=256, depth=depth, heads=8, head_dim=32, layout=layout)


def random_batch(config: PriorConfig, size: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random text ids (size, T + 1) and image codes (size, grid, grid) for `config`."""
    text = torch.randint(0, config.text_vocab_size, (size, config.text_length + 1), device=device)
    codes = torch.randint(0, config.codebook_size, (size, config.grid_size, config.grid_size),
                          device=device)
    return text, codes


def parser(doc: str, repeats: int) -> argparse.ArgumentParser:
    """An argument parser with the options every script takes: device, threads, repeats, quick."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=repeats, help="timed runs per figure")
    p.add_argument("--quick", action="store_true", help="2 timed runs per figure, fewer rows")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Apply --threads and --quick (2 repeats); the device to run on."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats = min(args.repeats, 2)
    try:
        return resolve_device(args.device)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
