"""dVAE speed: encode and decode images/s and train-step time, as a table.

    python benchmarks/dvae.py [--device auto] [--batch 64] [--repeats 5]

Rows: the shapes recipe (64 px, f = 8, K = 512, hidden 32) at `--batch` and at batch 1, and the
paper's dVAE (256 px, f = 8, K = 8192, hidden 256, 2 blocks per group) at batch 1. fp32,
channels_last, random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from dalle.config import DVAEConfig
from dalle.dvae import DiscreteVAE
from dalle.utils import resolve_device

SHAPES = DVAEConfig(image_size=64, downsample=8, vocab_size=512, hidden=32, blocks_per_group=1,
                    decoder_init=64)


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of `fn()` over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def bench(name: str, config: DVAEConfig, batch: int, repeats: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = DiscreteVAE(config).to(device, memory_format=torch.channels_last)
    images = torch.rand(batch, 3, config.image_size, config.image_size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    codes = model.encode(images)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step() -> None:
        out = model(images, step=1000)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    encode = timed(lambda: model.encode(images), repeats, device)
    decode = timed(lambda: model.decode(codes), repeats, device)
    step = timed(train_step, repeats, device)
    return {"config": name, "batch": batch, "params": f"{model.num_parameters() / 1e6:.2f}M",
            "encode img/s": f"{batch / encode:.1f}", "decode img/s": f"{batch / decode:.1f}",
            "train step ms": f"{step * 1e3:.0f}", "train img/s": f"{batch / step:.1f}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = resolve_device(args.device)
    rows = [bench("shapes 64px f8 K512", SHAPES, args.batch, args.repeats, device),
            bench("shapes 64px f8 K512", SHAPES, 1, args.repeats, device),
            bench("paper 256px f8 K8192", DVAEConfig.paper(), 1, max(args.repeats // 2, 1), device)]
    print(f"device: {device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), torch {torch.__version__}, fp32")
    keys = list(rows[0])
    widths = [max(len(k), *(len(str(r[k])) for r in rows)) for k in keys]
    print(" | ".join(k.ljust(w) for k, w in zip(keys, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths)))


if __name__ == "__main__":
    main()
