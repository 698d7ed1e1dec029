"""Optional loop-index embedding: tells the shared block which iteration it is in.

    x_t = h_t + γ ⊙ PE(t),   PE(t)_{2i} = sin(t / 10000^{2i/d}),  PE(t)_{2i+1} = cos(t / 10000^{2i/d})

γ is learned per channel and starts at 0, so the embedding is exactly off at init and the
T = 1 identity with the base holds bit for bit.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoid(t: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """PE(t) ∈ R^dim (float32)."""
    i = torch.arange(0, dim, 2, device=device, dtype=torch.float32)
    freq = torch.exp(-math.log(10000.0) * i / dim)
    pe = torch.zeros(dim, device=device)
    pe[0::2] = torch.sin(t * freq)
    pe[1::2] = torch.cos(t * freq[: dim // 2])
    return pe


class LoopEmbedding(nn.Module):
    """x = h + γ ⊙ PE(t), γ = 0 at init."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(dim))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.gamma.zero_()

    def forward(self, h: torch.Tensor, t: int) -> torch.Tensor:
        return h + (self.gamma * sinusoid(t, h.shape[-1], h.device)).to(h.dtype)
