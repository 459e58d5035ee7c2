"""Sampling speed: image tokens/s of `sample_codes` with the KV cache, per batch size and grid.

    python benchmarks/sampling.py [--device auto] [--threads N] [--repeats 5] [--quick] [--no-cache]
                                  [--paper-12b]

The prior is the comparison config (dim 256, depth 8, 8 heads of 32, text 32 tokens, paper
layouts) with the paper's vocabularies (16,384 BPE + pads, 8,192 codes), random weights, in fp32
and with bf16 weights. A run samples every position of the grid after the text prefill; ms per
position is its time over the grid's positions (one step of the whole batch). --quick: 8x8 only.
--no-cache adds full recompute per step (batch 8, 8x8); --paper-12b the 12B preset's time per
token on CUDA. Then the time to draw and rerank 512 candidates for one caption (the paper's N).
"""

from __future__ import annotations

import torch

from common import Timing, comparison_config, environment, fmt_timing, markdown_table, measure, parser, setup
from dalle.config import PriorConfig
from dalle.prior import Prior
from dalle.sampling import cached_step, sample_codes

BATCHES = (1, 8, 64)
WEIGHTS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sampling_prior(grid: int, device: torch.device, dtype: torch.dtype) -> Prior:
    torch.manual_seed(0)
    return Prior(comparison_config("paper", grid=grid)).to(device, dtype).eval()


def sampling_time(model: Prior, batch: int, repeats: int, **kwargs) -> Timing:
    """Seconds to sample a batch of whole code grids (prefill included)."""
    c, device = model.config, model.device
    text = torch.randint(0, c.text_vocab_size, (batch, c.text_length + 1), device=device)
    generator = torch.Generator(device).manual_seed(0)
    return measure(lambda: sample_codes(model, text, generator=generator, **kwargs), repeats)


@torch.no_grad()
def cache_bytes_per_sample(model: Prior) -> float:
    """Bytes of KV cache one sample holds while it is drawn (every layer's keys and values)."""
    cache = model.new_cache()
    c = model.config
    model.prefill(torch.zeros(1, c.text_length + 1, dtype=torch.long, device=model.device), cache)
    return sum(layer.k.nbytes + layer.v.nbytes for layer in cache)


def sampling_row(label: str, model: Prior, batch: int, repeats: int, **kwargs) -> tuple[list[str], Timing]:
    """A table row and the image tokens/s of sampling `batch` grids."""
    positions = model.config.image_tokens
    seconds = sampling_time(model, batch, repeats, **kwargs)
    grid = model.config.grid_size
    tokens = seconds.rate(batch * positions)
    return [f"{grid}x{grid}", str(batch), label, fmt_timing(tokens),
            fmt_timing(seconds.scale(1e3 / positions)), fmt_timing(seconds.rate(batch)),
            f"{cache_bytes_per_sample(model) / 2**10:,.0f}"], tokens


def sampling_section(device: torch.device, repeats: int, grids: tuple[int, ...] = (8, 16),
                     no_cache: bool = False) -> tuple[str, dict]:
    """The table and {(grid, batch, "fp32" | "bf16"): image tokens/s Timing}; on CUDA the steps
    replay a CUDA graph, and rows without it show what the graph gains."""
    rows, results = [], {}
    for grid in grids:
        for weights, dtype in WEIGHTS.items():
            model = sampling_prior(grid, device, dtype)
            for batch in BATCHES:
                row, results[grid, batch, weights] = sampling_row(f"{weights} weights", model, batch, repeats)
                rows.append(row)
                if device.type == "cuda":
                    rows.append(sampling_row(f"{weights} weights, no CUDA graph", model, batch, repeats,
                                             cuda_graph=False)[0])
                elif batch > 1:
                    row, results[grid, batch, weights, "compiled"] = sampling_row(
                        f"{weights} weights, compiled step", model, batch, repeats, compile=True)
                    rows.append(row)
    if no_cache:
        rows.append(sampling_row("fp32, no cache", sampling_prior(8, device, torch.float32), 8, repeats,
                                 use_cache=False)[0])
    text = ("### Sampling with the KV cache\n\nThe comparison prior with the paper's vocabularies; "
            "`sample_codes` of whole grids, prefill included. On a CPU the compiled rows use "
            "`compile=True` (`dalle.sampling.compiled_step`, its compilation in the warm-up run); "
            "KV cache: what one sample's cache holds across the layers.\n\n"
            + markdown_table(["grid", "batch", "weights", "image tokens/s", "ms / position", "images/s",
                              "KV cache KiB / sample"], rows))
    return text, results


