"""Does a pipeline still draw an emoji it was trained on? Sample a prompt of the Emoji set and rank
the true picture among every picture of that style by 16x16 thumbnails (issue 26's feature: it
ranks dVAE reconstructions first among all 1,909 twitter pictures); a sample counts as the emoji
when its true picture is in the top 5.

    dalle data emoji --out data/emoji --no-skin-tones
    python scripts/judge_apples.py --pipelines emoji runs/emoji-icons --emoji data/emoji --out apples.png

Plain samples at seed 0 with the pipeline's sampling defaults (no reranking), as the page draws.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dalle.evaluate.emoji import TOP, thumbnails
from dalle.pipeline import DallePipeline
from dalle.utils import image_grid


def style_pictures(emoji: Path, style: str) -> tuple[list[Path], torch.Tensor]:
    files = sorted((emoji / "train").glob(f"*-{style}.png"))
    if not files:
        raise SystemExit(f"error: no {style} pictures in {emoji / 'train'}: give --emoji a `dalle data emoji` folder")
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return files, torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipelines", nargs="+", required=True)
    parser.add_argument("--emoji", type=Path, required=True, help="a `dalle data emoji` folder")
    parser.add_argument("--code-point", default="1f34e", help="the emoji's file stem (1f34e: red apple)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--out", type=Path, help="a grid: a row per pipeline and style")
    args = parser.parse_args()
    rows = []
    for name in args.pipelines:
        pipe = DallePipeline.from_pretrained(name)
        for style in ("twitter", "google"):
            files, pictures = style_pictures(args.emoji, style)
            true_file = args.emoji / "train" / f"{args.code_point}-{style}.png"
            if true_file not in files:
                raise SystemExit(f"error: no {true_file}: give --emoji a `dalle data emoji` folder "
                                 "and --code-point one of its emoji")
            true = files.index(true_file)
            caption = files[true].with_suffix(".txt").read_text().strip()
            drawn = pipe(caption, images=args.images, seed=0).images.float()
            distance = torch.cdist(thumbnails(drawn), thumbnails(pictures))
            ranks = (distance < distance[:, true:true + 1]).sum(1) + 1
            print(f"{name}  {caption!r}: {int((ranks <= TOP).sum())} of {args.images} in the top {TOP} "
                  f"of {len(files)} (ranks {ranks.tolist()})")
            rows.append(drawn)
    if args.out:
        image_grid(torch.cat(rows), columns=args.images).save(args.out)


if __name__ == "__main__":
    main()
