"""Data parallelism under `torchrun`, kept apart from the models (torchtitan style).

A run launched by torchrun (RANK / WORLD_SIZE / LOCAL_RANK set) joins a process group: NCCL on
GPUs, gloo on CPU. Models are wrapped in DDP here and nowhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: rank, world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: torch.device) -> DistributedContext:
    """Join the torchrun process group if launched by torchrun, else a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistributedContext(0, 1, 0, device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, device)


def wrap_data_parallel(model: nn.Module, ctx: DistributedContext) -> nn.Module:
    """DDP-wrap `model` when running in several processes; identity otherwise."""
    if not ctx.enabled:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def all_mean(value: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Mean of a scalar tensor over all processes (for logging)."""
    if not ctx.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / ctx.world_size


def gather_objects(obj: Any, ctx: DistributedContext) -> list[Any]:
    """Every process's `obj`, in rank order (a collective: all ranks must call it)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistributedContext) -> None:
    if ctx.enabled:
        dist.barrier()


def teardown_distributed(ctx: DistributedContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
