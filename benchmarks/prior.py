"""Prior speed: forward+backward time and peak memory per attention layout and grid size, and
training throughput at the comparison config. Prints markdown tables.

    python benchmarks/prior.py            # everything
    python benchmarks/prior.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import threading
import time

import torch

from dalle.config import PriorConfig, TrainConfig
from dalle.prior import Prior
from dalle.train.loop import build_optimizer


def rss() -> int:
    """Resident memory of this process in bytes (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class PeakRSS:
    """Peak resident memory above the starting point while the block runs (sampled every 1 ms)."""

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        self.base = self.peak = rss()
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def batch(config: PriorConfig, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    text = torch.randint(0, config.text_vocab_size, (size, config.text_length + 1))
    codes = torch.randint(0, config.image_vocab_size, (size, config.grid_size, config.grid_size))
    return text, codes


def time_it(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def layouts_table(repeats: int) -> None:
    print("\n### Forward + backward per layout (batch 2, dim 256, 4 layers, 8 heads of 32, text 32)\n")
    print("| grid | image tokens | layout | ms | peak MiB | speed-up vs dense |")
    print("|---|---|---|---|---|---|")
    for grid in (8, 16, 32):
        dense_ms = None
        for layout in ("dense", "sparse", "row", "column", "conv"):
            config = PriorConfig(text_vocab_size=1024, text_length=32, image_vocab_size=512,
                                 grid_size=grid, dim=256, depth=4, heads=8, head_dim=32,
                                 layout=layout)
            torch.manual_seed(0)
            model = Prior(config)
            text, codes = batch(config, 2)

            def step() -> None:
                model.zero_grad(set_to_none=True)
                model(text, codes).loss.backward()

            ms = time_it(step, repeats) * 1e3
            with PeakRSS() as memory:
                step()
            dense_ms = dense_ms or ms
            print(f"| {grid}x{grid} | {grid * grid} | {layout} | {ms:.1f} | {memory.mib:.0f} | "
                  f"{dense_ms / ms:.2f}x |", flush=True)


def training_table(repeats: int) -> None:
    print("\n### Training throughput at the comparison config\n"
          "(dim 256, depth 8, 8 heads of 32, text 32 tokens, 8x8 image grid, batch 16, AdamW, "
          "paper layouts)\n")
    print("| precision | ms / step | tokens/s | images/s |")
    print("|---|---|---|---|")
    config = PriorConfig(text_vocab_size=16_384 + 32 + 1, text_length=32, image_vocab_size=8192,
                         grid_size=8, dim=256, depth=8, heads=8, head_dim=32)
    torch.manual_seed(0)
    model = Prior(config)
    optimizer = build_optimizer(model, TrainConfig(lr=1e-4, weight_decay=4.5e-2, betas=(0.9, 0.96)))
    text, codes = batch(config, 16)
    tokens = 16 * (config.text_length + config.grid_size**2)
    for bf16 in (False, True):
        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(text, codes).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 4.0)
            optimizer.step()

        seconds = time_it(step, repeats)
        print(f"| {'bf16 autocast' if bf16 else 'fp32'} | {seconds * 1e3:.0f} | "
              f"{tokens / seconds:,.0f} | {16 / seconds:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 timed repeat instead of 5")
    args = parser.parse_args()
    repeats = 1 if args.quick else 5
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"max RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    training_table(repeats)
    layouts_table(repeats)


if __name__ == "__main__":
    main()
