"""Ask a pipeline trained on a `scripts/glyph_folder.py` folder for its held-out captions and
judge each picture: background and letter colour by the nearest named colour, the letter by the
training picture whose letter shape (cropped to its box, at one size) overlaps it most.

    python scripts/judge_glyphs.py --pipeline runs/glyphs/pipeline --data data/glyphs --out judged.png

`--seen` judges 10 captions that the folder shows instead, for comparison; `--images 8
--candidates 8` judges samples without CLIP's choice.

The judge is checked first on fresh renders of the held-out captions (it should read nearly all
of them right), so that its verdicts on generated pictures mean something.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from dalle.pipeline import DallePipeline  # noqa: E402
from dalle.utils import image_grid  # noqa: E402
from glyph_folder import BACKGROUNDS, COLOURS, render  # noqa: E402

FOREGROUND = 60.0  # RGB distance from the background above which a pixel is the letter's


def nearest(rgb: np.ndarray, names: dict[str, tuple[int, int, int]]) -> str:
    return min(names, key=lambda n: float(np.linalg.norm(rgb - np.array(names[n]))))


def parts(image: np.ndarray) -> tuple[str, str, np.ndarray]:
    """(background, letter colour, letter mask) of an (H, W, 3) uint8 picture."""
    pixels = image.astype(np.float64)
    border = np.concatenate([pixels[:3].reshape(-1, 3), pixels[-3:].reshape(-1, 3),
                             pixels[:, :3].reshape(-1, 3), pixels[:, -3:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    mask = np.linalg.norm(pixels - background, axis=-1) > FOREGROUND
    colour = nearest(np.median(pixels[mask], axis=0), COLOURS) if mask.sum() >= 8 else "none"
    return nearest(background, BACKGROUNDS), colour, shape(mask)


def shape(mask: np.ndarray, side: int = 16) -> np.ndarray:
    """The mask cropped to its bounding box and resized to side x side: the letter's shape
    without its position and size, which the folder varies."""
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return np.zeros((side, side), dtype=bool)
    crop = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    resized = Image.fromarray(crop.astype(np.uint8) * 255).resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(resized) > 127


class Judge:
    def __init__(self, data: Path) -> None:
        self.masks, self.letters = [], []
        for path in sorted(data.glob("*.png")):
            words = (path.with_suffix(".txt")).read_text().split()
            self.masks.append(parts(np.asarray(Image.open(path).convert("RGB")))[2])
            self.letters.append(words[3])  # a COLOUR letter X on a BACKGROUND background

    def __call__(self, image: np.ndarray) -> tuple[str, str, str]:
        background, colour, mask = parts(image)
        overlaps = [(m & mask).sum() / max(1, (m | mask).sum()) for m in self.masks]
        return self.letters[int(np.argmax(overlaps))], colour, background


def verdicts(judge: Judge, images: list[np.ndarray], wanted: tuple[str, str, str]) -> list[bool]:
    return [judge(image) == wanted for image in images]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the glyph folder it trained on")
    parser.add_argument("--out", type=Path, default=Path("judged.png"))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--seen", action="store_true", help="10 captions the folder shows instead")
    args = parser.parse_args()
    if args.seen:  # spread over the sorted captions, so over letters, colours and backgrounds
        shown = sorted({path.read_text().strip() for path in args.data.glob("*.txt")})
        held = shown[:: max(1, len(shown) // 10)][:10]
    else:
        held = args.data.with_name(args.data.name + ".held-out.txt").read_text().splitlines()
    wanted = [(c.split()[3], c.split()[1], c.split()[6]) for c in held]
    judge = Judge(args.data)
    size = np.asarray(Image.open(next(args.data.glob("*.png")))).shape[0]
    rng = random.Random(1)
    renders = [[np.asarray(render(w[0], w[1], w[2], rng, size)) for _ in range(args.images)] for w in wanted]
    right = sum(sum(verdicts(judge, r, w)) for r, w in zip(renders, wanted))
    print(f"judge on fresh renders of the captions: {right}/{len(held) * args.images} read right")
    pipe = DallePipeline.from_pretrained(args.pipeline)
    rows, totals = [], {"letter": 0, "colour": 0, "background": 0, "all three": 0}
    first = 0
    print(f"{'caption':<42} letter colour background all (of {args.images}, best {args.images} "
          f"of {args.candidates} by CLIP)")
    for text, w in zip(held, wanted):
        out = pipe(text, images=args.images, candidates=args.candidates, seed=0)
        images = [np.asarray(image) for image in out.pil()]
        read = [judge(image) for image in images]
        counts = [sum(r[i] == w[i] for r in read) for i in range(3)] + [sum(r == w for r in read)]
        for key, n in zip(totals, counts):
            totals[key] += n
        first += read[0] == w
        print(f"{text:<42} {counts[0]:>6} {counts[1]:>6} {counts[2]:>10} {counts[3]:>3}")
        rows.append(out.images.float().cpu())
    n = len(held) * args.images
    print("all captions: " + ", ".join(f"{k} {v}/{n} ({v / n:.0%})" for k, v in totals.items())
          + f"; first image all three {first}/{len(held)}")
    real = torch.stack([torch.from_numpy(r[0].copy()).permute(2, 0, 1).float() / 255 for r in renders])
    grid = torch.cat([torch.cat([real[i:i + 1], rows[i]]) for i in range(len(held))])
    image_grid(grid, columns=args.images + 1).save(args.out)
    print(f"grid: each row a caption, a fresh render of it, then the pipeline's {args.images}"
          f" -> {args.out}")


if __name__ == "__main__":
    main()
