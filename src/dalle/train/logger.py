"""Metrics to a CSV file (always readable, no dependency) or to TensorBoard, with sample grids."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from dalle.errors import DalleError


class MetricsLogger:
    """Appends one row of scalars per logged step; on resume, drops rows past the resumed step."""

    def __init__(self, out_dir: Path, log_format: str = "csv", resume_step: int | None = None) -> None:
        self.path = out_dir / "metrics.csv"
        self.fields: list[str] | None = None
        if resume_step is not None and self.path.exists():
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.fields = None if reader.fieldnames is None else list(reader.fieldnames)
                rows = [r for r in reader if int(r["step"]) <= resume_step]
            self._rewrite(rows)
        elif self.path.exists():
            self.path.unlink()
        self.tensorboard = None
        if log_format == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise DalleError("log_format=tensorboard needs the tensorboard package: "
                                   "pip install 'dalle[tensorboard]'") from None
            self.tensorboard = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step)

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields or ["step"])
            writer.writeheader()
            writer.writerows(rows)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: f"{v:.6g}" for k, v in metrics.items()}}
        if self.fields is None:
            self.fields = list(row)
            self._rewrite([])
        elif new := [k for k in row if k not in self.fields]:
            # A metric seen for the first time (e.g. validation) widens the table.
            with self.path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            self.fields += new
            self._rewrite(rows)
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(row)
        if self.tensorboard is not None:
            for k, v in metrics.items():
                self.tensorboard.add_scalar(k, v, step)

    def image(self, step: int, tag: str, image: Image.Image) -> None:
        """A sample grid to TensorBoard (the run folder's samples/ holds it as a PNG anyway)."""
        if self.tensorboard is not None:
            array = np.asarray(image.convert("RGB"))
            self.tensorboard.add_image(tag, array, step, dataformats="HWC")

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
