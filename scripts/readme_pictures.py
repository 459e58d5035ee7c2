"""Make README.md's pictures of the bundled pipelines: one row per prompt, its 4 best of 16 by
CLIP, seed 0, each image shown at twice its size.

Usage: .venv/bin/python scripts/readme_pictures.py   (writes docs/shapes-samples.png and
docs/emoji-samples.png)
"""

from pathlib import Path

import torch
from PIL import Image

from dalle import DallePipeline
from dalle.utils import image_grid

PROMPTS = {
    "shapes": ["a small green triangle above a large red circle", "a large blue square",
               "a small yellow circle to the left of a large yellow circle",
               "a small white cross to the left of a large orange circle"],
    "emoji": ["red apple, twitter style", "grinning face, google style", "red heart, twitter style",
              "flag: japan, google style"],
}
DOCS = Path(__file__).resolve().parent.parent / "docs"

for name, prompts in PROMPTS.items():
    pipe = DallePipeline.from_pretrained(name)
    rows = [pipe(prompt, images=4, candidates=16, seed=0).images for prompt in prompts]
    grid = image_grid(torch.cat(rows), columns=4)
    grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(DOCS / f"{name}-samples.png")
    print(DOCS / f"{name}-samples.png")
