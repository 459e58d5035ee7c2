"""WebDataset tar shards (`shard-000000.tar`, ...): each sample an image (`png`, `jpg`, ...) and a
`txt` caption, the convention for sets too large for memory.

Packing streams an image-caption folder into shards under the folder's rules (sorted order, bad
pairs skipped and counted, original image bytes kept); a shard gets its final name only once
complete. Reading streams the shards through the `webdataset` library:

- Epoch e permutes the shards with (seed, e); of R processes with W loader workers each, slot
  rank * W + worker reads every (R * W)-th shard of it, so each shard goes to exactly one slot per
  epoch. A slot shuffles its samples in a buffer seeded by (seed, e, slot) and runs epoch after
  epoch, so no process runs out of batches before the others.
- A DataLoader takes batch k of a process from worker k mod W. A run resumed at step s rotates
  the worker roles by s and each worker skips the samples its role already gave, so it reads
  exactly the batches of an uninterrupted run (for the same R and W).
- Each sample's `index` is its position in the shard list, the same whatever the split or order.
- Broken samples (corrupt, empty or oversized image, a missing image or caption, a caption not
  UTF-8) and damaged tars (truncated, unreadable) are skipped and counted in `report`.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import random
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import webdataset
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info
from tqdm import tqdm
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from dalle.data.captions import caption_fields
from dalle.data.folder import IMAGE_SUFFIXES, ScanReport, SkippedPair, center_square, decode_pair, find_pairs
from dalle.errors import DalleError
from dalle.utils import ensure_writable_dir

log = logging.getLogger(__name__)

SHARD_PATTERN = "shard-%06d.tar"
IMAGE_KEYS = tuple(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)
DAMAGED_TAR = "damaged tar"
REASONS = ("kept", "empty image file", "unreadable image", "image over the decompression-bomb limit",
           "caption not UTF-8", "image without caption", "caption without image",
           "sample without image or caption", DAMAGED_TAR)
META_MEMBER = re.compile(r"__[^/]*__($|/)")  # what webdataset's tar reader skips
MAX_READERS = 64  # loader workers of a process counting in their own row (no lock, no races)


@dataclass
class PackReport(ScanReport):
    """A folder scan (kept pairs, skips by reason) and the shards written."""

    shards: list[Path] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{super().__str__()} in {len(self.shards)} shards"


def write_shards(samples: Iterable[tuple[str, bytes, str]], out_dir: str | Path,
                 max_samples: int = 1000) -> list[Path]:
    """Write (image extension, image bytes, caption) samples in order, `max_samples` per shard.

    Keys are the sample numbers (`000000042`) and member times are zero, so the same samples give
    byte-identical shards. A shard is written as `shard-*.tar.partial` and renamed when complete.
    """
    if max_samples < 1:
        raise DalleError(f"max_samples must be positive, got {max_samples}")
    out_dir = ensure_writable_dir(out_dir)
    if existing := sorted(out_dir.glob("shard-*.tar")):
        raise FileExistsError(f"{out_dir} already holds shards ({existing[0].name}, ...); "
                              f"pack into an empty folder")
    written: list[Path] = []

    def finish(partial: str) -> None:
        final = Path(partial.removesuffix(".partial"))
        os.replace(partial, final)
        written.append(final)

    writer = None
    try:
        for n, (extension, image, caption) in enumerate(samples):
            if writer is None:
                writer = webdataset.ShardWriter(str(out_dir / f"{SHARD_PATTERN}.partial"),
                                                maxcount=max_samples, post=finish, verbose=0,
                                                encoder=False, mtime=0)
            writer.write({"__key__": f"{n:09d}", extension: image, "txt": caption.encode("utf-8")})
    except BaseException:
        if writer is not None:
            writer.post = None  # the shard in progress is incomplete: it never gets a final name
            writer.close()
            Path(writer.fname).unlink(missing_ok=True)
        raise
    if writer is not None:
        writer.close()
    return written


def pack_shards(source: str | Path, out_dir: str | Path, max_samples: int = 1000,
                min_shards: int = 8, show_progress: bool = False) -> PackReport:
    """Pack an image folder with same-named `.txt` captions into shards in `out_dir`.

    The folder is streamed in sorted order (only its file list is held in memory). Pairs that
    ImageCaptionFolder would skip are skipped and counted; the others keep their original image
    bytes (`.jpeg` as `jpg`). A shard holds at most `max_samples` pairs, and a small folder is
    spread over `min_shards` shards where it has the pairs, since processes and loader workers
    read whole shards: one shard cannot feed eight processes under torchrun.
    """
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"data folder {source} does not exist")
    report = PackReport()
    pairs = list(find_pairs(source, report))
    per_shard = max(1, min(max_samples, len(pairs) // max(1, min_shards)))

    def readable_pairs() -> Iterator[tuple[str, bytes, str]]:
        for image_path, caption_path in tqdm(pairs, disable=not show_progress, desc="pack", unit=" pairs"):
            image = image_path.read_bytes()
            try:
                _, caption = decode_pair(image, caption_path.read_bytes())
            except SkippedPair as e:
                report.skipped[str(e)] += 1
                continue
            report.kept += 1
            extension = image_path.suffix.lower().lstrip(".")
            yield ("jpg" if extension == "jpeg" else extension), image, caption

    report.shards = write_shards(readable_pairs(), out_dir, per_shard)
    if not report.kept:
        raise DalleError(f"no readable image-caption pairs in {source} ({report})")
    if report.skipped:
        log.warning("%s: %s", source, report)
    return report


def list_shards(shards: str | Path | Sequence[str | Path]) -> list[Path]:
    """Shard paths from a list, a brace pattern (`shard-{000000..000009}.tar`) or a folder's `*.tar`."""
    if isinstance(shards, (str, Path)) and Path(shards).is_dir():
        paths = sorted(Path(shards).glob("*.tar"))
        if not paths:
            raise FileNotFoundError(f"no .tar shards in {shards}")
    elif isinstance(shards, (str, Path)):
        paths = [Path(p) for p in expand_urls(str(shards))]
    else:
        paths = [Path(p) for p in shards]
    if not paths:
        raise DalleError("no shards given")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"shard {missing[0]} does not exist{more}")
    return [p.absolute() for p in paths]


