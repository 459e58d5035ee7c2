"""Prior speed: forward+backward time and peak memory per attention layout and grid size, and
training throughput at the comparison config. Prints markdown tables.

    python benchmarks/prior.py            # everything
    python benchmarks/prior.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import torch

from common import peak_bytes
from dalle.attention import layer_layouts, sparse_attention
from dalle.config import PriorConfig, TrainConfig
from dalle.prior import Prior
from dalle.train.loop import build_optimizer


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
    print("\n### Forward + backward per layout (batch 2, 8 heads of 32, text 32; the model: dim 256, "
          "4 layers)\n\nAttention alone is `sparse_attention` on random inputs, and for `sparse` the "
          "mean over the paper's 64-layer schedule (48 row, 15 column, 1 conv). The model is "
          "the whole prior, whose projections and MLPs cost the same in every layout.\n")
    print("| grid | layout | attention ms | vs dense | attention peak MiB | model ms | vs dense | model peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    device = torch.device("cpu")
    schedule = Counter(layer_layouts(64))
    for grid in (8, 16, 32):
        q, k, v = (torch.randn(2, 8, 32 + grid * grid, 32, requires_grad=True) for _ in range(3))
        attention_ms, attention_mib, dense = {}, {}, {}
        for layout in ("dense", "row", "column", "conv"):
            def attend(layout: str = layout) -> None:
                sparse_attention(q, k, v, layout, 32, grid).sum().backward()

            attention_ms[layout] = time_it(attend, repeats) * 1e3
            attention_mib[layout] = peak_bytes(attend, device) / 2**20
        attention_ms["sparse"] = sum(attention_ms[n] * c for n, c in schedule.items()) / 64
        attention_mib["sparse"] = max(attention_mib[n] for n in schedule)
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
            mib = peak_bytes(step, device) / 2**20
            dense = dense or {"attention": attention_ms["dense"], "model": ms}
            print(f"| {grid}x{grid} | {layout} | {attention_ms[layout]:.1f} | "
                  f"{dense['attention'] / attention_ms[layout]:.2f}x | {attention_mib[layout]:.0f} | "
                  f"{ms:.1f} | {dense['model'] / ms:.2f}x | {mib:.0f} |", flush=True)


def training_table(repeats: int) -> None:
    print("\n### Training throughput at the comparison config\n"
          "(dim 256, depth 8, 8 heads of 32, text 32 tokens, 8x8 image grid, batch 16, AdamW, "
          "paper layouts)\n")
    print("| vocabularies | precision | ms / step | tokens/s | images/s |")
    print("|---|---|---|---|---|")
    for vocab, (text_ids, codes_k) in {"paper": (16_384 + 32 + 1, 8192), "shapes": (371, 512)}.items():
        config = PriorConfig(text_vocab_size=text_ids, text_length=32, image_vocab_size=codes_k,
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
            print(f"| {vocab} ({text_ids:,} text ids, {codes_k:,} codes) | "
                  f"{'bf16 autocast' if bf16 else 'fp32'} | {seconds * 1e3:.0f} | "
                  f"{tokens / seconds:,.0f} | {16 / seconds:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 timed repeat instead of 5")
    args = parser.parse_args()
    repeats = 1 if args.quick else 5
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    training_table(repeats)
    layouts_table(repeats)


if __name__ == "__main__":
    main()
