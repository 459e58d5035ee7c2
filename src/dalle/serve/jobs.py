"""A bounded queue of generation jobs that one worker thread runs one at a time.

A job is stopped from inside the pipeline's progress callback, which is called after every image
position sampled: past the time limit it raises `JobStopped`, and so it does when the server shuts
down. Finished jobs keep their PNGs until `keep_finished` newer ones have finished.

While a job samples, the pipeline's preview callback hands over each batch's finished rows of
codes; the dVAE decodes them (the rows not drawn yet grey) into the job's `previews`, which the
page shows until the reranked images replace them.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from dalle.errors import DalleError
from dalle.utils import to_pil

log = logging.getLogger(__name__)

# Decoding a preview stops sampling while it runs. Measured on the bundled emoji pipeline with 2
# CPU threads (medians): a preview (dVAE decode and PNGs) takes 37 ms for 4 candidates and 154 ms
# for 16, while the prior samples a row of 8 codes in 0.27 s and 0.43 s, so a preview after every
# row would add 14% and 36% to the job. A preview therefore waits PREVIEW_COST_RATIO times as long
# as the last one took (previews take at most 1/5 of the time), and at least PREVIEW_INTERVAL_S:
# the page polls every 0.3 s, so more frequent previews would never be seen.
PREVIEW_COST_RATIO = 4.0
PREVIEW_INTERVAL_S = 0.25
PREVIEW_GREY = 0.85  # the rows not sampled yet


class QueueFull(Exception):
    """The queue has no room for another job."""


class JobStopped(Exception):
    """Raised from the progress callback to stop a job; `status` is the state it ends in."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(eq=False)
class Job:
    prompt: str
    options: dict
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: str = "queued"
    done: int = 0
    total: int = 0
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    pngs: list[bytes] = field(default_factory=list)
    scores: list[float] | None = None
    # While running: (version, PNG) per candidate previewed so far, replaced whole at each update
    # (so a reader never sees half of one); the version changes whenever its picture does.
    previews: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def progress(self) -> float:
        return self.done / self.total if self.total else float(self.status == "done")

    @property
    def elapsed_s(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.monotonic()) - self.started


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@torch.no_grad()
def partial_images(vae, rows: torch.Tensor) -> torch.Tensor:
    """Images (n, 3, H, W) of code grids of which only the first rows (n, r, G) are sampled.

    The decoder's convolutions reach across rows, so the pixels of the last sampled rows depend
    on the codes below them: these repeat the last sampled row, the closest guess of the three
    tried on 16 emoji samples (the last sampled row's pixels differ from the finished image's by
    0.032 on average, against 0.036 for code 0 and 0.054 for the most common code). The pixels
    below the sampled rows are then painted grey.
    """
    n, r, grid = rows.shape
    codes = torch.cat([rows, rows[:, -1:].expand(n, grid - r, grid)], dim=1)
    images = vae.decode(codes)
    images[:, :, r * images.shape[-2] // grid :] = PREVIEW_GREY
    return images


class Previewer:
    """The pipeline's `preview` callback for one job: decodes finished rows into `job.previews`,
    no more often than PREVIEW_COST_RATIO and PREVIEW_INTERVAL_S allow, except that a finished
    batch is always shown whole."""

    def __init__(self, vae, job: Job) -> None:
        self.vae, self.job = vae, job
        self.version, self.next_at = 0, 0.0

    def __call__(self, first: int, rows: torch.Tensor) -> None:
        complete = rows.shape[1] == rows.shape[2]
        if not complete and time.monotonic() < self.next_at:
            return
        started = time.monotonic()
        pngs = [png_bytes(image) for image in to_pil(partial_images(self.vae, rows))]
        self.version += 1
        # The batches before this one are complete, so their previews stay as they are.
        self.job.previews = self.job.previews[:first] + [(self.version, png) for png in pngs]
        spent = time.monotonic() - started
        self.next_at = time.monotonic() + max(PREVIEW_INTERVAL_S, PREVIEW_COST_RATIO * spent)


class JobQueue:
    """Runs `pipeline(prompt, **options)` for submitted jobs in order, one at a time."""

    def __init__(self, pipeline, *, max_queue: int, time_limit_s: float, keep_finished: int = 64) -> None:
        self.pipeline, self.max_queue, self.time_limit_s = pipeline, max_queue, time_limit_s
        self.keep_finished = keep_finished
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._running: Job | None = None
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="dalle-serve-worker", daemon=True)
        self._worker.start()

    def submit(self, prompt: str, options: dict, warnings: list[str] | None = None) -> Job:
        """Queue a job, or raise QueueFull when `max_queue` jobs already wait behind a running one."""
        with self._lock:
            if self._closed:
                raise QueueFull("the server is shutting down")
            pending = len(self._waiting) + (self._running is not None)
            if pending > self.max_queue:
                raise QueueFull(f"busy: the queue is full ({self.max_queue} waiting behind the running "
                                f"job); try again shortly")
            job = Job(prompt, options, warnings=warnings or [])
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._lock.notify()
            return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        """1 for the next job to run, 2 for the one after, ...; None unless queued."""
        with self._lock:
            return self._waiting.index(job) + 1 if job in self._waiting else None

    def counts(self) -> tuple[int, bool]:
        """(jobs waiting, whether one is running)."""
        with self._lock:
            return len(self._waiting), self._running is not None

    def close(self) -> None:
        """Stop the running job, fail the waiting ones and end the worker."""
        with self._lock:
            self._closed = True
            while self._waiting:
                self._finish(self._waiting.popleft(), "failed", error="the server shut down")
            self._lock.notify_all()
        self._worker.join(timeout=10)

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = self._running = self._waiting.popleft()
                job.status, job.started = "running", time.monotonic()
            self._run(job)

    def _run(self, job: Job) -> None:
        started = job.started if job.started is not None else time.monotonic()

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total
            if self._closed:
                raise JobStopped("failed", "the server shut down")
            if time.monotonic() - started > self.time_limit_s:
                raise JobStopped("timed_out", f"stopped at the {self.time_limit_s:g} s time limit "
                                              f"with {done / total:.0%} sampled; ask for fewer "
                                              f"candidates or images")

        try:
            generation = self.pipeline(job.prompt, progress=progress,
                                       preview=Previewer(self.pipeline.vae, job), **job.options)
            pngs = [png_bytes(image) for image in generation.pil()]
            scores = None if generation.scores is None else [float(s) for s in generation.scores]
        except JobStopped as e:
            status, error = e.status, str(e)
        except DalleError as e:  # the pipeline's one-line messages about its input
            status, error = "failed", str(e)
        except Exception as e:  # a bug: logged with its traceback
            log.exception("job %s failed", job.id)
            status, error = "failed", f"internal error: {type(e).__name__}: {e}"
        else:
            with self._lock:
                self._running = None
                self._finish(job, "done", pngs=pngs, scores=scores)
            return
        with self._lock:
            self._running = None
            self._finish(job, status, error)

    def _finish(self, job: Job, status: str, error: str | None = None, pngs: Sequence[bytes] = (),
                scores: list[float] | None = None) -> None:
        """Record the outcome (status last, so a reader that sees "done" sees the images)."""
        job.error, job.pngs, job.scores, job.previews = error, list(pngs), scores, []
        job.finished = time.monotonic()
        job.status = status
        finished = [j for j in self._jobs.values() if j.finished is not None]
        for old in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[old.id]
