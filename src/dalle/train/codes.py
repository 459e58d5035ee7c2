"""Pre-tokenising a dataset for the prior: the dVAE's argmax codes of every image, stored once in
a codes directory (the format is `dalle.data.codes`).

The paper augments the images before encoding them for the transformer (appendix B.2): with
`views` > 1 each image is encoded as it is and then `views - 1` more times, randomly cropped, so a
small set gives the prior several code grids per picture instead of one to memorise.

Encoding goes in fixed batches in the source's order, so re-running on the same inputs writes the
same bytes. An interrupted run keeps `progress.json` (rows and bytes committed after each batch,
and the seconds spent up to it over every attempt); `resume=True` truncates both files to that
point and continues, a fresh run starts over.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dalle.data.augment import check_max_crop, random_crops, sample_rng
from dalle.data.codes import CAPTIONS_NAME, CODES_NAME, INDEX_NAME, PROGRESS_NAME, read_progress
from dalle.data.shards import ShardDataset
from dalle.data.sources import open_images
from dalle.errors import DalleError
from dalle.utils import atomic_write, ensure_writable_dir
from dalle.vae import DiscreteVAE


def _code_dtype(codebook_size: int) -> np.dtype:
    return np.dtype(np.uint16 if codebook_size <= 2**16 else np.int32)


def _batches(items: Iterable[dict], size: int) -> Iterable[list[dict]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


@torch.no_grad()
def encode_dataset(vae: DiscreteVAE, items: Iterable[dict], out: str | Path, *,
                   batch_size: int = 64, resume: bool = False, total: int | None = None,
                   show_progress: bool = True) -> dict:
    """Encode every `{"image", "caption"}` item of `items` (its `variants` where it has them)
    into the codes directory `out`.

    `items` must yield the same sequence on every call (a folder or shards in a fixed order);
    `resume` skips the rows an interrupted run already committed. Returns the index.
    """
    out = ensure_writable_dir(out)
    config = vae.config
    dtype = _code_dtype(config.codebook_size)
    progress_path = out / PROGRESS_NAME
    done, codes_bytes, captions_bytes = 0, 0, 0
    earlier: float | None = 0.0  # seconds of the attempts before this one (None: unknown)
    if resume and progress_path.is_file():
        progress = read_progress(progress_path)
        if progress["batch_size"] != batch_size or progress["vae"] != config.to_dict():
            raise DalleError(f"{out} was started with another batch size or dVAE; "
                             "run again without --resume to start over")
        done, codes_bytes, captions_bytes = (progress[k] for k in ("rows", "codes_bytes", "captions_bytes"))
        earlier = progress.get("seconds")
    start = time.perf_counter()
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
                text = item.get("variants", item["caption"])
                captions_file.write((json.dumps(text, ensure_ascii=False) + "\n").encode())
            for f in (codes_file, captions_file):
                f.flush()
                os.fsync(f.fileno())
            done += len(batch)
            codes_bytes, captions_bytes = codes_file.tell(), captions_file.tell()
            atomic_write(progress_path, json.dumps({
                "rows": done, "codes_bytes": codes_bytes, "captions_bytes": captions_bytes,
                "batch_size": batch_size, "vae": config.to_dict(),
                "seconds": None if earlier is None else earlier + time.perf_counter() - start,
            }).encode())
            bar.update(len(batch))
        bar.close()
    if not done:
        raise DalleError("the data source yielded no images to encode")
    index = {"count": done, "grid": config.grid_size, "dtype": dtype.name,
             "codebook_size": config.codebook_size, "vae": config.to_dict()}
    atomic_write(out / INDEX_NAME, (json.dumps(index, indent=2) + "\n").encode())
    progress_path.unlink()
    return index


def write_codes(codes: torch.Tensor, captions: list[str], vae: DiscreteVAE, out: str | Path) -> dict:
    """Write code grids (N, grid, grid) drawn rather than encoded (e.g. a prior's samples) as a
    codes directory, with `vae`'s config as the dVAE that decodes them. Returns the index."""
    if len(codes) != len(captions) or not len(codes):
        raise DalleError(f"{len(codes)} code grids for {len(captions)} captions")
    out = ensure_writable_dir(out)
    dtype = _code_dtype(vae.config.codebook_size)
    atomic_write(out / CODES_NAME, codes.cpu().numpy().astype(dtype).tobytes())
    atomic_write(out / CAPTIONS_NAME, "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in captions).encode())
    index = {"count": len(codes), "grid": vae.config.grid_size, "dtype": dtype.name,
             "codebook_size": vae.config.codebook_size, "vae": vae.config.to_dict()}
    atomic_write(out / INDEX_NAME, (json.dumps(index, indent=2) + "\n").encode())
    return index


def cropped_views(items: Callable[[], Iterable[dict]], views: int, max_crop: float,
                  seed: int = 0) -> Iterator[dict]:
    """Every item of `items()` as it is, then again `views - 1` times, each image a random crop
    (`random_crops`) drawn from the (seed, view, position) of the item: the same on every call.
    The arguments are checked here, before anything is read or written."""
    if views < 1:
        raise DalleError(f"views must be at least 1, got {views}")
    check_max_crop(max_crop)

    def every_view() -> Iterator[dict]:
        for view in range(views):
            for position, item in enumerate(items()):
                if view:
                    rng = sample_rng(seed, view, position)
                    item = {**item, "image": random_crops(item["image"][None], [rng], max_crop)[0]}
                yield item

    return every_view()


def encode_codes(vae: str | Path, data: str | Path, out: str | Path, *, batch_size: int = 256,
                 resume: bool = False, device: str = "auto", views: int = 1,
                 max_crop: float = 0.25) -> dict[str, Any]:
    """Encode the image-caption folder or shards `data` with the dVAE saved in `vae` into the
    codes directory `out` (see `dalle.data.codes`); `resume` continues an interrupted run.
    `views` is how many encodings of each image it writes: as it is, then `views - 1` random crops
    of up to `max_crop` of the side (`cropped_views`). `batch_size` is part of what makes the
    output reproducible. Returns the codes' index."""
    model = DiscreteVAE.from_pretrained(vae, device=device).eval()
    dataset = open_images(data, model.config.image_size)
    if isinstance(dataset, ShardDataset):  # a stream: its length is known only at the end
        return encode_dataset(model, cropped_views(lambda: dataset, views, max_crop), out,
                              batch_size=batch_size, resume=resume)
    items = cropped_views(lambda: (dataset[i] for i in range(len(dataset))), views, max_crop)
    return encode_dataset(model, items, out, batch_size=batch_size, resume=resume,
                          total=views * len(dataset))
