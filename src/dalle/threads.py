"""How many threads torch computes with on the CPU.

torch starts one thread per core. When another process keeps some of those cores busy, its
threads wait on each other at every parallel region and sampling slows down: up to 20 times
when the issue that asked for this was filed (docs/generate.md has the figures). So the commands
that sample (`generate`, `serve`) use only the cores that are free, measured from /proc/stat over
a moment, and say so; `--threads N` or OMP_NUM_THREADS chooses instead. The training commands keep torch's
count, since a run's arithmetic (and so its exact resume) depends on it, and only warn.
"""

from __future__ import annotations

import os
import time
import warnings

SAMPLE_SECONDS = 0.2  # how long the CPU's load is measured
# The --threads help of the commands that sample, and of those that train.
SAMPLING_HELP = ("CPU threads \\[default: the cores other processes leave free, measured at start: "
                 "on a busy CPU, one thread per core would wait on each other].")
TRAINING_HELP = ("CPU threads \\[default: torch's, one per core]; a busy CPU gets a warning, and a "
                 "run resumes exactly only with the thread count it started with.")


def available_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat (None elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float | None:
    """How many of the machine's cores other processes keep busy, measured over `seconds`
    while this one sleeps (None where /proc/stat is missing)."""
    before = _cpu_times()
    if before is None:
        return None
    time.sleep(seconds)
    after = _cpu_times()
    if after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)


def use_threads(threads: int | None, *, adapt: bool) -> int:
    """Set torch's thread count and return it: `threads` when given, else OMP_NUM_THREADS when
    set, else torch's count, less the cores other processes keep busy when `adapt` (a warning
    says so; without `adapt` the warning only suggests --threads)."""
    import torch  # here, so that the CLI can read the help texts above without loading torch

    if threads is not None:
        if threads < 1:
            from dalle.errors import DalleError
            raise DalleError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
        return threads
    if os.environ.get("OMP_NUM_THREADS") or "WORLD_SIZE" in os.environ:
        return torch.get_num_threads()  # chosen by the user, or by torchrun for each process
    busy = busy_cores()
    current = torch.get_num_threads()
    if busy is None or busy < 0.75:
        return current
    free = max(1, min(current, available_cores() - round(busy)))
    if free >= current:
        return current
    if adapt:
        torch.set_num_threads(free)
        warnings.warn(f"the CPU is busy: other processes keep about {busy:.1f} of its "
                      f"{os.cpu_count()} cores busy, so this uses {free} thread"
                      f"{'s' if free > 1 else ''} rather than {current} (--threads sets it)",
                      stacklevel=2)
        return free
    warnings.warn(f"the CPU is busy: other processes keep about {busy:.1f} of its "
                  f"{os.cpu_count()} cores busy, and {current} threads sharing them can run several "
                  f"times slower; --threads {free} avoids that (a run resumes exactly only with the "
                  "thread count it started with)", stacklevel=2)
    return current
