"""mythic.train.parallel: FSDP2 shards on a 2-process gloo group give the single-process gradients
(with a looped layer), whole-tensor state gathers and scatters back exactly, and resuming keeps a
parameter without optimizer state without it."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.tensor import DTensor

from mythic.errors import MythicError
from mythic.train import parallel


class Layer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.tanh(self.up(x)))


class Looped(nn.Module):
    """embed → a frozen layer → a trainable layer looped 3 times with a per-loop gate → head."""

    _no_split_modules = ["Layer"]

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.embed, self.head = nn.Linear(dim, dim), nn.Linear(dim, 3)
        self.frozen, self.looped = Layer(dim), Layer(dim)
        self.gate = nn.Parameter(torch.tensor([0.5, 0.25, 0.125]))
        self.unused = nn.Parameter(torch.ones(5))  # never gets a gradient: no optimizer state
        self.frozen.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.frozen(self.embed(x))
        for t in range(3):
            h = h + self.gate[t] * self.looped(h)
        return self.head(h)


def make(seed: int = 0) -> tuple[Looped, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = Looped()
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, rows: slice, steps: int) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(4, 6, generator=g)
        model(x[rows]).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()


def worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model, optimizer = make()
        parallel.shard(model, torch.device("cpu"))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
        train_steps(model, optimizer, slice(2 * rank, 2 * rank + 2), steps=3)
        held = {n: p.to_local().numel() for n, p in model.named_parameters() if isinstance(p, DTensor)}
        with parallel.gathered(model):
            gate = model.gate.detach().clone()
        tensors = parallel.full_state(model)
        optimizer_state = parallel.full_optimizer_state(model, optimizer)
        result = {"tensors": tensors, "optimizer": optimizer_state, "held": held, "gate": gate}
        # Scatter the gathered state (as a checkpoint file holds it) into a fresh sharded copy.
        checkpoint = [copy.deepcopy((tensors, optimizer_state)) if rank == 0 else None]
        dist.broadcast_object_list(checkpoint, src=0)
        fresh, _ = make(seed=7)
        parallel.shard(fresh, torch.device("cpu"))
        fresh_optimizer = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=0.05)
        parallel.load_full_state(fresh, checkpoint[0][0], fresh_optimizer, checkpoint[0][1])
        pairs = zip(model.parameters(), fresh.parameters(), strict=True)
        result["same"] = all(torch.equal(a.to_local(), b.to_local()) for a, b in pairs)
        result["stateless"] = [
            n for n, p in fresh.named_parameters() if p.requires_grad and p not in fresh_optimizer.state
        ]
        torch.save(result, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("fsdp")
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=2, join=True)
    return torch.load(out / "rank0.pt", weights_only=False), torch.load(out / "rank1.pt", weights_only=False)


def test_two_shards_train_like_one_process(sharded_run: tuple[dict, dict]) -> None:
    rank0, rank1 = sharded_run
    model, optimizer = make()
    train_steps(model, optimizer, slice(0, 4), steps=3)
    reference = model.state_dict()
    assert rank0["tensors"].keys() == reference.keys() and rank1["tensors"] == {}  # gathered on rank 0 only
    assert max((rank0["tensors"][k] - v).abs().max().item() for k, v in reference.items()) < 1e-6
    assert not torch.equal(reference["looped.up.weight"], make()[0].state_dict()["looped.up.weight"])
    # Each rank holds its dim-0 half of every parameter (the odd row on rank 0).
    for name, param in model.named_parameters():
        assert rank0["held"][name] + rank1["held"][name] == param.numel(), name
        assert rank0["held"][name] == -(-param.shape[0] // 2) * param[0].numel(), name
    # ``gathered`` shows the root unit's parameters whole on every rank.
    assert torch.equal(rank0["gate"], rank1["gate"])
    assert torch.allclose(rank0["gate"], model.gate.detach(), atol=1e-6)


def test_gathered_state_scatters_back_exactly(sharded_run: tuple[dict, dict]) -> None:
    rank0, rank1 = sharded_run
    assert rank0["same"] and rank1["same"]
    assert set(rank0["optimizer"]["state"]) == {"embed.weight", "embed.bias", "head.weight", "head.bias", "gate"} | {
        f"looped.{a}.{b}" for a in ("up", "down") for b in ("weight", "bias")
    }
    # A parameter that never had a gradient stays without optimizer state after loading.
    assert rank0["stateless"] == rank1["stateless"] == ["unused"]


def test_single_process_state_round_trip_keeps_stateless_parameters_stateless() -> None:
    model, optimizer = make()
    train_steps(model, optimizer, slice(0, 4), steps=2)
    tensors = parallel.full_state(model, {"gate", "head.weight"})
    assert set(tensors) == {"gate", "head.weight"} and torch.equal(tensors["gate"], model.gate.detach())
    tensors, state = copy.deepcopy((parallel.full_state(model), parallel.full_optimizer_state(model, optimizer)))
    fresh, fresh_optimizer = make(seed=3)
    parallel.load_full_state(fresh, tensors, fresh_optimizer, state)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters(), strict=True))
    assert fresh.unused not in fresh_optimizer.state
    train_steps(model, optimizer, slice(0, 4), steps=1)
    train_steps(fresh, fresh_optimizer, slice(0, 4), steps=1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters(), strict=True))


def test_shard_units_are_the_named_layer_classes() -> None:
    model = Looped()
    assert parallel.shard_units(model) == [model.frozen, model.looped]
    with pytest.raises(MythicError, match="names no layer class to shard"):
        parallel.shard_units(nn.Linear(2, 2))
