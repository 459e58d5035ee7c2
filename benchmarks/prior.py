"""Prior speed: training throughput at the comparison config, and how each attention layout's
forward + backward cost scales with the grid. Prints markdown tables.

    python benchmarks/prior.py [--device auto] [--threads N] [--repeats 7] [--quick]

Training: dim 256, depth 8, 8 heads of 32, text 32 tokens, 8x8 grid, batch 16, AdamW, the paper's
layouts, fp32 and bf16 autocast, for the paper's and the shapes recipe's vocabularies; tokens/s and
model GFLOP/s against the matmul peak measured in the same run (benchmarks/matmul.py).
Presets: training tokens/s and MFU of the `small` and `base` presets at 256 text + 32x32 image tokens.
Scaling: attention alone and a whole 4-layer prior at batch 2 per layout at grids 8, 16 and 32,
the exponent of time against sequence length, and the model at 32x32 per precision and backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from attention import SCHEDULE, attention_cost, schedule_mix
from common import (
    VOCABULARIES,
    Timing,
    autocast,
    comparison_config,
    environment,
    fmt,
    fmt_timing,
    markdown_table,
    measure,
    parser,
    peak_bytes,
    percent,
    precision_name,
    random_batch,
    setup,
)
from dalle.config import PriorConfig, TrainConfig
from dalle.prior import Prior, estimate_mfu
from dalle.train.loop import build_optimizer
from flops import counted_forward_flops, prior_forward_flops
from matmul import matmul_section

TRAIN_BATCH = 16
SCALING_GRIDS = (8, 16, 32)
MODEL_LAYOUTS = ("dense", "sparse", "row", "column", "conv")


def training_step(model: Prior, device: torch.device, bf16: bool, batch: int = TRAIN_BATCH) -> Callable[[], None]:
    """A function running one AdamW step (clipped at norm 4) on a fixed random batch."""
    optimizer = build_optimizer(model, TrainConfig(lr=1e-4, weight_decay=4.5e-2, betas=(0.9, 0.96)))
    text, codes = random_batch(model.config, batch, device)

    def step() -> None:
        with autocast(device, bf16):
            loss = model(text, codes).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 4.0)
        optimizer.step()

    return step


def flops_note(vocabulary: str, model: Prior, device: torch.device) -> str:
    """A footnote: the analytic forward FLOPs by part, and FlopCounterMode's count to check them."""
    config = model.config
    useful = prior_forward_flops(config, TRAIN_BATCH)
    executed = sum(prior_forward_flops(config, TRAIN_BATCH, executed=True).values())
    counted = counted_forward_flops(model, *random_batch(config, TRAIN_BATCH, device))
    parts = ", ".join(f"{part} {flops / 1e9:.2f}" for part, flops in useful.items())
    return (f"- {vocabulary}: {sum(useful.values()) / 1e9:.2f} GFLOP ({parts}); executed "
            f"{executed / 1e9:.2f}; FlopCounterMode {counted / 1e9:.2f} ({counted / executed - 1:+.2%} "
            f"vs executed, {counted / sum(useful.values()) - 1:+.2%} vs useful)")


def training_section(device: torch.device, repeats: int,
                     peaks: dict[str, float] | None) -> tuple[str, dict]:
    """The table and {(vocabulary, "fp32" | "bf16"): {"tokens/s", "GFLOP/s": Timing, "of peak"}},
    "of peak" being the fraction of the matmul peak of that dtype, given `peaks`."""
    rows, notes, results = [], [], {}
    for vocabulary, (text_ids, codes) in VOCABULARIES.items():
        config = comparison_config(vocabulary)
        torch.manual_seed(0)
        model = Prior(config).to(device)
        notes.append(flops_note(vocabulary, model, device))
        tokens = TRAIN_BATCH * (config.text_length + config.image_tokens)
        gflop = model.flops_per_token() * tokens / 1e9
        for bf16 in (False, True):
            seconds = measure(training_step(model, device, bf16), repeats)
            dtype = "bf16" if bf16 else "fp32"
            gflops = seconds.rate(gflop)
            results[vocabulary, dtype] = {"tokens/s": seconds.rate(tokens), "GFLOP/s": gflops}
            peak = "–"
            if peaks:
                mfu = estimate_mfu(model.flops_per_token(), seconds.rate(tokens).median, peaks[dtype] * 1e9)
                results[vocabulary, dtype]["of peak"] = mfu
                peak = f"{percent(mfu)} of {fmt(peaks[dtype])}"
            rows.append([f"{vocabulary} ({text_ids:,} text ids, {codes:,} codes)", precision_name(bf16),
                         fmt_timing(seconds.scale(1e3)), fmt_timing(seconds.rate(tokens)),
                         fmt_timing(gflops), peak])
    text = ("### Prior training at the comparison config\n\ndim 256, depth 8, 8 heads of 32, text 32 "
            f"tokens, 8x8 grid, batch {TRAIN_BATCH} ({tokens:,} tokens), AdamW, paper "
            "layouts. Model GFLOP/s = `Prior.flops_per_token()` (3 x the analytic forward FLOPs, "
            "useful attention pairs only) x tokens per second, against the matmul peak of the same dtype.\n\n"
            + markdown_table(["vocabularies", "precision", "ms / step", "tokens/s", "model GFLOP/s",
                              "of matmul peak"], rows)
            + f"\n\nForward FLOPs at batch {TRAIN_BATCH} (benchmarks/flops.py): analytic, useful "
            "attention pairs, by part; analytic as executed (the whole blocks the attention kernels "
            "are handed); torch's FlopCounterMode on one forward pass.\n\n" + "\n".join(notes))
    return text, results


