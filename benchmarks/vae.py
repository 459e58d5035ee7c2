"""dVAE speed: encode and decode images/s and training images/s, as a table.

    python benchmarks/vae.py [--device auto] [--threads N] [--repeats 7] [--quick] [--batch 64]

Rows: the shapes recipe (`dalle train-vae`'s defaults: 64 px, f = 8, K = 512, hidden 32, 1 block
per group, decoder input 64) and the same at f = 4 (docs/history.md "Stage 1 on shapes": 98.7-99.7% parse
in 19 min) at `--batch` and at batch 1, and, without --quick, the paper's dVAE
(256 px, f = 8, K = 8192, hidden 256, 2 blocks per group) at batch 1, encode and decode only.
fp32, channels_last, random weights (speed does not depend on them).
"""

from __future__ import annotations

import torch

from common import Timing, environment, fmt_timing, markdown_table, measure, parser, setup
from dalle.config import VAEConfig
from dalle.vae import DiscreteVAE

SHAPES = VAEConfig(image_size=64, downsample=8, codebook_size=512, hidden=32, blocks_per_group=1,
                    decoder_init=64)
SHAPES_F4 = VAEConfig(image_size=64, downsample=4, codebook_size=512, hidden=32, blocks_per_group=1,
                       decoder_init=64)


def vae_rates(config: VAEConfig, batch: int, device: torch.device, repeats: int,
               train: bool) -> dict[str, Timing]:
    """Images/s of encode, decode and (if `train`) an AdamW training step."""
    torch.manual_seed(0)
    model = DiscreteVAE(config).to(device, memory_format=torch.channels_last)
    images = torch.rand(batch, 3, config.image_size, config.image_size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    codes = model.encode(images)
    rates = {"encode": measure(lambda: model.encode(images), repeats).rate(batch),
             "decode": measure(lambda: model.decode(codes), repeats).rate(batch)}
    if train:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def train_step() -> None:
            loss = model(images, step=1000).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        rates["train"] = measure(train_step, repeats).rate(batch)
    return rates


def vae_section(device: torch.device, repeats: int, batch: int = 64, paper: bool = True) -> tuple[str, dict]:
    """The table and {(config name, batch): {"encode" | "decode" | "train": images/s Timing}}."""
    runs = [(f"shapes 64 px f{c.downsample} K{c.codebook_size}", c, size, True)
            for c in (SHAPES, SHAPES_F4) for size in (batch, 1)]
    if paper:
        runs.append(("paper 256 px f8 K8192", VAEConfig.paper(), 1, False))
    rows, results = [], {}
    for name, config, size, train in runs:
        rates = results[name, size] = vae_rates(config, size, device, repeats, train)
        rows.append([name, str(size), *(fmt_timing(rates[part]) if part in rates else "–"
                                        for part in ("encode", "decode", "train"))])
    text = ("### dVAE\n\nfp32, channels_last; train is one AdamW step of the training loss.\n\n"
            + markdown_table(["config", "batch", "encode images/s", "decode images/s", "train images/s"],
                             rows))
    return text, results


def main() -> None:
    p = parser(__doc__, repeats=7)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    device = setup(args)
    print(environment(device) + "\n", flush=True)
    print(vae_section(device, args.repeats, args.batch, paper=not args.quick)[0])


if __name__ == "__main__":
    main()