def count_samples(path: Path) -> tuple[int, bool]:
    """Samples in a shard (runs of members sharing a key), from the tar headers alone, and whether
    the shard is whole: it must end with tar's end-of-archive marker (two zero blocks). A shard cut
    short counts the samples before the cut; this never raises."""
    count, last, end = 0, None, -1
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                key, _ = base_plus_ext(member.name)
                if member.isreg() and key not in (None, last) and not META_MEMBER.match(member.name):
                    count, last = count + 1, key
            end = tar.offset
        with open(path, "rb") as f:
            f.seek(end)
            marker = f.read(2 * tarfile.BLOCKSIZE)
    except (tarfile.TarError, OSError, EOFError):
        return count, False
    return count, len(marker) == 2 * tarfile.BLOCKSIZE and not any(marker)


def epoch_shards(num_shards: int, seed: int, epoch: int, slot: int, num_slots: int) -> list[int]:
    """The shards that slot `slot` of `num_slots` reads in `epoch`, in reading order."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_shards, generator=generator)[slot::num_slots].tolist()


class ShardDataset(IterableDataset):
    """Image-caption pairs streamed from WebDataset shards, split over processes and workers.

    Items are ImageCaptionFolder's dicts: `image` (3, S, S) float in [0, 1], `caption` str and
    `index` int, the sample's position in the shard list (opening reads every shard's tar headers,
    not its data, to number the samples). The stream repeats forever (training needs no epoch
    end) unless `epochs` is given. The Trainer calls `set_position`; other users running several
    processes must call it too, or every process reads everything.
    """

    def __init__(self, shards: str | Path | Sequence[str | Path], image_size: int, *,
                 epochs: int | None = None, shuffle_buffer: int = 1000,
                 background: tuple[int, int, int] = (0, 0, 0)) -> None:
        if shuffle_buffer < 1:
            raise DalleError(f"shuffle_buffer must be positive, got {shuffle_buffer}")
        self.paths = list_shards(shards)
        scans = [count_samples(path) for path in self.paths]
        counts = [count for count, _ in scans]
        self.offsets = [0, *itertools.accumulate(counts)][:-1]
        self.num_samples = sum(counts)
        if not self.num_samples:
            raise DalleError(f"no samples in the {len(self.paths)} shards from {shards}")
        self.cut = {i for i, (_, whole) in enumerate(scans) if not whole}
        self.image_size, self.epochs, self.background = image_size, epochs, background
        self.shuffle_buffer = shuffle_buffer
        self.seed, self.step, self.local_batch, self.rank, self.world_size = 0, 0, 0, 0, 1
        # Shared with the loader workers, so that the counts cover what every worker read.
        self._counts = multiprocessing.RawArray("q", MAX_READERS * len(REASONS))
        self._failures = 0
        for shard in sorted(self.cut):  # counted once here, like other damaged data, and said once
            self._counts[REASONS.index(DAMAGED_TAR)] += 1
            log.warning("%s is cut short or damaged after %d samples: those are used, what followed "
                        "is lost (repack it)", self.paths[shard], counts[shard])

    def set_position(self, *, seed: int, step: int, global_batch: int, rank: int, world_size: int,
                     num_workers: int) -> None:
        """Read as process `rank` of `world_size` with `num_workers` loader workers, in batches of
        global_batch / world_size per process, starting at global batch `step`."""
        if global_batch % world_size:
            raise DalleError(f"batch size {global_batch} is not divisible by the {world_size} processes")
        self._check_slots(world_size * max(1, num_workers))
        self.seed, self.step, self.local_batch = seed, step, global_batch // world_size
        self.rank, self.world_size = rank, world_size

    @property
    def report(self) -> ScanReport:
        """What this process and its loader workers have read so far: pairs kept and skips by
        reason (a sample read in several epochs counts each time)."""
        kept, *skipped = (sum(self._counts[i::len(REASONS)]) for i in range(len(REASONS)))
        return ScanReport(kept, Counter({why: n for why, n in zip(REASONS[1:], skipped) if n}))

    def _check_slots(self, num_slots: int) -> None:
        if len(self.paths) < num_slots:
            raise DalleError(f"{len(self.paths)} shards cannot feed {num_slots} readers (processes x "
                             f"loader workers); pack smaller shards or use fewer workers")

    def _add(self, reason: str) -> int:
        info = get_worker_info()
        i = (info.id if info is not None else 0) % MAX_READERS * len(REASONS) + REASONS.index(reason)
        self._counts[i] += 1
        return self._counts[i]

    def _skip(self, reason: str, where: str) -> None:
        if self._add(reason) == 1:
            log.warning("%s: %s (skipped; further skips are only counted, see .report)", where, reason)
        # A stream where nothing can be read would otherwise spin forever without a batch.
        self._failures += 1
        if self._failures > self.num_samples:
            raise DalleError(f"none of the last {self._failures} samples could be read; are the shards "
                             f"broken? ({self.report})")

    def _tar_error(self, error: Exception) -> bool:
        self._skip(DAMAGED_TAR, " ".join(str(a) for a in error.args if isinstance(a, str)))
        return True  # webdataset: go on with the next member or shard

    def _read_shard(self, shard: int) -> Iterator[tuple[int, dict]]:
        # The damage of a shard found cut short when it was opened is counted already.
        handler = self._tar_error if shard not in self.cut else (lambda error: True)
        samples = webdataset.tarfile_samples([{"url": str(self.paths[shard])}], handler=handler)
        for position, sample in enumerate(samples):
            yield self.offsets[shard] + position, sample

    def _slot_samples(self, slot: int, num_slots: int) -> Iterator[tuple[int, dict]]:
        for epoch in itertools.count() if self.epochs is None else range(self.epochs):
            shards = epoch_shards(len(self.paths), self.seed, epoch, slot, num_slots)
            samples = (sample for shard in shards for sample in self._read_shard(shard))
            rng = random.Random(f"{self.seed}/{epoch}/{slot}")
            yield from webdataset.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(samples)

    def _decode(self, sample: dict) -> tuple[Image.Image, str]:
        image = next((sample[key] for key in IMAGE_KEYS if key in sample), None)
        if image is None:
            raise SkippedPair("caption without image" if "txt" in sample else
                              "sample without image or caption")
        if "txt" not in sample:
            raise SkippedPair("image without caption")
        return decode_pair(image, sample["txt"], self.background)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        num_workers = info.num_workers if info is not None else 1
        # Loader worker i plays role (i + step) mod W: batch `step` then comes first, from role
        # step mod W, and each role skips the batches it gave before `step`.
        role = ((info.id if info is not None else 0) + self.step) % num_workers
        skip = (self.step - role + num_workers - 1) // num_workers * self.local_batch
        slot, num_slots = self.rank * num_workers + role, self.world_size * num_workers
        self._check_slots(num_slots)
        for index, sample in self._slot_samples(slot, num_slots):
            try:
                image, caption = self._decode(sample)
            except SkippedPair as e:
                self._skip(str(e), f"{sample['__url__']} ({sample['__key__']})")
                continue
            self._add("kept")
            self._failures = 0
            if skip:
                skip -= 1
                continue
            pixels = torch.from_numpy(np.array(center_square(image, self.image_size), dtype=np.uint8))
            yield {"image": pixels.permute(2, 0, 1).float() / 255, **caption_fields(caption),
                   "index": index}
