"""Batches addressed by step, so that the data position is a pure function of the step.

Epoch e is a permutation of the dataset seeded by (seed, e); global batch s is slice s of the
concatenated epochs, and each of N processes takes its 1/N of it. Resuming at step s therefore
reads exactly the batches an uninterrupted run would, whatever the number of loader workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from dalle.errors import DalleError


class StepBatchSampler:
    """Yields this rank's index list for global batches start_step, start_step + 1, ... forever."""

    def __init__(self, dataset_size: int, global_batch: int, seed: int, rank: int = 0,
                 world_size: int = 1, start_step: int = 0) -> None:
        if global_batch % world_size:
            raise DalleError(f"batch size {global_batch} is not divisible by the "
                             f"{world_size} processes")
        if dataset_size < global_batch:
            raise DalleError(f"the dataset has {dataset_size} items, fewer than one batch "
                             f"of {global_batch}")
        self.size, self.batch, self.seed = dataset_size, global_batch, seed
        self.rank, self.world_size, self.start_step = rank, world_size, start_step
        self.batches_per_epoch = dataset_size // global_batch  # the last partial batch is dropped

    def epoch_permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=generator)

    def global_batch(self, step: int) -> list[int]:
        epoch, i = divmod(step, self.batches_per_epoch)
        return self.epoch_permutation(epoch)[i * self.batch : (i + 1) * self.batch].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        local = self.batch // self.world_size
        step, epoch, permutation = self.start_step, -1, torch.empty(0)
        while True:
            e, i = divmod(step, self.batches_per_epoch)
            if e != epoch:
                epoch, permutation = e, self.epoch_permutation(e)
            batch = permutation[i * self.batch : (i + 1) * self.batch]
            yield batch[self.rank * local : (self.rank + 1) * local].tolist()
            step += 1
