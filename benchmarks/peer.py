"""Side by side with dalle-pytorch 1.6.6 (lucidrains/DALLE-pytorch), a widely used DALL-E port:
training and sampling speed at one config, ours / theirs. Prints a markdown table.

    python benchmarks/peer.py [--device auto] [--threads N] [--rounds 3] [--repeats 5] [--quick]

The peer is no dependency of dalle: `.venv/bin/pip install --no-deps -r benchmarks/requirements-peer.txt`
(without it the section is one line saying so). The config: dim 256, depth 8, 8 heads of 32, text
32 tokens, 1,024 text ids and 1,024 codes, an 8x8 grid (for the peer: 64 px images and a 3-layer
DiscreteVAE), random weights. Training: forward + backward + the same AdamW step (`build_optimizer`,
norm clipped at 4) at batch 16. Sampling: every image token of 8 grids. --quick: 2 timed runs per
figure, 2 rounds, no bf16 sampling and no dense-peer row.

Every figure comes from a fresh process (`--worker ours|peer --what NAME` prints one JSON line), ours
and the peer alternating for --rounds rounds, the order reversed every other round, so that drift
and other jobs hit both sides alike.

How the peer is run:
- attention: `attn_types` follows our paper schedule layer by layer (`layer_layouts(8)`: row ->
  'axial_row', column -> 'axial_col', conv -> 'conv_like'), its own versions of the paper's layouts
  (paper §2.2); its row is the query's grid row, ours the previous G + 1 tokens, and its conv kernel
  is 5, ours 11. Everything else is its default: rotary embeddings, token shift, a GEGLU MLP and one
  head over text and image logits.
- training: `DALLE(text, codes, return_loss=True)`: its forward takes (B, 64) code ids where it
  would take images, so its dVAE does not run.
- sampling: `generate_images` with its defaults, filter_thres 0.5 (the top 1,040 of its 2,080
  logits: every code, as the text logits are masked) and temperature 1, which is ours without top-k
  at temperature 1. Its `vae.decode` is replaced by a function returning the codes, so only
  producing the image tokens is timed.
- its cache: in 1.6.6 `generate_images(use_cache=True)` loses the cache on the way to the model
  unless classifier-free guidance is on (`forward_with_cond_scale` passes `cache` only when
  cond_scale != 1). "Cache forced on" patches that method on the instance to pass it, and builds
  the model with `optimize_for_inference=True`, which turns its axial layers into masked dense
  attention that reads the cache; its conv_like layer has no cache and recomputes the whole stream
  at every step. It samples the same codes as without the cache (tests/test_benchmarks.py).
- imports: its package imports the modules of its VQGAN path (`taming`, `omegaconf`) and
  `pkg_resources` (gone from setuptools 81 on) when it loads; where they are not installed, empty
  stand-ins go into sys.modules first. Nothing here touches its VQGAN.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import types
from collections.abc import Callable
from importlib import util
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from common import (
    Timing,
    autocast,
    comparison_config,
    environment,
    fmt_timing,
    markdown_table,
    measure,
    parser,
    setup,
)
from dalle.attention import layer_layouts
from dalle.config import PriorConfig, TrainConfig
from dalle.prior import Prior
from dalle.train.loop import build_optimizer
from prior import TRAIN_BATCH, training_step
from sampling import WEIGHTS, sampling_time

PEER = "dalle-pytorch"
REQUIREMENTS = Path(__file__).with_name("requirements-peer.txt")
INSTALL = f"`.venv/bin/pip install --no-deps -r benchmarks/{REQUIREMENTS.name}`"
TEXT_IDS = CODES = 1024
SAMPLE_BATCH = 8
PEER_ATTENTION = {"row": "axial_row", "column": "axial_col", "conv": "conv_like", "dense": "full"}


class Row(NamedTuple):
    key: str  # of the results
    what: str
    ours: str  # the --what of each side's worker
    peer: str


ROWS = [
    Row("train-fp32", f"training tokens/s, batch {TRAIN_BATCH}, fp32", "train-fp32", "train-fp32"),
    Row("train-bf16", f"training tokens/s, batch {TRAIN_BATCH}, bf16 autocast", "train-bf16", "train-bf16"),
    Row("sample-fp32-defaults", f"sampling image tokens/s, 8x8, batch {SAMPLE_BATCH}, fp32 weights; {PEER}'s "
        "defaults (no cache)", "sample-fp32", "sample-fp32"),
    Row("sample-fp32-cache", f"sampling image tokens/s, 8x8, batch {SAMPLE_BATCH}, fp32 weights; {PEER}'s "
        "cache forced on", "sample-fp32", "sample-fp32-cache"),
    Row("sample-fp32-compiled-defaults", f"sampling image tokens/s, 8x8, batch {SAMPLE_BATCH}, fp32 weights, "
        f"ours with the compiled step; {PEER}'s defaults (no cache)", "sample-fp32-compiled", "sample-fp32"),
    Row("sample-fp32-compiled-cache", f"sampling image tokens/s, 8x8, batch {SAMPLE_BATCH}, fp32 weights, "
        f"ours with the compiled step; {PEER}'s cache forced on", "sample-fp32-compiled", "sample-fp32-cache"),
    Row("sample-bf16-cache", f"sampling image tokens/s, 8x8, batch {SAMPLE_BATCH}, bf16 weights; {PEER}'s "
        "cache forced on", "sample-bf16", "sample-bf16-cache"),
    Row("sample-fp32-dense-cache", f"sampling image tokens/s, 8x8, batch {SAMPLE_BATCH}, fp32 weights; {PEER} "
        "with dense ('full') attention in every layer, cache forced on", "sample-fp32", "sample-fp32-dense-cache"),
]
QUICK_ROWS = ("train-fp32", "train-bf16", "sample-fp32-defaults", "sample-fp32-cache")
WHATS = sorted({name for row in ROWS for name in (row.ours, row.peer)})


def peer_config() -> PriorConfig:
    """The comparison prior at 1,024 text ids (plus a pad per text position and the start id) and
    1,024 codes."""
    config = comparison_config()
    return dataclasses.replace(config, text_vocab_size=TEXT_IDS + config.text_length + 1, codebook_size=CODES)


def missing_peer() -> str | None:
    """Why the peer cannot run (a package of requirements-peer.txt absent, or another
    dalle-pytorch than the one compared), or None."""
    for line in REQUIREMENTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, pinned = line.split("==")
            try:
                installed = version(name)
            except PackageNotFoundError:
                return f"{name} is not installed"
            if name == PEER and installed != pinned:
                return f"{PEER} {installed} is installed, this compares {pinned}"
    return None


def import_peer() -> types.ModuleType:
    """dalle_pytorch, after standing in for the modules only its VQGAN path uses where they are
    missing: it imports them when it loads."""
    stand_ins: dict[str, dict[str, object]] = {
        "taming": {},
        "taming.models": {},
        "taming.models.vqgan": {"VQModel": type("VQModel", (), {}), "GumbelVQ": type("GumbelVQ", (), {})},
        "omegaconf": {"OmegaConf": None},
        "pkg_resources": {"get_distribution": lambda name: types.SimpleNamespace(version=version(name))},
    }
    missing = {name for name in stand_ins if "." not in name and util.find_spec(name) is None}
    for name, attributes in stand_ins.items():
        if name.split(".")[0] in missing:
            module = types.ModuleType(name)
            module.__dict__.update(attributes)
            sys.modules[name] = module
    import dalle_pytorch

    return dalle_pytorch


def peer_model(config: PriorConfig, device: torch.device, dense: bool = False,
               cached: bool = False) -> Any:
    """The peer's DALLE (untyped) at `config`, each layer's attention its version of ours (all
    'full' where `dense`); `cached` builds it for its cache and makes `generate_images(use_cache=True)`
    use it."""
    peer = import_peer()
    torch.manual_seed(0)
    layers = ["dense"] * config.depth if dense else layer_layouts(config.depth, config.layout)
    # 2**3 pixels per code on each side: a 3-layer DiscreteVAE maps the images to config's grid.
    vae = peer.DiscreteVAE(image_size=config.grid_size * 2**3, num_layers=3, num_tokens=config.codebook_size)
    model = peer.DALLE(dim=config.dim, vae=vae, num_text_tokens=config.text_vocab_size - config.text_length - 1,
                       text_seq_len=config.text_length, depth=config.depth, heads=config.heads,
                       dim_head=config.head_dim, attn_types=tuple(PEER_ATTENTION[name] for name in layers),
                       optimize_for_inference=cached)
    model.vae.decode = lambda codes: codes  # time the image tokens, not the dVAE decoding them
    if cached:
        model.forward_with_cond_scale = lambda *args, cond_scale=1, cache=None, **kwargs: model(
            *args, cache=cache, **kwargs)
    return model.to(device)


def peer_training_step(model: nn.Module, config: PriorConfig, device: torch.device,
                       bf16: bool) -> Callable[[], None]:
    """`prior.training_step` for the peer: one AdamW step on a fixed random batch of codes."""
    optimizer = build_optimizer(model, TrainConfig(lr=1e-4, weight_decay=4.5e-2, betas=(0.9, 0.96)))
    # Its id 0 is the padding it replaces by a pad per position: real text never holds it here.
    text = torch.randint(1, TEXT_IDS, (TRAIN_BATCH, config.text_length), device=device)
    codes = torch.randint(0, CODES, (TRAIN_BATCH, config.image_tokens), device=device)

    def step() -> None:
        with autocast(device, bf16):
            loss = model(text, codes, return_loss=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 4.0)
        optimizer.step()

    return step


def worker(side: str, what: str, device: torch.device, repeats: int) -> tuple[Timing, int]:
    """Tokens/s of `what` ("train-fp32", "sample-bf16-cache", ...) on one side, and the number of
    parameters it trains."""
    config = peer_config()
    kind, weights, *mode = what.split("-")
    bf16 = weights == "bf16"
    if side == "ours":
        torch.manual_seed(0)
        model: nn.Module = Prior(config).to(device)
        if kind == "train":
            seconds = measure(training_step(model, device, bf16), repeats)
        else:
            # compiled: `compile=True`, compiled in the warm-up run (benchmarks/sampling.py)
            seconds = sampling_time(model.to(WEIGHTS[weights]).eval(), SAMPLE_BATCH, repeats,
                                    compile="compiled" in mode)
    else:
        cached = "cache" in mode
        model = peer = peer_model(config, device, dense="dense" in mode, cached=cached)
        if kind == "train":
            seconds = measure(peer_training_step(peer, config, device, bf16), repeats)
        else:
            peer.to(WEIGHTS[weights])
            text = torch.randint(1, TEXT_IDS, (SAMPLE_BATCH, config.text_length), device=device)
            seconds = measure(lambda: peer.generate_images(text, use_cache=cached), repeats)
    batch = TRAIN_BATCH if kind == "train" else SAMPLE_BATCH
    tokens = batch * (config.text_length + config.image_tokens if kind == "train" else config.image_tokens)
    return seconds.rate(tokens), sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_worker(side: str, what: str, device: torch.device, repeats: int) -> tuple[Timing, int]:
    """`worker` in a fresh process with this one's torch threads."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--what", what,
               "--device", str(device), "--threads", str(torch.get_num_threads()), "--repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    result = json.loads(done.stdout.splitlines()[-1])
    return Timing(*result["tokens/s"]), result["parameters"]


