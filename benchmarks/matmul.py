"""The machine's own limit: matmul GFLOP/s in fp32 and bf16, per shape, and the peak per dtype.

    python benchmarks/matmul.py [--device auto] [--threads N] [--repeats 7] [--quick]

Square sizes (up to 8192 on CUDA), then the shapes the comparison prior multiplies at batch 16
(96 tokens a stream). The peak of a dtype is the best median over the shapes; the other tables
report model GFLOP/s as a fraction of it.
"""

from __future__ import annotations

import torch

from common import (
    Timing,
    comparison_config,
    environment,
    fmt,
    fmt_timing,
    markdown_table,
    measure,
    parser,
    setup,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SQUARE_SIZES = (256, 512, 1024, 2048)
GPU_SIZES = (4096, 8192)  # a GPU reaches its peak only on larger products


def model_shapes(batch: int = 16) -> dict[str, tuple[int, int, int]]:
    """(m, k, n) of the comparison prior's largest matmuls in a forward pass at `batch`."""
    c = comparison_config()
    tokens = batch * (c.text_length + c.image_tokens)
    inner, hidden = c.heads * c.head_dim, c.mlp_ratio * c.dim
    return {"QKV projection": (tokens, c.dim, 3 * inner), "MLP in": (tokens, c.dim, hidden),
            "MLP out": (tokens, hidden, c.dim),
            "image head": (batch * c.image_tokens, c.dim, c.codebook_size)}


def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device,
                  repeats: int) -> Timing:
    """GFLOP/s of an (m, k) @ (k, n) product into a preallocated output."""
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    return measure(lambda: torch.mm(a, b, out=out), repeats).rate(2 * m * k * n / 1e9)


def matmul_section(device: torch.device, repeats: int) -> tuple[str, dict[str, float]]:
    """The markdown table and the peak GFLOP/s (best median) per dtype name."""
    sizes = SQUARE_SIZES + (GPU_SIZES if device.type == "cuda" else ())
    shapes = {f"{s}x{s}x{s}": (s, s, s) for s in sizes}
    shapes.update({f"{name} {m}x{k}x{n}": (m, k, n) for name, (m, k, n) in model_shapes().items()})
    rates = {(shape, dtype): matmul_gflops(*mkn, DTYPES[dtype], device, repeats)
             for shape, mkn in shapes.items() for dtype in DTYPES}
    peaks = {dtype: max(rates[shape, dtype].median for shape in shapes) for dtype in DTYPES}
    rows = [[shape, *(fmt_timing(rates[shape, dtype]) for dtype in DTYPES)] for shape in shapes]
    rows.append(["**peak** (best median)", *(f"**{fmt(peaks[dtype])}**" for dtype in DTYPES)])
    text = ("### Matmul GFLOP/s (the machine's limit)\n\n`torch.mm` into a preallocated output, "
            "m x k x n; model shapes are the comparison prior's at batch 16.\n\n"
            + markdown_table(["shape (m x k x n)", *(f"{d} GFLOP/s" for d in DTYPES)], rows))
    return text, peaks


def main() -> None:
    args = parser(__doc__, repeats=7).parse_args()
    device = setup(args)
    print(environment(device) + "\n")
    print(matmul_section(device, args.repeats)[0])


if __name__ == "__main__":
    main()
