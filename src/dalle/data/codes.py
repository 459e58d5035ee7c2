"""Pre-tokenised image codes: run the dVAE encoder once, train the prior from the result.

A codes directory holds
- `codes.bin`: the argmax codes, row-major (N, grid, grid), uint16 (int32 when K > 65,536),
  read back as a NumPy memory map so a set larger than memory costs nothing to open;
- `captions.jsonl`: one JSON string per line, caption i belongs to row i;
- `index.json`: written last, so its presence means the set is complete: count, grid, dtype,
  codebook size, and the dVAE config that made the codes.

Encoding goes in fixed batches in the source's order, so re-running on the same inputs writes the
same bytes. An interrupted run keeps `progress.json` (rows and bytes committed after each batch);
`resume=True` truncates both files to that point and continues, a fresh run starts over.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from dalle.dvae import DiscreteVAE
from dalle.errors import DalleError
from dalle.utils import atomic_write, ensure_writable_dir

CODES_NAME, CAPTIONS_NAME, INDEX_NAME, PROGRESS_NAME = (
    "codes.bin", "captions.jsonl", "index.json", "progress.json")


def _code_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.int32)


def _batches(items: Iterable[dict], size: int) -> Iterable[list[dict]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


@torch.no_grad()
def encode_dataset(vae: DiscreteVAE, items: Iterable[dict], out: str | Path, *,
                   batch_size: int = 64, resume: bool = False, total: int | None = None,
                   show_progress: bool = True) -> dict:
    """Encode every `{"image", "caption"}` item of `items` into the codes directory `out`.

    `items` must yield the same sequence on every call (a folder or shards in a fixed order);
    `resume` skips the rows an interrupted run already committed. Returns the index.
    """
    out = ensure_writable_dir(out)
    config = vae.config
    dtype = _code_dtype(config.vocab_size)
    progress_path = out / PROGRESS_NAME
    done, codes_bytes, captions_bytes = 0, 0, 0
    if resume and progress_path.is_file():
        progress = json.loads(progress_path.read_text())
        if progress["batch_size"] != batch_size or progress["vae"] != config.to_dict():
            raise DalleError(f"{out} was started with another batch size or dVAE; "
                             "run again without --resume to start over")
        done, codes_bytes, captions_bytes = (progress[k] for k in ("rows", "codes_bytes", "captions_bytes"))
    (out / INDEX_NAME).unlink(missing_ok=True)
    device = vae.device
    with open(out / CODES_NAME, "r+b" if done else "wb") as codes_file, \
         open(out / CAPTIONS_NAME, "r+b" if done else "wb") as captions_file:
        codes_file.truncate(codes_bytes)
        captions_file.truncate(captions_bytes)
        codes_file.seek(codes_bytes)
        captions_file.seek(captions_bytes)
        remaining = itertools.islice(items, done, None)
        bar = tqdm(total=total, initial=done, unit="img", disable=not show_progress,
                   desc="encoding")
        for batch in _batches(remaining, batch_size):
            images = torch.stack([item["image"] for item in batch]).to(device)
            codes = vae.encode(images).cpu().numpy().astype(dtype)
            codes_file.write(codes.tobytes())
            for item in batch:
                captions_file.write((json.dumps(item["caption"], ensure_ascii=False) + "\n").encode())
            for f in (codes_file, captions_file):
                f.flush()
                os.fsync(f.fileno())
            done += len(batch)
            codes_bytes, captions_bytes = codes_file.tell(), captions_file.tell()
            atomic_write(progress_path, json.dumps({
                "rows": done, "codes_bytes": codes_bytes, "captions_bytes": captions_bytes,
                "batch_size": batch_size, "vae": config.to_dict()}).encode())
            bar.update(len(batch))
        bar.close()
    if not done:
        raise DalleError("the data source yielded no images to encode")
    index = {"count": done, "grid": config.grid_size, "dtype": dtype.name,
             "vocab_size": config.vocab_size, "vae": config.to_dict()}
    atomic_write(out / INDEX_NAME, (json.dumps(index, indent=2) + "\n").encode())
    progress_path.unlink()
    return index


class CodesDataset(Dataset):
    """A finished codes directory as items `{"codes": (grid, grid) long, "caption", "index"}`."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        index_path = self.directory / INDEX_NAME
        if not index_path.is_file():
            hint = (" (an interrupted encode; finish it with `dalle encode-dataset ... --resume`)"
                    if (self.directory / PROGRESS_NAME).is_file() else "")
            raise FileNotFoundError(f"{self.directory} is not a finished codes directory: "
                                    f"no {INDEX_NAME}{hint}")
        self.index = json.loads(index_path.read_text())
        n, grid = self.index["count"], self.index["grid"]
        expected = n * grid * grid * np.dtype(self.index["dtype"]).itemsize
        size = (self.directory / CODES_NAME).stat().st_size
        if size != expected:
            raise DalleError(f"{self.directory / CODES_NAME} has {size} bytes, expected {expected} "
                             f"for {n} images of {grid}x{grid} codes")
        self.codes = np.memmap(self.directory / CODES_NAME, dtype=self.index["dtype"], mode="r",
                               shape=(n, grid, grid))
        with open(self.directory / CAPTIONS_NAME, encoding="utf-8") as f:
            self.captions = [json.loads(line) for line in f]
        if len(self.captions) != n:
            raise DalleError(f"{self.directory / CAPTIONS_NAME} has {len(self.captions)} captions "
                             f"for {n} code grids")

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict:
        codes = torch.from_numpy(self.codes[index].astype(np.int64))
        return {"codes": codes, "caption": self.captions[index], "index": index}
