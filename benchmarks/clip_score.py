"""CLIP scoring speed: images/s of `CLIP.score` (reranking), as a table.

    python benchmarks/clip_score.py [--device auto] [--threads N] [--repeats 7] [--quick] [--batch 64]

`CLIPConfig()` defaults (64 px images, 8 px patches, width 128; text: 256 positions, width 128),
random weights, `--batch` random images each scored against a caption of 16 BPE tokens followed by
the pads and start-of-image, fp32 and bf16 autocast.
"""

from __future__ import annotations

import torch

from common import autocast, environment, fmt_timing, markdown_table, measure, parser, precision_name, setup
from dalle.clip import CLIP
from dalle.config import CLIPConfig

CAPTION_TOKENS = 16


def caption_ids(config: CLIPConfig, batch: int, device: torch.device) -> torch.Tensor:
    """(batch, text_length + 1) ids: random BPE tokens, then each position's pad, then start-of-image."""
    ids = torch.arange(config.text_length + 1, device=device) + config.bpe_vocab_size
    ids = ids.repeat(batch, 1)
    ids[:, :CAPTION_TOKENS] = torch.randint(0, config.bpe_vocab_size, (batch, CAPTION_TOKENS), device=device)
    return ids


def clip_section(device: torch.device, repeats: int, batch: int = 64) -> tuple[str, dict]:
    """The table and {"fp32" | "bf16": images/s Timing}."""
    torch.manual_seed(0)
    config = CLIPConfig()
    model = CLIP(config).to(device).eval()
    images = torch.rand(batch, 3, config.image_size, config.image_size, device=device)
    captions = caption_ids(config, batch, device)
    rows, results = [], {}
    for bf16 in (False, True):
        def score(bf16: bool = bf16) -> None:
            with torch.no_grad(), autocast(device, bf16):
                model.score(images, captions)

        rate = results["bf16" if bf16 else "fp32"] = measure(score, repeats).rate(batch)
        rows.append([str(batch), precision_name(bf16), fmt_timing(rate)])
    text = (f"### CLIP scoring\n\n`CLIP.score` with `CLIPConfig()` defaults, {config.image_size} px "
            f"images against {CAPTION_TOKENS}-token captions.\n\n"
            + markdown_table(["batch", "precision", "images/s"], rows))
    return text, results


def main() -> None:
    p = parser(__doc__, repeats=7)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    device = setup(args)
    print(environment(device) + "\n", flush=True)
    print(clip_section(device, args.repeats, args.batch)[0])


if __name__ == "__main__":
    main()
