"""Stopping a run cleanly: SIGINT (Ctrl-C) and SIGTERM (a cluster pre-empting the job) ask the
training loop to stop at the next step boundary, where it saves a checkpoint and raises
`TrainingStopped`; a second signal stops at once."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(Exception):
    """A run stopped by a signal after saving its checkpoint; `exit_code` is 128 + the signal."""

    def __init__(self, signum: int, step: int, steps: int, checkpoint: Path) -> None:
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step} of {steps}; "
                         f"the checkpoint is saved in {checkpoint}: run the same command with "
                         "--resume (or the same `dalle recipe` command) to continue")


class StopRequest:
    """While entered (in the main thread), records the first SIGINT or SIGTERM in `signum`."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # asked twice: stop now, without a checkpoint
            self.__exit__()
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
