"""Parallelism under `torchrun`, kept apart from the models (torchtitan style).

A run launched by torchrun (RANK / WORLD_SIZE / LOCAL_RANK set) joins a process group: NCCL on
GPUs, gloo on CPU. Models are wrapped in DDP, sharded with FSDP2 (`fully_shard`, one unit per
unit the model names with `parallel_units()`, then the root), given activation checkpointing
(the same units) or compiled (the same units again) here and nowhere else.
Sharded state is saved as full (unsharded) state dicts, so checkpoints do not depend on how a run
was parallelised.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.nn.parallel import DistributedDataParallel

from dalle.attention import keep_plans_out_of_compilation
from dalle.errors import DalleError


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


def parallel_units(model: nn.Module) -> list[nn.Module]:
    """The units `model` names for FSDP and activation checkpointing (its `parallel_units()`)."""
    units = getattr(model, "parallel_units", None)
    if units is None:
        raise DalleError(f"{type(model).__name__} names no units for FSDP or activation "
                         f"checkpointing: it has no parallel_units() method")
    return list(units())


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each of the model's units in the backward pass instead of storing activations.

    Each unit is replaced in its parent by a wrapper whose state-dict hooks keep parameter names
    unchanged, so checkpoints are unaffected.
    """
    units = {id(unit) for unit in parallel_units(model)}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in units:
                setattr(parent, name, checkpoint_wrapper(child))


def shard_model(model: nn.Module, ctx: DistributedContext) -> nn.Module:
    """Shard `model` in place over all processes with FSDP2: each unit, then the rest."""
    # Imported here, as `_sharded_state` is: FSDP's import costs every command 1.1 s of start-up.
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    for unit in parallel_units(model):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def compile_units(model: nn.Module) -> None:
    """`torch.compile` each of the model's units, in place, for training; `uncompile_units` undoes it.

    One unit at a time rather than the whole model (regional compilation, as torchtitan does):
    units of one kind share their compiled code, so compiling takes no longer at depth 8 than at
    depth 3 (about 70 s on one busy CPU thread for the tiny and the small prior alike, against
    96 s and 110 s for the whole model); FSDP's all-gathers, which run in each unit's hooks,
    stay outside the compiled code; and the model's input checks (data-dependent, so graph
    breaks) stay eager. The compiled code runs in training mode only: sampling, whose shapes
    change at every cached step, would recompile again and again. A unit's `forward` becomes an
    attribute of the unit, not a wrapper module, so parameter names and checkpoints are unchanged.
    """
    keep_plans_out_of_compilation()
    for unit in parallel_units(model):
        unit.forward = _in_training(unit, torch.compile(unit.forward))


def _in_training(unit: nn.Module, compiled: Callable[..., Any]) -> Callable[..., Any]:
    eager = unit.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        return (compiled if unit.training else eager)(*args, **kwargs)

    return forward


def uncompile_units(model: nn.Module) -> None:
    """Give each unit its class's own (eager) `forward` back."""
    for unit in parallel_units(model):
        unit.__dict__.pop("forward", None)


def is_sharded(model: nn.Module) -> bool:
    # Nothing is sharded in a process that never imported FSDP (`shard_model` imports it).
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


def _sharded_state(*, cpu_offload: bool = False) -> tuple[Any, Any]:
    """torch's state-dict functions for sharded models and the options that gather (or, for the
    setters, scatter) whole state dicts, `cpu_offload` putting them on CPU. Imported on first use:
    only FSDP needs them, and importing them costs every command 1.4 s of start-up (`python -X
    importtime -c "import dalle.cli"` on a 2-core EPYC)."""
    from torch.distributed.checkpoint import state_dict

    return state_dict, state_dict.StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)


def full_model_state(model: nn.Module) -> dict[str, Any]:
    """The whole model's state dict on CPU (a collective when sharded; only rank 0 gets it)."""
    if is_sharded(model):
        s, full = _sharded_state(cpu_offload=True)
        return s.get_model_state_dict(model, options=full)
    return model.state_dict()


def load_full_model_state(model: nn.Module, state: dict[str, Any]) -> None:
    if is_sharded(model):
        s, full = _sharded_state()
        s.set_model_state_dict(model, state, options=full)
    else:
        model.load_state_dict(state)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    if is_sharded(model):
        s, full = _sharded_state(cpu_offload=True)
        return s.get_optimizer_state_dict(model, optimizer, options=full)
    return optimizer.state_dict()


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                              state: dict[str, Any]) -> None:
    if is_sharded(model):
        s, full = _sharded_state()
        s.set_optimizer_state_dict(model, optimizer, state, options=full)
    else:
        optimizer.load_state_dict(state)


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
    """Leave the process group once every process is done with it (a collective)."""
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        gc.collect()