def peer_section(device: torch.device, repeats: int, rounds: int = 3,
                 quick: bool = False) -> tuple[str, dict]:
    """The table and {row key: {"ours", PEER: tokens/s Timing, "ratio": ours / peer medians}}, or
    one line on how to install the peer and no results."""
    title = f"### Side by side with {PEER} 1.6.6\n\n"
    missing = missing_peer()
    if missing:
        return title + f"Skipped: {missing}; install the peer with {INSTALL}.", {}
    rows = [row for row in ROWS if not quick or row.key in QUICK_ROWS]
    jobs = list(dict.fromkeys(job for row in rows for job in (("ours", row.ours), ("peer", row.peer))))
    runs: dict[tuple[str, str], list[Timing]] = {job: [] for job in jobs}
    parameters = {}
    for round_ in range(rounds):
        for side, what in jobs if round_ % 2 == 0 else jobs[::-1]:
            timing, parameters[side] = run_worker(side, what, device, repeats)
            runs[side, what].append(timing)

    def across_rounds(job: tuple[str, str]) -> Timing:
        return Timing(statistics.median(t.median for t in runs[job]), min(t.min for t in runs[job]),
                      max(t.max for t in runs[job]))

    results, table = {}, []
    for row in rows:
        ours, peer = across_rounds(("ours", row.ours)), across_rounds(("peer", row.peer))
        results[row.key] = {"ours": ours, PEER: peer, "ratio": ours.median / peer.median}
        table.append([row.what, fmt_timing(ours), fmt_timing(peer), f"{ours.median / peer.median:.1f}x"])
    text = (title + f"The comparison prior at 1,024 text ids and 1,024 codes, 8x8 grid (benchmarks/peer.py "
            f"says how the peer is set up): ours {parameters['ours'] / 1e6:.1f}M parameters, {PEER}'s "
            f"{parameters['peer'] / 1e6:.1f}M (its GEGLU MLP and one head over text and image ids). "
            "Attention as the paper's layouts on both sides (its 'axial_row', 'axial_col', 'conv_like'); "
            "training on precomputed codes; sampling times the image tokens alone, ours with the KV "
            f"cache. Each figure is the median over {rounds} rounds of fresh processes, ours and "
            f"{PEER} alternating, of the median of {repeats} timed runs after 1 warm-up (fastest–slowest "
            "single run); the targets use the fp32 sampling rows.\n\n"
            + markdown_table(["measure", "ours", PEER, f"ours / {PEER}"], table))
    return text, results


def main() -> None:
    p = parser(__doc__, repeats=5)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of fresh processes")
    # The processes that peer_section starts; not for people.
    p.add_argument("--worker", choices=("ours", "peer"), help=argparse.SUPPRESS)
    p.add_argument("--what", choices=WHATS, help=argparse.SUPPRESS)
    args = p.parse_args()
    device = setup(args)
    if args.worker:
        timing, parameters = worker(args.worker, args.what, device, args.repeats)
        print(json.dumps({"tokens/s": list(timing), "parameters": parameters}))
        return
    print(environment(device) + "\n", flush=True)
    print(peer_section(device, args.repeats, min(args.rounds, 2) if args.quick else args.rounds, args.quick)[0])


if __name__ == "__main__":
    main()
