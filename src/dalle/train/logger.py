"""Metrics to a CSV file (always written, no dependency) and, on request, to TensorBoard or to
Weights & Biases, with sample grids.

W&B runs keep their files in RUN/wandb. Its mode is WANDB_MODE when set; otherwise online when
this machine has a W&B login (WANDB_API_KEY, or the netrc entry `wandb login` writes), and offline
without one, so that a run never waits on a server it cannot use; `wandb sync` uploads an offline
run later. An online start that cannot reach the server within WANDB_INIT_TIMEOUT seconds falls
back to offline with a warning. A resumed run continues the same W&B run: its id is kept in
RUN/wandb/run-id.
"""

from __future__ import annotations

import csv
import netrc
import os
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from dalle.errors import DalleError
from dalle.utils import atomic_write

LOG_FORMATS = ("csv", "tensorboard", "wandb")
WANDB_DIR = "wandb"  # RUN/wandb: W&B's own files, and the run id
WANDB_ID_FILE = "run-id"
WANDB_PROJECT = "dalle"  # unless WANDB_PROJECT says otherwise
# W&B waits 90 s by default for its server; with no network a training run should not sit that
# long before falling back to offline. 30 s is ample for a server that answers at all.
WANDB_INIT_TIMEOUT = 30.0


class MetricsLogger:
    """Appends one row of scalars per logged step; on resume, drops rows past the resumed step.

    `config` (the run's settings) goes to W&B as the run's config.
    """

    def __init__(self, out_dir: Path, log_format: str = "csv", resume_step: int | None = None,
                 config: dict[str, Any] | None = None) -> None:
        if log_format not in LOG_FORMATS:
            raise DalleError(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
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
        self.wandb = start_wandb(out_dir, resume_step is not None, config) if log_format == "wandb" else None

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
        if self.wandb is not None:
            self.wandb.log({"step": step, **metrics})

    def image(self, step: int, tag: str, image: Image.Image) -> None:
        """A sample grid to TensorBoard or W&B (the run folder's samples/ holds it as a PNG anyway)."""
        if self.tensorboard is not None:
            array = np.asarray(image.convert("RGB"))
            self.tensorboard.add_image(tag, array, step, dataformats="HWC")
        if self.wandb is not None:
            import wandb

            self.wandb.log({"step": step, tag: wandb.Image(image)})

    def update_config(self, config: dict[str, Any]) -> None:
        """Add settings to the W&B run's config (the run's config.json, once recorded)."""
        if self.wandb is not None:
            self.wandb.config.update(config, allow_val_change=True)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def has_wandb_login(base_url: str) -> bool:
    """Whether W&B would find credentials: WANDB_API_KEY, or a netrc entry for its server
    (where `wandb login` stores the key)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(base_url).hostname
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    try:
        return host is not None and netrc.netrc(str(path)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def start_wandb(out_dir: Path, resume: bool, config: dict[str, Any] | None) -> Any:
    """A W&B run writing into out_dir/wandb: a new one, or on resume the one whose id the run
    folder kept. Online or offline as the module's docstring says; W&B's own console lines are
    off (WANDB_SILENT=false brings them back) and one line says where the run is."""
    try:
        import wandb
    except ImportError:
        raise DalleError("log_format=wandb needs the wandb package: pip install 'dalle[wandb]'") from None
    folder = out_dir / WANDB_DIR
    folder.mkdir(parents=True, exist_ok=True)
    id_file = folder / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if resume and id_file.exists() else uuid.uuid4().hex[:12]
    atomic_write(id_file, f"{run_id}\n".encode())
    settings = wandb.Settings(init_timeout=WANDB_INIT_TIMEOUT,
                              silent=os.environ.get("WANDB_SILENT", "true").lower() in ("1", "true"))
    server = os.environ.get("WANDB_BASE_URL") or settings.base_url
    mode, why = os.environ.get("WANDB_MODE", ""), ""
    if not mode:
        mode, why = ("online", "") if has_wandb_login(server) else ("offline", " (no W&B login found)")
    start = dict(project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT), name=out_dir.resolve().name,
                 dir=str(out_dir), id=run_id, resume="allow", config=config or {}, settings=settings)
    try:
        run = wandb.init(mode=mode, **start)  # type: ignore[arg-type]
    except (wandb.errors.CommError, wandb.errors.AuthenticationError) as e:
        if mode != "online":
            raise
        reason = str(e).splitlines()[0]
        warnings.warn(f"W&B is unreachable ({reason}); this run logs offline", stacklevel=2)
        mode, why = "offline", " (W&B unreachable)"
        wandb.teardown()  # the failed start still holds the run id in W&B's service process
        run = wandb.init(mode=mode, **start)  # type: ignore[arg-type]
    # The training step is the x axis: a resumed run repeats the steps after its last
    # checkpoint (with the same values, resuming being exact), which W&B's own step would drop.
    run.define_metric("*", step_metric="step")
    if mode == "online" and run.url:
        where = run.url
    elif mode in ("offline", "dryrun"):
        where = f"offline{why} in {folder}; `wandb sync {folder}/offline-run-*` uploads it"
    else:
        where = f"in mode {mode}"
    print(f"wandb: run {run_id} {where}", file=sys.stderr)
    return run