def candidates_section(device: torch.device, repeats: int, candidates: int = 512) -> tuple[str, dict]:
    """Seconds to draw `candidates` images for one caption with the bundled shapes pipeline and
    keep the best by CLIP (the paper's N = 512, §2.6), eager and (on a CPU) compiled;
    {"eager" | "compiled": Timing}."""
    from dalle.pipeline import DallePipeline

    torch._dynamo.reset()  # the sampling section's compiled steps count against torch's recompile limit
    pipe = DallePipeline.from_pretrained("shapes", device=device)
    prompt = "a small red circle above a large blue square"
    modes = {"eager": {}} if device.type == "cuda" else {"eager": {}, "compiled": {"compile": True}}
    results = {mode: measure(lambda options=options: pipe(prompt, images=1, candidates=candidates,
                                                          batch_size=64, **options), repeats)
               for mode, options in modes.items()}
    rows = [[mode, fmt_timing(t), fmt_timing(t.rate(candidates))] for mode, t in results.items()]
    text = (f"### Drawing and reranking {candidates} candidates for one caption\n\nThe bundled `shapes` "
            f"pipeline (64 px, 8x8 grid), batches of 64, CLIP keeps the best one: sampling, dVAE "
            f"decoding and scoring.\n\n"
            + markdown_table(["sampling step", "seconds", "candidates/s"], rows))
    return text, results


def paper_prior(device: torch.device) -> Prior:
    """The 12B preset in bf16 on `device`, random weights (speed does not depend on them)."""
    with torch.device("meta"):
        model = Prior(PriorConfig.paper())
    model = model.to(torch.bfloat16).to_empty(device=device).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.02)
    return model


@torch.no_grad()
def step_time(model: Prior, batch: int, repeats: int, cuda_graph: bool) -> Timing:
    """Seconds of one cached sampling step (one image position) after the text prefill."""
    c, device = model.config, model.device
    cache = model.new_cache()
    model.prefill(torch.randint(0, c.text_vocab_size, (batch, c.text_length + 1), device=device), cache)
    code = torch.zeros(batch, dtype=torch.long, device=device)
    step = cached_step(model, cache, batch, cuda_graph)
    return measure(lambda: step(code, 1), repeats)


def paper_12b_section(device: torch.device, repeats: int) -> str:
    """Per-token sampling time of `PriorConfig.paper()` on one GPU, or why it was skipped."""
    title = "### The 12B prior: sampling time per token\n\n"
    if device.type != "cuda":
        return title + "Skipped: runs on CUDA only (`--device cuda`); its bf16 weights take about 24 GB."
    try:
        model = paper_prior(device)
        timings = {(batch, graph): step_time(model, batch, repeats, graph)
                   for batch in (1, 8) for graph in (True, False)}
    except torch.cuda.OutOfMemoryError:
        return title + f"Skipped: does not fit on {torch.cuda.get_device_name(device)}."
    n = model.config.image_tokens
    rows = [[str(batch), "yes" if graph else "no", fmt_timing(t.scale(1e3)), fmt_timing(t.rate(batch)),
             f"{t.median * n:.1f}"] for (batch, graph), t in timings.items()]
    return (title + f"`PriorConfig.paper()` ({model.num_parameters() / 1e9:.1f}B parameters, bf16 "
            f"weights, 32x32 grid): one cached step of the whole batch.\n\n"
            + markdown_table(["batch", "CUDA graph", "ms / token position", "image tokens/s",
                              f"s / {n} positions"], rows))


def main() -> None:
    p = parser(__doc__, repeats=5)
    p.add_argument("--no-cache", action="store_true", help="also time sampling without the cache")
    p.add_argument("--paper-12b", action="store_true", help="also time the 12B preset (CUDA only)")
    args = p.parse_args()
    device = setup(args)
    print(environment(device) + "\n", flush=True)
    grids = (8,) if args.quick else (8, 16)
    print(sampling_section(device, args.repeats, grids, no_cache=args.no_cache)[0] + "\n", flush=True)
    print(candidates_section(device, args.repeats)[0], flush=True)
    if args.paper_12b:
        print("\n" + paper_12b_section(device, args.repeats))


if __name__ == "__main__":
    main()
