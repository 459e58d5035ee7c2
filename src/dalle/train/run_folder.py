"""A run folder belongs to one run, trained by one process at a time, and is never replaced unasked.

A training run claims its folder with a lock file holding its process id and host. A second
process refuses to train into a folder whose lock holder is alive, and takes over the lock of a
process that died. A fresh run refuses a folder that already holds a run's files unless told to
resume it or to overwrite it. Temporary files that a killed process left behind (`atomic_write`'s
`.NAME.*.tmp`) are removed once the lock is held.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from dalle.errors import DalleError
from dalle.utils import ensure_writable_dir

LOCK_NAME = ".lock"
# What a run writes into its folder; a fresh run with overwrite=True removes these and only these.
RUN_FILES = ("checkpoint.pt", "metrics.csv", "config.json", "curves.png", "samples", "model",
             "best", "tensorboard", "wandb")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _holds(path: Path) -> bool:
    """Whether a run file is there: a file, or a folder with something in it."""
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


class RunFolder:
    """Claims `out` for one run; `release()` gives it back (the Trainer's `close` calls it)."""

    def __init__(self, out: str | Path, *, resume: bool, overwrite: bool) -> None:
        if resume and overwrite:
            raise DalleError("--resume continues a run and --overwrite starts it again; give one")
        self.out = ensure_writable_dir(out)
        self.lock = self.out / LOCK_NAME
        self._claim()
        try:
            self._remove_orphans()
            previous = [name for name in RUN_FILES if _holds(self.out / name)]
            if previous and not resume:
                if not overwrite:
                    raise DalleError(f"{self.out} already holds a run ({', '.join(previous)}); pass "
                                     "--resume to continue it or --overwrite to start it again")
                for name in previous:
                    path = self.out / name
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        except BaseException:
            self.release()
            raise

    def _claim(self) -> None:
        me = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.lock.read_text().split()
                pid, host = (int(holder[0]), holder[1]) if len(holder) == 2 and holder[0].isdigit() else (0, "")
                if host and host != socket.gethostname():
                    raise DalleError(f"{self.out} is locked by process {pid} on {host}; if that run "
                                     f"is gone, delete {self.lock}") from None
                if pid and pid != os.getpid() and _alive(pid):
                    raise DalleError(f"another process (pid {pid}) is training into {self.out}; "
                                     "wait for it, stop it, or choose another --out") from None
                self.lock.unlink(missing_ok=True)  # its process is gone (or it is this one)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me + "\n")
            return
        raise DalleError(f"could not lock {self.out}: another process keeps taking {self.lock}")

    def _remove_orphans(self) -> None:
        for folder in (self.out, self.out / "model", self.out / "best"):
            for orphan in folder.glob(".*.tmp") if folder.is_dir() else ():
                orphan.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        try:
            holder = self.lock.read_text().split()
        except FileNotFoundError:
            return
        if holder[:1] == [str(os.getpid())]:
            self.lock.unlink(missing_ok=True)
