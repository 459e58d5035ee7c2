"""Sparse attention speed and memory: forward + backward per layout, as a table.

    python benchmarks/attention.py [--device auto] [--threads N] [--batch 4] [--heads 8]
                                   [--head-dim 32] [--text 32] [--grids 8 16 32] [--repeats 10] [--bf16]

Random (B, H, T + G*G, D) queries, keys and values; each row is `sparse_attention` forward +
backward: median wall time (and, on CPU, process CPU time: the steadier figure when other jobs
share the cores) over --repeats runs with the layouts interleaved, its speed-up over ``dense`` in
wall time, and the peak memory allocated beyond the inputs. ``dense`` is causal SDPA over the whole
stream, the baseline; ``row (masked)`` is the row layout through its dense mask
(`reference_attention`), what masking a dense computation costs. ``schedule`` weights the
layouts as the paper's 64-layer prior uses them (`layer_layouts(64)`: 48 row, 15 column, 1 conv).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections import Counter

import torch

from common import peak_bytes
from dalle.attention import LAYOUTS, attention_mask, layer_layouts, reference_attention, sparse_attention
from dalle.utils import resolve_device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def with_schedule(times: dict[str, list[float]]) -> dict[str, float]:
    """Median time per layout, plus the mean over the paper's 64-layer schedule."""
    median = {name: statistics.median(t) for name, t in times.items()}
    median["schedule"] = sum(median[name] * n for name, n in Counter(layer_layouts(64)).items()) / 64
    return median


def bench_grid(grid: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    shape = (args.batch, args.heads, args.text + grid * grid, args.head_dim)
    q, k, v = (torch.randn(shape, device=device, requires_grad=True) for _ in range(3))
    upstream = torch.randn(shape, device=device)

    def step(name: str) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            if name == "row (masked)":
                out = reference_attention(q, k, v, "row", args.text, grid)
            else:
                out = sparse_attention(q, k, v, name, args.text, grid)
        out.backward(upstream)
        q.grad = k.grad = v.grad = None

    names = [*LAYOUTS, "row (masked)"]
    wall_times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        step(name)  # warm-up: caches each layout's plan
    for _ in range(args.repeats):
        for name in names:
            sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            step(name)
            sync(device)
            wall_times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - start_cpu)
    wall, cpu = with_schedule(wall_times), with_schedule(cpu_times)

    rows = []
    for name in [*names, "schedule"]:
        layout = name.split()[0]
        row = {"grid": f"{grid}x{grid}", "layout": name, "keys/query": "", "wall ms": f"{wall[name] * 1e3:.1f}",
               "cpu ms": f"{cpu[name] * 1e3:.1f}" if device.type == "cpu" else "-",
               "vs dense": f"{wall['dense'] / wall[name]:.1f}x", "peak MB": ""}
        if layout in LAYOUTS:
            mask = attention_mask(layout, args.text, grid)
            row["keys/query"] = f"{mask.sum().item() / mask.shape[0]:.0f}"
            row["peak MB"] = f"{peak_bytes(lambda: step(name), device) / 2**20:.0f}"
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--text", type=int, default=32)
    parser.add_argument("--grids", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--bf16", action="store_true", help="run under bf16 autocast")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [row for grid in args.grids for row in bench_grid(grid, args, device)]
    print(f"device: {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}, {'bf16 autocast' if args.bf16 else 'fp32'}; batch {args.batch}, "
          f"{args.heads} heads of {args.head_dim}, text {args.text}; forward + backward")
    keys = list(rows[0])
    widths = [max(len(k), *(len(str(r[k])) for r in rows)) for k in keys]
    print(" | ".join(k.ljust(w) for k, w in zip(keys, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths)))


if __name__ == "__main__":
    main()