# Batch per preset at the 32x32 grid: what fits and keeps the machine busy (1,280 tokens a sample).
PRESET_BATCHES = {"cpu": {"small": 2, "base": 1}, "cuda": {"small": 32, "base": 8}}


def presets_section(device: torch.device, repeats: int, peaks: dict[str, float] | None,
                    quick: bool = False) -> tuple[str, dict]:
    """Training throughput of the `small` and `base` presets at the paper's geometry (256 text +
    32x32 image tokens, the paper's vocabularies), bf16 autocast, AdamW; {preset: {"tokens/s",
    "of peak"}}. --quick leaves out `base` on a CPU (a step there takes seconds)."""
    batches = PRESET_BATCHES["cuda" if device.type == "cuda" else "cpu"]
    rows, results = [], {}
    for name, batch in batches.items():
        if quick and name == "base" and device.type != "cuda":
            continue
        torch.manual_seed(0)
        model = Prior(PriorConfig.preset(name)).to(device)
        tokens = batch * model.sequence_length
        seconds = measure(training_step(model, device, bf16=True, batch=batch), repeats)
        results[name] = {"tokens/s": seconds.rate(tokens)}
        share = "–"
        if peaks:
            mfu = estimate_mfu(model.flops_per_token(), seconds.rate(tokens).median, peaks["bf16"] * 1e9)
            results[name]["of peak"] = mfu
            share = f"{percent(mfu)} of {fmt(peaks['bf16'])}"
        rows.append([name, f"{model.num_parameters() / 1e6:.0f}M", str(batch), fmt_timing(seconds.scale(1e3)),
                     fmt_timing(seconds.rate(tokens)), fmt(model.flops_per_token() / 1e9, 3), share])
        del model
    text = ("### Training the presets at the paper's geometry\n\n`PriorConfig.preset(name)`: 256 text + "
            "32x32 image tokens, 16,641 text ids and 8,192 codes, the paper's layouts, bf16 autocast, "
            "AdamW (clipped at norm 4). MFU: `Prior.flops_per_token()` (useful attention pairs, 3x "
            "the forward) x tokens/s against the bf16 matmul peak of the matmul section.\n\n"
            + markdown_table(["preset", "parameters", "batch", "ms / step", "tokens/s",
                              "GFLOP / token", "MFU"], rows))
    return text, results


