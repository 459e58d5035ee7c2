"""Training checkpoints: everything needed to resume exactly, written atomically.

A checkpoint is one `torch.save` file of tensors and plain Python values (model, EMA, optimizer,
scheduler, every rank's RNG states, step), so it loads with `weights_only=True`.
"""

from __future__ import annotations

import errno
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from dalle.errors import DalleError
from dalle.utils import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    """This process's torch RNG states (training code draws all randomness from torch)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: a kill at any moment leaves the previous file intact,
    and a full disk is named as such (with the previous checkpoint still there)."""

    def write(tmp: Path) -> None:
        # Through a Python file object, a failed write raises OSError with its errno; given a path,
        # torch's own writer reports a full disk as "unexpected pos".
        with open(tmp, "wb") as f:
            torch.save(state, f)

    try:
        atomic_write(path, write)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        full = OSError(f"no space left on device for the checkpoint {path}; the previous "
                       "checkpoint is intact: free some space, then resume")
        full.errno = errno.ENOSPC
        raise full from None


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects; `mmap` leaves its tensors on disk
    until they are read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        # Not torch's message: it suggests weights_only=False, which would run what the file holds.
        raise DalleError(f"checkpoint {path} cannot be read: it is damaged, or holds objects other "
                         "than tensors and plain values (dalle writes none); nothing in it ran") from None
    except Exception as e:  # torch raises several types for damaged files
        raise DalleError(f"checkpoint {path} cannot be read ({type(e).__name__}): "
                         f"{str(e).splitlines()[0] if str(e) else 'damaged file'}") from None


def trained_seconds(path: str | Path) -> float | None:
    """The seconds a checkpoint's run had trained when it was written, over every attempt; None
    for a checkpoint written before runs recorded it."""
    # Mapped, the tensors stay on disk; a file that is not torch's zip format (damaged) is read
    # whole, which names the damage rather than asking for another torch.save option.
    return load_checkpoint(path, mmap=zipfile.is_zipfile(path)).get("trained_seconds")
