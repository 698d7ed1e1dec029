"""The depth head: how many loops a position needs, read off its state after the first pass.

    T̂ = 1 + argmax_c (W · (h₁ − μ) / σ + b)_c       c = 0 … max_loops − 1

A linear classifier of the first pass's state, standardised. It is fitted after training, the looped model
frozen (``fit``: L-BFGS on cross-entropy + λ‖W‖² against the loop counts training ran, each example's
difficulty under a T = d curriculum; ``train/depth.py`` collects the states), so it never shapes the loop.
It answers only with counts it was fitted on: a question deeper than any trained one gets a trained count.
The adaptive forward's ``depth`` exit criterion (``exit.py``) stops each read position after T̂ passes.
"""

from __future__ import annotations

import torch
from torch import nn

PENALTY = 1e-3  # λ: the weight penalty of the fit


class DepthHead(nn.Module):
    """W, b, μ, σ of the module docstring; zero until fitted (``fitted`` says whether it was)."""

    def __init__(self, dim: int, max_loops: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(max_loops, dim), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(max_loops), requires_grad=False)
        self.mean = nn.Parameter(torch.zeros(dim), requires_grad=False)
        self.std = nn.Parameter(torch.ones(dim), requires_grad=False)

    @property
    def fitted(self) -> bool:
        return bool(self.weight.any() or self.bias.any())

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return ((h.float() - self.mean) / self.std) @ self.weight.T + self.bias

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(…,) long: T̂ for first-pass states (…, D)."""
        return self.logits(h).argmax(-1) + 1

    @torch.no_grad()
    def fit(self, states: torch.Tensor, loops: torch.Tensor, max_iter: int = 300) -> float:
        """Fit on first-pass states (N, D) and their loop counts (N,) in 1 … max_loops; returns the share of
        the fitted examples it names right."""
        self.mean.copy_(states.float().mean(0))
        self.std.copy_(states.float().std(0) + 1e-6)
        x, y = (states.float() - self.mean) / self.std, loops.long() - 1
        linear = nn.Linear(x.shape[1], self.weight.shape[0])
        opt = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

        def objective() -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(linear(x), y) + PENALTY * linear.weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(objective)
        self.weight.copy_(linear.weight)
        self.bias.copy_(linear.bias)
        return float((self(states) == loops).float().mean())