def model_cost(layout: str, grid: int, device: torch.device, repeats: int, *, bf16: bool = False,
               backend: str = "blocks") -> tuple[Timing, int]:
    """Seconds and peak bytes of forward + backward of a 4-layer comparison prior at batch 2,
    its attention computed by `backend` (`Prior.set_attention`)."""
    config = comparison_config("shapes", grid=grid, layout=layout, depth=4)
    torch.manual_seed(0)
    model = Prior(config).to(device)
    model.set_attention(backend)
    text, codes = random_batch(config, 2, device)

    def step() -> None:
        with autocast(device, bf16):
            loss = model(text, codes).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    return measure(step, repeats), peak_bytes(step, device)


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """The least-squares slope of log(y) against log(x)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def scaling_costs(device: torch.device, repeats: int) -> dict:
    """{(kind, grid, layout): (Timing, peak bytes)} for kind "attention" and "model"."""
    costs = {}
    for grid in SCALING_GRIDS:
        for layout in ("dense", *SCHEDULE):
            costs["attention", grid, layout] = attention_cost(layout, grid, device, repeats)
        costs["attention", grid, "sparse"] = (
            schedule_mix({name: costs["attention", grid, name][0] for name in SCHEDULE}),
            max(costs["attention", grid, name][1] for name in SCHEDULE))
        for layout in MODEL_LAYOUTS:
            costs["model", grid, layout] = model_cost(layout, grid, device, repeats)
    return costs


def scaling_section(device: torch.device, repeats: int) -> tuple[str, dict]:
    """The per-layout table, the exponents, and {kind: {"speed-up", "memory"}} of sparse at 32x32."""
    costs = scaling_costs(device, repeats)
    rows = []
    for grid in SCALING_GRIDS:
        for layout in MODEL_LAYOUTS:
            row = [f"{grid}x{grid}", layout]
            for kind in ("attention", "model"):
                (timing, peak), (dense, dense_peak) = costs[kind, grid, layout], costs[kind, grid, "dense"]
                row += [fmt_timing(timing.scale(1e3)), f"{dense.median / timing.median:.2f}x",
                        f"{peak / 2**20:.1f}", f"{peak / dense_peak:.2f}x"]
            rows.append(row)
    lengths = [32 + grid * grid for grid in SCALING_GRIDS]

    def slope(kind: str, layout: str) -> str:
        return f"{loglog_slope(lengths, [costs[kind, g, layout][0].median for g in SCALING_GRIDS]):.2f}"

    slopes = [[layout, slope("attention", layout), slope("model", layout)] for layout in MODEL_LAYOUTS]
    big = SCALING_GRIDS[-1]
    results = {kind: {"speed-up": costs[kind, big, "dense"][0].median / costs[kind, big, "sparse"][0].median,
                      "memory": costs[kind, big, "sparse"][1] / costs[kind, big, "dense"][1]}
               for kind in ("attention", "model")}
    big_rows, results["model 32x32"] = big_model_rows(costs, device, repeats)
    headers = ["grid", "layout"] + [f"{kind} {column}" for kind in ("attention", "model")
                                    for column in ("ms", "speed-up", "peak MiB", "memory vs dense")]
    text = ("### Attention layouts: forward + backward vs dense\n\nAttention alone: `sparse_attention` "
            "on random (2, 8, S, 32) inputs; `sparse` is the paper's 64-layer schedule (48 row, 15 "
            "column, 1 conv): mean time, peak of its hungriest layout. Model: a 4-layer comparison "
            "prior (shapes vocabularies) at batch 2, every layer of the layout (`sparse`: row, column, "
            "row, conv). Peak MiB: allocated beyond the inputs. fp32.\n\n" + markdown_table(headers, rows)
            + f"\n\nExponent of time against sequence length S = 32 + G^2 (least squares over "
            f"S = {', '.join(map(str, lengths))}; dense attention tends to 2, sparse to 1.5):\n\n"
            + markdown_table(["layout", "attention exponent", "model exponent"], slopes)
            + f"\n\nThe same 4-layer model at {big}x{big} per precision and attention backend "
            "(`Prior.set_attention`): the paper's layouts against dense flash attention (SDPA's "
            "causal kernel) in the same precision. `flex` runs only where FlexAttention has a "
            "backward (CUDA).\n\n"
            + markdown_table(["precision", "attention", "ms", "speed-up", "peak MiB", "memory vs dense"],
                             big_rows))
    return text, results


def big_model_rows(costs: dict, device: torch.device, repeats: int) -> tuple[list[list[str]], dict]:
    """Rows for the 4-layer model at the largest grid in fp32 and bf16, dense against the paper's
    layouts per backend, and {(precision, backend): {"speed-up", "memory"}}; the fp32 blocks
    figures are those of `scaling_costs`."""
    grid = SCALING_GRIDS[-1]
    backends = ("blocks", "flex") if device.type == "cuda" else ("blocks",)

    def model(layout: str, bf16: bool, backend: str = "blocks") -> tuple[Timing, int]:
        if not bf16 and backend == "blocks":
            return costs["model", grid, layout]
        return model_cost(layout, grid, device, repeats, bf16=bf16, backend=backend)

    rows, results = [], {}
    for bf16 in (False, True):
        precision = "bf16" if bf16 else "fp32"
        dense, dense_peak = model("dense", bf16)
        rows.append([precision_name(bf16), "dense (flash)", fmt_timing(dense.scale(1e3)), "1.00x",
                     f"{dense_peak / 2**20:.1f}", "1.00x"])
        for backend in backends:
            timing, peak = model("sparse", bf16, backend)
            results[precision, backend] = {"speed-up": dense.median / timing.median, "memory": peak / dense_peak}
            rows.append([precision_name(bf16), f"paper layouts ({backend})", fmt_timing(timing.scale(1e3)),
                         f"{dense.median / timing.median:.2f}x", f"{peak / 2**20:.1f}",
                         f"{peak / dense_peak:.2f}x"])
    return rows, results


def main() -> None:
    args = parser(__doc__, repeats=7).parse_args()
    device = setup(args)
    print(environment(device) + "\n", flush=True)
    matmul, peaks = matmul_section(device, args.repeats)
    print(matmul + "\n", flush=True)
    print(training_section(device, args.repeats, peaks)[0] + "\n", flush=True)
    print(presets_section(device, args.repeats, peaks, args.quick)[0] + "\n", flush=True)
    print(scaling_section(device, args.repeats)[0])


if __name__ == "__main__":
    main()
