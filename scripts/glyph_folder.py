"""Render a folder of captioned pictures that the project does not ship, to try `dalle recipe
folder` as a new user would: coloured letters on coloured backgrounds, captioned
`a red letter K on a gray background`.

Some (letter, colour, background) combinations are held out: no picture shows them, while each
letter, colour and background appears in others. They are written, one caption per line, to
`<out>.held-out.txt` beside the folder (not inside it, where it would read as a caption without
an image), so that a trained pipeline can be asked for them.

    python scripts/glyph_folder.py data/glyphs --pictures 200 --held-out 10
"""

from __future__ import annotations

import argparse
import itertools
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

LETTERS = ("A", "E", "K", "S", "T")
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (40, 80, 235),
           "yellow": (245, 215, 20), "white": (245, 245, 245)}
BACKGROUNDS = {"black": (10, 10, 10), "gray": (128, 128, 128), "purple": (110, 30, 130),
               "teal": (0, 110, 110)}


def caption(letter: str, colour: str, background: str) -> str:
    return f"a {colour} letter {letter} on a {background} background"


def render(letter: str, colour: str, background: str, rng: random.Random, size: int) -> Image.Image:
    """The letter at a random size (45-70% of the side) and a random offset from the centre."""
    image = Image.new("RGB", (size, size), BACKGROUNDS[background])
    font = ImageFont.load_default(size=round(size * rng.uniform(0.45, 0.7)))
    # Strokes a tenth of the side thick, so that a letter stays a letter through the dVAE's 8x8
    # grid of codes at 64 px (the default font's 2-pixel strokes blur into blobs there).
    stroke = max(1, size // 24)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), letter, font=font, stroke_width=stroke)
    slack_x, slack_y = size - (right - left), size - (bottom - top)
    x = slack_x / 2 + rng.uniform(-0.3, 0.3) * slack_x - left
    y = slack_y / 2 + rng.uniform(-0.3, 0.3) * slack_y - top
    draw.text((x, y), letter, fill=COLOURS[colour], font=font, stroke_width=stroke,
              stroke_fill=COLOURS[colour])
    return image


def write_glyph_folder(out: Path, pictures: int = 200, held_out: int = 10, seed: int = 0,
                       size: int = 64) -> list[str]:
    """Write `pictures` pairs to `out` and return the held-out captions (also in
    `<out>.held-out.txt`). Every letter, colour and background stays in the folder."""
    rng = random.Random(seed)
    combos = list(itertools.product(LETTERS, COLOURS, BACKGROUNDS))
    rng.shuffle(combos)
    hidden: list[tuple[str, str, str]] = []
    for combo in combos:
        if len(hidden) == held_out:
            break
        kept = [c for c in combos if c not in hidden and c != combo]
        if all(any(c[i] == combo[i] for c in kept) for i in range(3)):
            hidden.append(combo)
    shown = [c for c in combos if c not in hidden]
    out.mkdir(parents=True, exist_ok=True)
    for i in range(pictures):
        letter, colour, background = shown[i % len(shown)]
        render(letter, colour, background, rng, size).save(out / f"{i:04d}.png")
        (out / f"{i:04d}.txt").write_text(caption(letter, colour, background) + "\n")
    captions = [caption(*c) for c in hidden]
    out.with_name(out.name + ".held-out.txt").write_text("".join(c + "\n" for c in captions))
    return captions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--pictures", type=int, default=200)
    parser.add_argument("--held-out", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    held = write_glyph_folder(args.out, args.pictures, args.held_out, args.seed, args.size)
    print(f"{args.pictures} pictures in {args.out}; {len(held)} held-out captions in "
          f"{args.out.name}.held-out.txt")


if __name__ == "__main__":
    main()
