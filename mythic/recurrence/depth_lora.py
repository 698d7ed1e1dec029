"""Depth-LoRA: a per-loop low-rank delta on chosen Linear layers of the looped block.

    y = W x + (α / r) · B_t A_t x        A_t ∈ R^{r×in}, B_t ∈ R^{out×r}, B_t = 0 at init

A forward hook on the original module adds the delta, so the base module (``nn.Linear``, bitsandbytes
``Linear4bit``, a peft layer) is never replaced and keeps its parameter names. The hook reads the loop
index t from the model's ``LoopContext`` (``context.py``); outside the loop driver (t is None) it adds
nothing, which is how ``base_mode`` switches the LoRA off. Loops past the trained maximum reuse the last A, B.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mythic.recurrence.context import LoopContext
from mythic.recurrence.gates import loop_slot


class LoRADelta(nn.Module):
    """The per-loop (A_t, B_t) of one target Linear; ``hook`` is its forward hook."""

    def __init__(self, in_features: int, out_features: int, n_loops: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.scaling = alpha / rank
        self.A = nn.Parameter(torch.empty(n_loops, rank, in_features))
        self.B = nn.Parameter(torch.zeros(n_loops, out_features, rank))
        self.context: LoopContext | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for a in self.A:
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.B.zero_()

    def hook(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        t = self.context.loop if self.context is not None else None
        if t is None:
            return output
        i = loop_slot(t, self.A.shape[0])
        x = args[0]
        delta = (x.to(self.A.dtype) @ self.A[i].T) @ self.B[i].T
        return output + (self.scaling * delta).to(output.dtype)


class DepthLoRA(nn.Module):
    """All LoRADeltas of a block, keyed by the target's path inside the block ('0.self_attn.q_proj')."""

    def __init__(self, n_loops: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.n_loops, self.rank, self.alpha = n_loops, rank, alpha
        self.deltas = nn.ModuleDict()

    def attach(self, block: nn.ModuleList, targets: tuple[str, ...], context: LoopContext) -> list[str]:
        """Create (if missing) and hook a delta on every Linear in ``block`` whose name ends in a target."""
        attached = []
        for path, module in block.named_modules():
            if path.rsplit(".", 1)[-1] not in targets or not hasattr(module, "in_features"):
                continue
            key = path.replace(".", "__")
            if key not in self.deltas:
                self.deltas[key] = LoRADelta(
                    module.in_features, module.out_features, self.n_loops, self.rank, self.alpha
                )
            delta = self.deltas[key]
            delta.context = context
            module.register_forward_hook(delta.hook)
            attached.append(path)
        return attached
