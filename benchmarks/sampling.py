"""Sampling speed: image tokens/s of `sample_codes` with the KV cache, per batch size and grid.

The prior is the comparison config of benchmarks/prior.py (dim 256, depth 8, 8 heads of 32,
text 32 tokens, paper layouts) with the paper's vocabularies (16,384 BPE + pads, 8,192 codes).

    python benchmarks/sampling.py            # the table
    python benchmarks/sampling.py --no-cache # also time full recompute per step, batch 8, 8x8
"""

from __future__ import annotations

import argparse
import time

import torch

from dalle.config import PriorConfig
from dalle.prior import Prior
from dalle.sampling import sample_codes


def prior(grid: int) -> Prior:
    torch.manual_seed(0)
    config = PriorConfig(text_vocab_size=16_384 + 32 + 1, text_length=32, image_vocab_size=8192,
                         grid_size=grid, dim=256, depth=8, heads=8, head_dim=32)
    return Prior(config).eval()


def tokens_per_second(model: Prior, batch: int, repeats: int, **kwargs) -> float:
    c = model.config
    text = torch.randint(0, c.text_vocab_size, (batch, c.text_length + 1))
    generator = torch.Generator().manual_seed(0)
    sample_codes(model, text, generator=generator, **kwargs)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        sample_codes(model, text, generator=generator, **kwargs)
        best = min(best, time.perf_counter() - start)
    return batch * c.grid_size**2 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cache", action="store_true", help="also time sampling without the cache")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n", flush=True)
    print("| grid | batch | precision | image tokens/s | images/s |")
    print("|---|---|---|---|---|")
    for grid in (8, 16):
        for dtype in (torch.float32, torch.bfloat16):
            model = prior(grid).to(dtype)
            for batch in (1, 8, 64):
                rate = tokens_per_second(model, batch, args.repeats)
                name = "fp32" if dtype == torch.float32 else "bf16 weights"
                print(f"| {grid}x{grid} | {batch} | {name} | {rate:,.0f} | {rate / grid**2:.1f} |",
                      flush=True)
    if args.no_cache:
        rate = tokens_per_second(prior(8), 8, 1, use_cache=False)
        print(f"| 8x8 | 8 | fp32, no cache | {rate:,.0f} | {rate / 64:.1f} |")


if __name__ == "__main__":
    main()
