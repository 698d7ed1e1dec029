"""ACT halting (Graves 2016) for the loop driver, with the reference's defects fixed.

After pass t has produced h_{t+1}, every position that is still running gets

    p_t   = sigmoid(w · h_{t+1} + b)                              (float32)
    halts = (c + p_t ≥ τ)  or  (t = n_b − 1, the sequence's last loop)
    w_t   = 1 − c  if halts  else  p_t                            c ← c + w_t
    out   = Σ_t w_t · h_{t+1}

so every position's weights sum to exactly 1, halted early or out of loops (the reference's did not).
The ponder cost is Graves' ρ = N + R per position (N the loops it ran, R = 1 − c before its last step,
differentiable through the p_t), averaged. Init: w = 0, b = logit(1 / max_loops), so the output starts
as the uniform average of the first max_loops states (the reference halted every position after two).

Halting never ends the loop early (every rank of a distributed job makes the same collective calls):
``begin(t)`` returns the positions still running at pass t, recorded once per pass so that an
activation-checkpoint recomputation sees the same mask; the driver freezes the others (h ← h), and a
block may skip their expensive parts (OpenMythos skips their MoE FFN).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ACTHalting(nn.Module):
    """The halting head p = sigmoid(w · h + b); ``start`` opens the per-forward ``ACTRun``."""

    def __init__(self, dim: int, threshold: float = 0.99, max_loops: int = 16) -> None:
        super().__init__()
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"act threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.max_loops = max_loops
        self.proj = nn.Linear(dim, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.proj.weight.zero_()
            self.proj.bias.fill_(-math.log(max(self.max_loops - 1, 1)))

    def probability(self, h: torch.Tensor) -> torch.Tensor:
        """p (..., ) in float32 for states h (..., dim)."""
        return torch.sigmoid(self.proj(h).float().squeeze(-1))

    def start(self, e: torch.Tensor, n_loops: int | torch.Tensor) -> ACTRun:
        """A fresh halting state for states shaped like ``e`` (B, T, dim) and these loop counts."""
        return ACTRun(self, e, n_loops)


class ACTRun:
    """The halting state of one forward call; the loop driver calls ``begin``/``update``/``output``."""

    def __init__(self, head: ACTHalting, e: torch.Tensor, n_loops: int | torch.Tensor) -> None:
        self.head = head
        shape = e.shape[:-1]
        self.last = (torch.as_tensor(n_loops, device=e.device) - 1).view(-1, *([1] * (len(shape) - 1))).expand(shape)
        self.cumulative = torch.zeros(shape, device=e.device)
        self.halted = torch.zeros(shape, dtype=torch.bool, device=e.device)
        self.steps = torch.zeros(shape, device=e.device)
        self.remainder = torch.zeros(shape, device=e.device)
        self.out = torch.zeros(e.shape, dtype=torch.float32, device=e.device)
        self.masks: list[torch.Tensor] = []

    def begin(self, t: int) -> torch.Tensor:
        """The positions still running at pass t (recorded, so a recomputation sees the same mask)."""
        if t == len(self.masks):
            self.masks.append(~self.halted & (t <= self.last))
        return self.masks[t]

    def update(self, h: torch.Tensor, t: int) -> None:
        """Fold h_{t+1} into the weighted output; see the module docstring."""
        running = self.masks[t]
        p = self.head.probability(h)
        halts = running & ((self.cumulative + p >= self.head.threshold) | (t >= self.last))
        rest = 1.0 - self.cumulative
        weight = torch.where(halts, rest, torch.where(running, p, torch.zeros_like(p)))
        self.out = self.out + weight.unsqueeze(-1) * h.float()
        self.remainder = torch.where(halts, rest, self.remainder)
        self.cumulative = self.cumulative + weight
        self.steps = self.steps + running.float()
        self.halted = self.halted | halts

    def output(self, dtype: torch.dtype) -> torch.Tensor:
        return self.out.to(dtype)

    def ponder_cost(self) -> torch.Tensor:
        """Mean over positions of N + R (Graves); its gradient flows through R."""
        return (self.steps + self.remainder).mean()
