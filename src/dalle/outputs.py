"""What a generation leaves on disk: a folder per run, PNGs that say how they were made, a
`generation.json` beside them, and a grid a person can see.

    outputs/2026-12-06_1412_a-red-circle/
      00.png ...     the kept images, best first; their PNG text chunks hold the record below
      grid.png       the images enlarged by nearest neighbour, the prompt above them
      generation.json  the same facts for every image

`generation_record` and `png_info` take any `Generation`, so whatever saves or serves images
(the CLI here, the server's PNG responses) writes the same facts.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from dalle.pipeline import Generation
from dalle.utils import atomic_write, ensure_writable_dir, image_grid

OUTPUTS = Path("outputs")  # where each `dalle generate` without --out makes its folder
RECORD_FILE = "generation.json"
GRID_FILE = "grid.png"
SLUG_LENGTH = 48  # characters of the prompt in a folder name: enough to tell runs apart in `ls`
GRID_TILE = 256  # px: grid tiles are enlarged by a whole factor to about this side
# Facts that are always text, even when they read as JSON (a prompt "42" stays a string).
TEXT_KEYS = ("prompt", "pipeline", "created", "dalle_version")


def dalle_version() -> str:
    """The installed package's version (a source tree that was never installed has none)."""
    try:
        return metadata.version("dalle")
    except metadata.PackageNotFoundError:
        return "unknown"


def slug(prompt: str, length: int = SLUG_LENGTH) -> str:
    """The prompt as a folder-name fragment: lower-case words joined by '-', cut at a word
    boundary to at most `length` characters; letters of any script stay, everything else goes."""
    words = re.sub(r"[\W_]+", " ", prompt.lower()).split()
    text = ""
    for word in words:
        joined = f"{text}-{word}" if text else word
        if len(joined) > length:
            text = text or word[:length]
            break
        text = joined
    return text or "image"


def new_output_folder(root: str | Path, prompt: str, now: datetime | None = None) -> Path:
    """Create and return `root/DATE_HHMM_SLUG` (`-2`, `-3`, ... when taken): each run its own
    folder, even two in the same second or at once (making a folder is atomic)."""
    root = ensure_writable_dir(root)
    stem = f"{(now or datetime.now()):%Y-%m-%d_%H%M}_{slug(prompt)}"
    for n in range(1, 10_000):
        folder = root / (stem if n == 1 else f"{stem}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"{root} holds 10,000 folders named {stem}; choose another --out")


def generation_record(generation: Generation, pipeline: str, **extra: Any) -> dict[str, Any]:
    """What made `generation`, and each kept image's candidate index and CLIP score.

    `pipeline` is its name or directory as the user gave it; `extra` adds facts the caller knows
    (e.g. the image a completion started from).
    """
    scores = generation.scores.tolist() if generation.scores is not None else [None] * len(generation.indices)
    return {
        "prompt": generation.prompt,
        "seed": generation.seed,
        **generation.sampling,
        "candidates": generation.candidates,
        "pipeline": pipeline,
        **extra,
        "dalle_version": dalle_version(),
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "images": [{"candidate_index": index, "clip_score": score}
                   for index, score in zip(generation.indices.tolist(), scores)],
    }


def image_record(record: dict[str, Any], i: int) -> dict[str, Any]:
    """The facts of image `i` alone: the run's, and that image's candidate index and score."""
    return {**{k: v for k, v in record.items() if k != "images"}, **record["images"][i]}


def png_info(facts: dict[str, Any]) -> PngInfo:
    """PNG text chunks, one per fact (`identify -verbose` or `exiftool` lists them): text as it
    is, numbers and null as JSON; a prompt outside Latin-1 goes in an iTXt (UTF-8) chunk."""
    info = PngInfo()
    for key, value in facts.items():
        info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    info.add_text("Software", f"dalle {facts.get('dalle_version', dalle_version())}")
    return info


def read_png_record(image: Image.Image) -> dict[str, Any]:
    """The facts `png_info` wrote into an opened PNG, with their types back (a text fact that
    reads as JSON, other than the prompt's kind, comes back as that value)."""
    text = dict(getattr(image, "text", {}))
    text.pop("Software", None)
    return {k: v if k in TEXT_KEYS else _json_or_text(v) for k, v in text.items()}


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def grid_scale(side: int) -> int:
    """The whole factor that brings a tile of `side` pixels to about GRID_TILE (1 when larger)."""
    return max(1, round(GRID_TILE / side))


def save_generation(generation: Generation, folder: str | Path, record: dict[str, Any],
                    columns: int = 4) -> list[Path]:
    """Write `generation`'s images (NN.png, with their facts), grid.png and generation.json into
    `folder`; returns the paths written, the images first."""
    folder = ensure_writable_dir(folder)
    paths = []
    for i, picture in enumerate(generation.pil()):
        path = folder / f"{i:02d}.png"
        picture.save(path, pnginfo=png_info(image_record(record, i)))
        paths.append(path)
    images = generation.images
    grid = image_grid(images, columns=min(columns, len(images)), padding=4,
                      scale=grid_scale(images.shape[-1]), caption=generation.prompt)
    grid.save(folder / GRID_FILE)
    listed = {**record, "images": [{"file": p.name, **facts} for p, facts in zip(paths, record["images"])]}
    atomic_write(folder / RECORD_FILE, (json.dumps(listed, indent=2, ensure_ascii=False) + "\n").encode())
    return [*paths, folder / GRID_FILE, folder / RECORD_FILE]
