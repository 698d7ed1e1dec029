"""How a run spreads the model over its processes (``train.parallel``), and whole-tensor state.

    ddp   every rank holds the whole model; accelerate wraps the objective in DistributedDataParallel
          and all-reduces the gradients (mean over ranks)
    fsdp  PyTorch's FSDP2 (``fully_shard``): every transformer layer (the model's ``_no_split_modules``)
          is one unit, everything else (embeddings, norms, head, the recurrence) the root unit. A rank
          stores 1/N of every parameter (dim 0) and of its gradient and optimizer state; a unit is
          all-gathered for its forward and backward (a looped layer once per loop) and gradients are
          reduce-scattered (mean over ranks) after every micro-batch, none kept unsharded across
          accumulation. The update equals DDP's up to summation order.

accelerate turns FSDP on only for GPU process groups, so ``fsdp`` calls ``fully_shard`` itself (the
engine of accelerate's FSDP2 path); the same code runs on a CPU/gloo group (how it is tested) and on
GPUs, and accelerate does the rest (launch, mixed precision, accumulation, clipping, reductions, trackers).

Checkpoints hold whole tensors whatever the layout: ``full_state`` gathers them onto rank 0's CPU and
``load_full_state`` puts them back (``torch.distributed.checkpoint.state_dict``, which also serves plain
and DDP models), so a run saves one format and resumes it exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from mythic.errors import MythicError

GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
GATHER_TRAINABLE = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
SCATTER = StateDictOptions(full_state_dict=True, strict=False)


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules that become FSDP units of their own: instances of ``model._no_split_modules``."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    units = [m for m in model.modules() if type(m).__name__ in names]
    if not units:
        raise MythicError(f"train.parallel fsdp: {type(model).__name__} names no layer class to shard")
    return units


def shard(model: nn.Module, device: torch.device) -> None:
    """FSDP2 in place over every process of the default group; shards land on ``device``."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Outside forward: the root unit's parameters (the recurrence among them) whole on every rank."""
    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def whole(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a (possibly) distributed one, e.g. a gradient norm."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def full_state(model: nn.Module, trainable: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Whole tensors of ``model``'s state dict, or of its ``trainable`` parameters only (the frozen
    base is then neither gathered nor copied), on rank 0's CPU; ``{}`` on other ranks. Every rank
    must call it (FSDP all-gathers). Tensors already whole on the CPU are the live ones, not
    copies: write them out before training on."""
    if trainable is None:
        return get_model_state_dict(model, options=GATHER)
    if not any(isinstance(m, FSDPModule) for m in model.modules()):
        # Whole already. torch's state-dict walk also visits the frozen base, which a 4-bit base with
        # quantised expert parametrizations cannot give (bitsandbytes' state-dict hooks).
        return {n: p.detach().cpu() for n, p in model.named_parameters() if n in trainable}
    state = get_model_state_dict(model, options=GATHER_TRAINABLE)
    return {k: v for k, v in state.items() if k in trainable}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, whole tensors, on rank 0 (every rank calls it;
    like ``full_state``, possibly the live tensors)."""
    return get_optimizer_state_dict(model, optimizer, options=GATHER)


def load_full_state(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    optimizer_state: dict[str, Any],
) -> None:
    """Copy whole tensors (every rank passes them all) into the model and optimizer, sharding as needed.
    The dicts are consumed: torch replaces their tensors by distributed ones in place."""
    set_model_state_dict(model, tensors, options=SCATTER)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=SCATTER)
    # That call first gives every parameter a zero state at step 1 (a dummy step with lr 0); one
    # that had no state in the checkpoint (no gradient yet) must stay without, or its first real
    # AdamW step would count from 2.
    for name, param in model.named_parameters():
        if name not in optimizer_state["state"]:
            optimizer.state.pop(param, None)
