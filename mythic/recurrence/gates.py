"""Identity-biased gate and per-loop LayerScale, combined into the residual mix.

    g_t   = sigmoid(bias_t)                       bias init 0 → g = 0.5 (−3 gave a dead gate)
    ls_t  = clamp(scale_t, 0, ls_max)             init 0.05, ls_max 0.5
    m_t   = clamp(ls_t · g_t, 0, 1)               the residual rule's mixing weight

Both are per loop, as a scalar or per channel. For a loop index beyond the trained
maximum the last trained loop's parameters are reused (clamped index), so any n_loops
runs; extrapolated depth then repeats the deepest trained step.
"""

from __future__ import annotations

import torch
from torch import nn


def loop_slot(t: int, n_slots: int) -> int:
    """Index of the per-loop parameter used at loop ``t``: loops past the trained maximum reuse the last."""
    return min(t, n_slots - 1)


class PerLoopParameter(nn.Module):
    """A (n_loops, 1 | dim) parameter read by loop index with clamping."""

    def __init__(self, n_loops: int, dim: int, per_channel: bool, init: float) -> None:
        super().__init__()
        self.init = init
        self.value = nn.Parameter(torch.full((n_loops, dim if per_channel else 1), float(init)))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.value.fill_(self.init)

    def forward(self, t: int) -> torch.Tensor:
        return self.value[loop_slot(t, self.value.shape[0])]


class IdentityBiasedGate(PerLoopParameter):
    """g_t = sigmoid(bias_t)."""

    def __init__(self, n_loops: int, dim: int, per_channel: bool = False, bias_init: float = 0.0) -> None:
        super().__init__(n_loops, dim, per_channel, bias_init)

    def forward(self, t: int) -> torch.Tensor:
        return torch.sigmoid(super().forward(t))


class LayerScale(PerLoopParameter):
    """ls_t = clamp(scale_t, 0, ls_max)."""

    def __init__(
        self, n_loops: int, dim: int, per_channel: bool = False, init: float = 0.05, max_value: float = 0.5
    ) -> None:
        super().__init__(n_loops, dim, per_channel, init)
        self.max_value = max_value

    def forward(self, t: int) -> torch.Tensor:
        return super().forward(t).clamp(0.0, self.max_value)


def mix_weight(gate: IdentityBiasedGate, scale: LayerScale, t: int) -> torch.Tensor:
    """m_t = clamp(ls_t · g_t, 0, 1)."""
    return (scale(t) * gate(t)).clamp(0.0, 1.0)
