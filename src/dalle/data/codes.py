"""Pre-tokenised image codes: the dVAE encoder runs once (`dalle.train.codes`), the prior trains
from the result.

A codes directory holds
- `codes.bin`: the argmax codes, row-major (N, grid, grid), uint16 (int32 when K > 65,536),
  read back as a NumPy memory map so a set larger than memory costs nothing to open;
- `captions.jsonl`: one JSON string per line, the caption text of row i (all its variants,
  `dalle.data.captions`);
- `index.json`: written last, so its presence means the set is complete: count, grid, dtype,
  codebook size, and the dVAE config that made the codes.

While it is written, `progress.json` records the rows and bytes committed so far, and the seconds
spent encoding them (`encoded_seconds`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dalle.data.captions import first_caption
from dalle.errors import DalleError

CODES_NAME, CAPTIONS_NAME, INDEX_NAME, PROGRESS_NAME = (
    "codes.bin", "captions.jsonl", "index.json", "progress.json")


class CodesDataset(Dataset):
    """A finished codes directory as items `{"codes": (grid, grid) long, "caption", "variants",
    "index"}`."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        index_path = self.directory / INDEX_NAME
        if not index_path.is_file():
            hint = (" (an interrupted encode; finish it with `dalle encode-dataset ... --resume`)"
                    if (self.directory / PROGRESS_NAME).is_file() else "")
            raise FileNotFoundError(f"{self.directory} is not a finished codes directory: "
                                    f"no {INDEX_NAME}{hint}")
        self.index = json.loads(index_path.read_text())
        if "vocab_size" in self.index:  # written before the codebook size had its own name
            self.index["codebook_size"] = self.index.pop("vocab_size")
        n, grid = self.index["count"], self.index["grid"]
        expected = n * grid * grid * np.dtype(self.index["dtype"]).itemsize
        size = (self.directory / CODES_NAME).stat().st_size
        if size != expected:
            raise DalleError(f"{self.directory / CODES_NAME} has {size} bytes, expected {expected} "
                             f"for {n} images of {grid}x{grid} codes")
        self.codes = np.memmap(self.directory / CODES_NAME, dtype=self.index["dtype"], mode="r",
                               shape=(n, grid, grid))
        with open(self.directory / CAPTIONS_NAME, encoding="utf-8") as f:
            self.variants = [json.loads(line) for line in f]
        if len(self.variants) != n:
            raise DalleError(f"{self.directory / CAPTIONS_NAME} has {len(self.variants)} captions "
                             f"for {n} code grids")
        self.captions = [first_caption(text) for text in self.variants]

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict:
        codes = torch.from_numpy(self.codes[index].astype(np.int64))
        return {"codes": codes, "caption": self.captions[index], "variants": self.variants[index],
                "index": index}


def read_progress(progress: str | Path) -> dict:
    """An interrupted encode's `progress.json`, or one line naming it damaged."""
    try:
        record = json.loads(Path(progress).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict):
        raise DalleError(f"{progress} is damaged; encode again without --resume to start over")
    return record


def encoded_seconds(progress: str | Path) -> float | None:
    """The seconds an interrupted encode spent on the rows its `progress.json` commits, over every
    attempt; None for one written before progress recorded them."""
    return read_progress(progress).get("seconds")
