"""Every speed table as markdown, then the targets: measured against the goal, pass or fail.

    python benchmarks/run.py                      # everything (a few minutes on 2 cores)
    python benchmarks/run.py --quick              # 2 runs per figure, no rows that no target needs
    python benchmarks/run.py --only matmul training
    python benchmarks/run.py --device cuda --paper-12b

Sections, in order: matmul (the machine's GFLOP/s peak per dtype), training (the prior at the
comparison config), sampling, vae, clip, scaling (attention layouts vs dense), peer (side by side
with dalle-pytorch 1.6.6, where installed: benchmarks/peer.py), paper-12b (only with --paper-12b or
--only; CUDA only), then the targets of what ran. Every figure is the median (min–max) of
--repeats runs after one warm-up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from clip_score import clip_section
from common import Timing, environment, fmt, markdown_table, parser, percent, setup
from matmul import matmul_section
from peer import peer_section
from prior import presets_section, scaling_section, training_section
from sampling import candidates_section, paper_12b_section, sampling_section
from vae import vae_section

SECTIONS = ("matmul", "training", "presets", "sampling", "candidates", "vae", "clip", "scaling", "peer",
            "paper-12b")


class Target(NamedTuple):
    what: str
    path: tuple  # keys into the sections' results, down to a number or a Timing (its median)
    goal: float
    at_least: bool  # else at most
    form: Callable[[float], str]


def ratio(value: float) -> str:
    return f"{value:.2f}x"


TARGETS = [
    Target("training tokens/s, paper vocabularies, bf16 autocast (headline)",
           ("training", ("paper", "bf16"), "tokens/s"), 4000, True, fmt),
    Target("training tokens/s, shapes vocabularies, bf16 autocast",
           ("training", ("shapes", "bf16"), "tokens/s"), 4000, True, fmt),
    Target("training model GFLOP/s / bf16 matmul peak, paper vocabularies",
           ("training", ("paper", "bf16"), "of peak"), 0.5, True, percent),
    Target("training model GFLOP/s / bf16 matmul peak, shapes vocabularies",
           ("training", ("shapes", "bf16"), "of peak"), 0.5, True, percent),
    Target("sampling image tokens/s, 8x8, batch 8, fp32 weights", ("sampling", (8, 8, "fp32")),
           1300, True, fmt),
    Target("sampling image tokens/s, 8x8, batch 8, bf16 weights", ("sampling", (8, 8, "bf16")),
           1300, True, fmt),
    Target("sampling image tokens/s, 8x8, batch 64, fp32 weights", ("sampling", (8, 64, "fp32")),
           3000, True, fmt),
    Target("sampling image tokens/s, 8x8, batch 64, bf16 weights", ("sampling", (8, 64, "bf16")),
           3000, True, fmt),
    Target("paper layouts at 32x32, attention alone: speed-up over dense",
           ("scaling", "attention", "speed-up"), 3.0, True, ratio),
    Target("paper layouts at 32x32, attention alone: peak memory / dense",
           ("scaling", "attention", "memory"), 0.5, False, ratio),
    Target("4-layer model at 32x32, fp32: paper layouts' speed-up over dense",
           ("scaling", "model 32x32", ("fp32", "blocks"), "speed-up"), 2.0, True, ratio),
    Target("4-layer model at 32x32, fp32: paper layouts' peak memory / dense",
           ("scaling", "model 32x32", ("fp32", "blocks"), "memory"), 1.0, False, ratio),
    Target("4-layer model at 32x32, bf16 autocast: paper layouts' speed-up over dense",
           ("scaling", "model 32x32", ("bf16", "blocks"), "speed-up"), 2.0, True, ratio),
    Target("4-layer model at 32x32, bf16 autocast: paper layouts' peak memory / dense",
           ("scaling", "model 32x32", ("bf16", "blocks"), "memory"), 1.0, False, ratio),
    # Both with fp32 weights: ours `sample_codes` with the KV cache (benchmarks/peer.py).
    Target("sampling image tokens/s, 8x8, batch 8: ours / dalle-pytorch with its cache forced on",
           ("peer", "sample-fp32-cache", "ratio"), 4.0, True, ratio),
    Target("sampling image tokens/s, 8x8, batch 8: ours / dalle-pytorch with its defaults",
           ("peer", "sample-fp32-defaults", "ratio"), 20.0, True, ratio),
    Target("the same, ours with the compiled step: / dalle-pytorch with its cache forced on",
           ("peer", "sample-fp32-compiled-cache", "ratio"), 4.0, True, ratio),
    Target("the same, ours with the compiled step: / dalle-pytorch with its defaults",
           ("peer", "sample-fp32-compiled-defaults", "ratio"), 20.0, True, ratio),
]
# Targets for one H100 (bf16), checked only when the run is on CUDA.
GPU_TARGETS = [
    Target("base preset training at 32x32, bf16: MFU", ("presets", "base", "of peak"), 0.4, True, percent),
    Target("4-layer model at 32x32, bf16: paper layouts (flex) speed-up over dense flash",
           ("scaling", "model 32x32", ("bf16", "flex"), "speed-up"), 1.5, True, ratio),
]


def lookup(results: dict, path: tuple) -> float:
    """The number at `path` in the results (a Timing's median); KeyError where it was not measured."""
    value = results
    for key in path:
        value = value[key]
    return value.median if isinstance(value, Timing) else value


def targets_section(results: dict, device: torch.device) -> str:
    """Measured (median) against each target of the sections that ran (with `GPU_TARGETS` on
    CUDA); 'not measured' where a figure is missing (the training's share of the peak needs the
    matmul section)."""
    rows = []
    targets = TARGETS + (GPU_TARGETS if device.type == "cuda" else [])
    for target in (t for t in targets if t.path[0] in results):
        goal = f"{'≥' if target.at_least else '≤'} {target.form(target.goal)}"
        try:
            value = lookup(results, target.path)
        except KeyError:
            rows.append([target.what, "not measured", goal, "–"])
            continue
        passed = value >= target.goal if target.at_least else value <= target.goal
        rows.append([target.what, target.form(value), goal, "pass" if passed else "**fail**"])
    return "### Targets\n\n" + markdown_table(["target", "measured (median)", "goal", "result"], rows)


def main() -> None:
    p = parser(__doc__, repeats=7)
    p.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                   help=f"run only these sections: {', '.join(SECTIONS)}")
    p.add_argument("--paper-12b", action="store_true", help="add the 12B preset's sampling time (CUDA)")
    args = p.parse_args()
    device = setup(args)
    r, quick, results = args.repeats, args.quick, {}
    runners = {
        "matmul": lambda: matmul_section(device, r),
        "training": lambda: training_section(device, r, results.get("matmul")),
        "presets": lambda: presets_section(device, r, results.get("matmul"), quick),
        "sampling": lambda: sampling_section(device, r, grids=(8,) if quick else (8, 16)),
        "candidates": lambda: candidates_section(device, r),
        "vae": lambda: vae_section(device, r, paper=not quick),
        "clip": lambda: clip_section(device, r),
        "scaling": lambda: scaling_section(device, r),
        "peer": lambda: peer_section(device, r, rounds=2 if quick else 3, quick=quick),
        "paper-12b": lambda: (paper_12b_section(device, r), None),
    }
    selected = args.only or [name for name in SECTIONS if name != "paper-12b" or args.paper_12b]
    print(f"## Speed{' (quick)' if quick else ''}\n\n{environment(device)}\n- every figure: median "
          f"(min–max) of {r} runs after 1 warm-up\n", flush=True)
    for name in SECTIONS:
        if name in selected:
            text, results[name] = runners[name]()
            print(text + "\n", flush=True)
    if any(target.path[0] in results for target in TARGETS):
        print(targets_section(results, device))


if __name__ == "__main__":
    main()
