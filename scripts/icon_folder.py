"""Render a folder of 20 captioned icons that no bundled pipeline has seen, to try `dalle finetune`
as a new user would: ten simple objects, each drawn filled and as a line drawing, captioned
`a blue lightning bolt, line style`, on the white background the emoji pipeline draws on.

    python scripts/icon_folder.py data/icons --size 64
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

Points = list[tuple[float, float]]

COLOURS = {"red": (215, 35, 35), "orange": (240, 130, 10), "yellow": (235, 200, 0),
           "green": (30, 160, 60), "blue": (35, 80, 225), "purple": (130, 40, 170),
           "black": (20, 20, 20), "pink": (235, 90, 170), "brown": (130, 80, 35), "teal": (0, 140, 140)}


def _star(points: int = 5, inner: float = 0.4) -> Points:
    return [(math.cos(math.pi * k / points - math.pi / 2) * (1 if k % 2 == 0 else inner),
             math.sin(math.pi * k / points - math.pi / 2) * (1 if k % 2 == 0 else inner))
            for k in range(2 * points)]


def _heart() -> Points:
    ts = [2 * math.pi * k / 48 for k in range(48)]
    return [(16 * math.sin(t) ** 3 / 17, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t)
                                             - math.cos(4 * t)) / 17) for t in ts]


def _moon() -> Points:
    outer = [(math.cos(a), math.sin(a)) for a in (math.pi / 2 + math.pi * k / 24 for k in range(25))]
    inner = [(0.35 * math.cos(a) - 0.05, math.sin(a)) for a in (3 * math.pi / 2 - math.pi * k / 24 for k in range(25))]
    return outer + inner


def _drop() -> Points:
    arc = [(0.6 * math.cos(a), 0.3 + 0.6 * math.sin(a)) for a in (-math.pi / 6 + 4 * math.pi / 3 * k / 24 for k in range(25))]
    return [(0.0, -0.95)] + arc[::-1]


SHAPES: dict[str, Callable[[], Points]] = {
    "lightning bolt": lambda: [(0.15, -0.95), (-0.55, 0.1), (-0.05, 0.1), (-0.2, 0.95), (0.55, -0.15), (0.05, -0.15)],
    "star": _star,
    "heart": _heart,
    "arrow": lambda: [(-0.9, -0.25), (0.2, -0.25), (0.2, -0.65), (0.9, 0.0), (0.2, 0.65), (0.2, 0.25), (-0.9, 0.25)],
    "moon": _moon,
    "water drop": _drop,
    "house": lambda: [(0.0, -0.9), (0.85, -0.1), (0.6, -0.1), (0.6, 0.85), (-0.6, 0.85), (-0.6, -0.1), (-0.85, -0.1)],
    "plus sign": lambda: [(-0.3, -0.9), (0.3, -0.9), (0.3, -0.3), (0.9, -0.3), (0.9, 0.3), (0.3, 0.3), (0.3, 0.9),
                          (-0.3, 0.9), (-0.3, 0.3), (-0.9, 0.3), (-0.9, -0.3), (-0.3, -0.3)],
    "diamond": lambda: [(0.0, -0.95), (0.7, 0.0), (0.0, 0.95), (-0.7, 0.0)],
    "bell": lambda: [(-0.1, -0.9), (0.1, -0.9), (0.5, -0.5), (0.6, 0.45), (0.85, 0.65), (-0.85, 0.65), (-0.6, 0.45),
                     (-0.5, -0.5)],
}
# One colour per (object, style): each style shows every object, and no colour marks one style.
ICONS = [(shape, colour, style) for i, shape in enumerate(SHAPES)
         for style, colour in (("filled", list(COLOURS)[i]), ("line", list(COLOURS)[(i + 3) % len(COLOURS)]))]


def caption(shape: str, colour: str, style: str) -> str:
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape}, {style} style"


def render(shape: str, colour: str, style: str, size: int) -> Image.Image:
    """The object centred, 80% of the side; line drawings with strokes a twelfth of the side, thick
    enough to survive an 8x8 grid of codes."""
    scale = 4  # drawn at 4x and downsampled: smooth edges
    big = size * scale
    image = Image.new("RGB", (big, big), "white")
    points = [(big / 2 + x * big * 0.4, big / 2 + y * big * 0.4) for x, y in SHAPES[shape]()]
    draw = ImageDraw.Draw(image)
    if style == "filled":
        draw.polygon(points, fill=COLOURS[colour])
    else:
        draw.line(points + points[:1], fill=COLOURS[colour], width=max(2, big // 12), joint="curve")
    return image.resize((size, size), Image.Resampling.LANCZOS)


def write_icon_folder(out: Path, size: int = 64) -> list[str]:
    """Write `NN.png` + `NN.txt` for the 20 icons; returns their captions in order."""
    out.mkdir(parents=True, exist_ok=True)
    captions = []
    for i, (shape, colour, style) in enumerate(ICONS):
        render(shape, colour, style, size).save(out / f"{i:02d}.png")
        text = caption(shape, colour, style)
        (out / f"{i:02d}.txt").write_text(text + "\n")
        captions.append(text)
    return captions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    for text in write_icon_folder(args.out, args.size):
        print(text)


if __name__ == "__main__":
    main()
