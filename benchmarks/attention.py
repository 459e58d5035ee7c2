"""Sparse attention speed and memory: forward + backward per layout, as a table.

    python benchmarks/attention.py [--device auto] [--threads N] [--repeats 7] [--quick]
                                   [--batch 4] [--heads 8] [--head-dim 32] [--text 32]
                                   [--grids 8 16 32] [--bf16]

Random (B, H, T + G*G, D) queries, keys and values; each row is `sparse_attention` forward +
backward: wall ms (median, min–max), the speed-up over ``dense`` and the peak memory allocated
beyond the inputs. ``dense`` is causal SDPA over the whole stream, the baseline; ``row (masked)``
is the row layout through its dense mask (`reference_attention`), what masking a dense computation
costs. ``schedule`` weights the layouts as the paper's 64-layer prior uses them
(`layer_layouts(64)`: 48 row, 15 column, 1 conv), with the peak memory of its hungriest layout.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from common import (
    Timing,
    autocast,
    environment,
    fmt_timing,
    markdown_table,
    measure,
    parser,
    peak_bytes,
    precision_name,
    setup,
)
from dalle.attention import LAYOUTS, attention_mask, layer_layouts, reference_attention, sparse_attention

SCHEDULE = Counter(layer_layouts(64))


def schedule_mix(timings: dict[str, Timing]) -> Timing:
    """The mean time of a layer over the paper's 64-layer schedule, from per-layout timings."""
    return Timing(*(sum(getattr(timings[name], field) * n for name, n in SCHEDULE.items()) / 64
                    for field in Timing._fields))


def attention_cost(layout: str, grid: int, device: torch.device, repeats: int, *, batch: int = 2,
                   heads: int = 8, head_dim: int = 32, text: int = 32,
                   bf16: bool = False) -> tuple[Timing, int]:
    """Seconds and peak bytes of one forward + backward of `layout` (or ``"row (masked)"``)."""
    torch.manual_seed(0)
    shape = (batch, heads, text + grid * grid, head_dim)
    q, k, v = (torch.randn(shape, device=device, requires_grad=True) for _ in range(3))
    upstream = torch.randn(shape, device=device)
    attend = reference_attention if layout == "row (masked)" else sparse_attention

    def step() -> None:
        with autocast(device, bf16):
            out = attend(q, k, v, layout.split()[0], text, grid)
        out.backward(upstream)
        q.grad = k.grad = v.grad = None

    return measure(step, repeats), peak_bytes(step, device)


def grid_rows(grid: int, args: argparse.Namespace, device: torch.device) -> list[list[str]]:
    """Table rows of every layout, `row (masked)` and the schedule at one grid size."""
    options = dict(batch=args.batch, heads=args.heads, head_dim=args.head_dim, text=args.text,
                   bf16=args.bf16)
    costs = {name: attention_cost(name, grid, device, args.repeats, **options)
             for name in (*LAYOUTS, "row (masked)")}
    costs["schedule"] = (schedule_mix({name: costs[name][0] for name in SCHEDULE}),
                         max(costs[name][1] for name in SCHEDULE))
    dense = costs["dense"][0].median
    rows = []
    for name, (timing, peak) in costs.items():
        layout = name.split()[0]
        keys = attention_mask(layout, args.text, grid).sum(1).float().mean() if layout in LAYOUTS else None
        rows.append([f"{grid}x{grid}", name, "" if keys is None else f"{keys:.0f}",
                     fmt_timing(timing.scale(1e3)), f"{dense / timing.median:.2f}x",
                     f"{peak / 2**20:.1f}"])
    return rows


def main() -> None:
    p = parser(__doc__, repeats=7)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--text", type=int, default=32)
    p.add_argument("--grids", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--bf16", action="store_true", help="run under bf16 autocast")
    args = p.parse_args()
    device = setup(args)
    print(environment(device))
    print(f"\n### Attention forward + backward ({precision_name(args.bf16)}; batch "
          f"{args.batch}, {args.heads} heads of {args.head_dim}, text {args.text})\n")
    rows = [row for grid in args.grids for row in grid_rows(grid, args, device)]
    print(markdown_table(["grid", "layout", "keys/query", "ms", "vs dense", "peak MiB"], rows))


if __name__ == "__main__":
    main()
