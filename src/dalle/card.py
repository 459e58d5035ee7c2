"""Model cards: what a pipeline directory says about itself in its README.md.

`dalle assemble` writes one from the run folders of the parts it puts together (each model's
`../config.json` names its data and training settings, `../metrics.csv` its last losses) and
copies the licence and attribution files it finds beside the training data; a recipe replaces it
with its own card, which adds the evaluation and every stage's time (`dalle.recipe`). Both lead
with the Hub's YAML front matter (`dalle.hub.with_front_matter`): licence, tags, pipeline tag.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from dalle.data.folder import IMAGE_SUFFIXES
from dalle.hub import with_front_matter

if TYPE_CHECKING:
    from dalle.pipeline import DallePipeline

CARD_NAME = "README.md"
# Files or folders beside the data that carry its terms: copied into a pipeline trained on it.
NOTICE_PREFIXES = ("license", "licence", "copying", "attribution", "notice", "readme")


def find_notices(folder: Path) -> list[Path]:
    """Licence, attribution and readme files or folders at the top of `folder`; a `.txt` that
    is an image's caption is not one."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.lower().startswith(NOTICE_PREFIXES)
                  and not any(p.with_suffix(s).exists() for s in IMAGE_SUFFIXES))


def copy_notices(notices: list[Path], out: Path) -> None:
    for source in notices:
        if source.is_dir():
            shutil.copytree(source, out / source.name, dirs_exist_ok=True)
        else:
            shutil.copy2(source, out / source.name)


def describe_parts(pipe: DallePipeline) -> list[tuple[str, str]]:
    """(part, configuration) for each part of a pipeline, for a card's table."""
    v, p = pipe.vae.config, pipe.prior.config
    return [("tokenizer", f"byte-level BPE, {pipe.tokenizer.config.bpe_vocab_size} tokens, "
                          f"{pipe.tokenizer.config.text_length} text positions"),
            ("dVAE", f"{pipe.vae.num_parameters() / 1e6:.2f}M parameters, {v.image_size}px -> "
                     f"{v.grid_size}x{v.grid_size} codes of {v.codebook_size}"),
            ("prior", f"{pipe.prior.num_parameters() / 1e6:.2f}M parameters, dim {p.dim}, depth "
                      f"{p.depth}, {p.heads} heads of {p.head_dim}, layout {p.layout}"),
            ("CLIP", f"{pipe.clip.num_parameters() / 1e6:.2f}M parameters" if pipe.clip else "none")]


def last_row_with(path: Path, column: str) -> dict[str, str]:
    """The last metrics.csv row that has `column` filled in ({} when none)."""
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get(column)]
    return rows[-1] if rows else {}


def _run_of(model_dir: Path | None) -> tuple[dict, dict]:
    """The run config and last training-loss row of the run whose `model/` is `model_dir` ({} for
    what is not there, e.g. a model directory copied out of its run)."""
    if model_dir is None:
        return {}, {}
    run_dir = Path(model_dir).parent
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    return config, last_row_with(run_dir / "metrics.csv", "loss")


SPLITS = ("train", "val", "validation", "test")


def data_folders(*model_dirs: Path | None) -> list[Path]:
    """The image data the runs of these models trained on, and the dataset folder above a split
    (the notices of `my-data/` apply to `my-data/train`)."""
    folders: list[Path] = []
    for model_dir in model_dirs:
        data = _run_of(model_dir)[0].get("data")
        if data:
            data = Path(data)
            split = data.name.startswith(SPLITS)
            for folder in (data, data.parent) if split else (data,):
                if folder not in folders:
                    folders.append(folder)
    return folders


def assembly_card(pipe: DallePipeline, vae: Path, prior: Path, clip: Path | None,
                  notices: list[Path]) -> str:
    """README.md for a pipeline put together by `dalle assemble` from trained parts."""
    lines = ["# dalle pipeline", "",
             "A small DALL-E (Ramesh et al. 2021) put together by `dalle assemble` from the parts "
             "below.", "", "## Data", ""]
    for part, model_dir in (("dVAE", vae), ("prior", prior), ("CLIP", clip)):
        data = _run_of(model_dir)[0].get("data") if model_dir else None
        if data:
            lines.append(f"- The {part} trained on `{data}`.")
    lines += ["", ("Notices found with the data and copied here: "
                   + ", ".join(f"`{p.name}`" for p in notices) + "." if notices else
                   "No licence or attribution file was found beside the data: add the data's terms "
                   "before sharing this pipeline."), "",
              "## Parts", "", "| part | configuration | training |", "|---|---|---|"]
    model_dirs = {"tokenizer": None, "dVAE": vae, "prior": prior, "CLIP": clip}
    for part, text in describe_parts(pipe):
        config, row = _run_of(model_dirs[part])
        train = config.get("train", {})
        trained = (f"{train['steps']:,} steps of {train['batch_size']}, lr {train['lr']:g}"
                   + (f"; last loss {float(row['loss']):.4g}" if row.get("loss") else "")
                   if train else "-")
        lines.append(f"| {part} | {text} | {trained} |")
    sampling = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in pipe.sampling.to_dict().items()
                         if v is not None)
    lines += ["", f"Sampling defaults (`sampling.json`): {sampling}.", ""]
    # The parts' data is the user's: what licence it carries is not known here ("unknown" is the
    # Hub's word for that), and the card asks for the data's terms before sharing.
    return with_front_matter("\n".join(lines), {"license": "unknown"})


EXAMPLES_HEADING = "## Example prompts"


def example_prompts(directory: Path | None) -> list[str]:
    """The prompts the card in `directory` lists under `## Example prompts`, one `- ` item each
    (backticks optional): captions the pipeline draws well, which `dalle serve` offers in its
    prompt box. Empty without a card or without that section."""
    card = directory / CARD_NAME if directory is not None else None
    if card is None or not card.is_file():
        return []
    prompts, inside = [], False
    for line in card.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("#"):
            inside = line.strip().lower() == EXAMPLES_HEADING.lower()
        elif inside and line.startswith(("- ", "* ")):
            prompt = line[2:].strip().strip("`").strip()
            if prompt:
                prompts.append(prompt)
    return prompts
