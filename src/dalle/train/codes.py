"""Pre-tokenising a dataset for the prior: the dVAE's argmax codes of every image, stored once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dalle.data.codes import encode_dataset
from dalle.data.shards import ShardDataset
from dalle.data.sources import open_images
from dalle.dvae import DiscreteVAE
from dalle.utils import resolve_device


def encode_codes(vae: str | Path, data: str | Path, out: str | Path, *, batch_size: int = 256,
                 resume: bool = False, device: str = "auto") -> dict[str, Any]:
    """Encode the image-caption folder or shards `data` with the dVAE saved in `vae` into the
    codes directory `out` (see `dalle.data.codes`); `resume` continues an interrupted run.
    `batch_size` is part of what makes the output reproducible. Returns the codes' index."""
    model = DiscreteVAE.from_pretrained(vae, device=resolve_device(device)).eval()
    dataset = open_images(data, model.config.image_size)
    if isinstance(dataset, ShardDataset):  # a stream: its length is known only at the end
        return encode_dataset(model, dataset, out, batch_size=batch_size, resume=resume)
    items = (dataset[i] for i in range(len(dataset)))
    return encode_dataset(model, items, out, batch_size=batch_size, resume=resume, total=len(dataset))
