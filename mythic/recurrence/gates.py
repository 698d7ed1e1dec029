"""Identity-biased gate and per-loop LayerScale, combined into the residual mix.

    g_t   = sigmoid(bias_t)                       bias init 0 → g = 0.5 (−3 gave a dead gate)
    ls_t  = ls_max · sigmoid(θ_t)                 init 0.05, ls_max 0.5 (0 < ls_max ≤ 1)
    m_t   = ls_t · g_t  ∈ (0, 1)                  the residual rule's mixing weight

Both are per loop, as a scalar or per channel, and smooth: every value inside the bounds has a nonzero
gradient, so a parameter driven to a bound can come back. A LayerScale initialised at its maximum
(θ = +∞) is a fixed "always on" scale, for probes that repeat a layer exactly. A loop index beyond the
trained maximum reuses the last trained loop's parameters, so any n_loops runs.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def loop_slot(t: int, n_slots: int) -> int:
    """Index of the per-loop parameter used at loop ``t``: loops past the trained maximum reuse the last."""
    return min(t, n_slots - 1)


class IdentityBiasedGate(nn.Module):
    """g_t = sigmoid(bias_t); the parameter is ``value`` (the biases)."""

    def __init__(self, n_loops: int, dim: int, per_channel: bool = False, bias_init: float = 0.0) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.full((n_loops, dim if per_channel else 1), float(bias_init)))

    def forward(self, t: int) -> torch.Tensor:
        return torch.sigmoid(self.value[loop_slot(t, self.value.shape[0])])


def scale_logit(value: float, max_value: float) -> float:
    """θ with ls_max · sigmoid(θ) = value (+∞ at the maximum)."""
    if not 0.0 < value <= max_value <= 1.0:
        raise ValueError(f"LayerScale needs 0 < init <= max <= 1, got init {value} and max {max_value}")
    ratio = value / max_value
    return math.inf if ratio == 1.0 else math.log(ratio / (1.0 - ratio))


class LayerScale(nn.Module):
    """ls_t = ls_max · sigmoid(θ_t); the parameter is ``logit`` (θ), so a checkpoint of the clamped form does
    not load into it silently."""

    def __init__(
        self, n_loops: int, dim: int, per_channel: bool = False, init: float = 0.05, max_value: float = 0.5
    ) -> None:
        super().__init__()
        self.max_value = max_value
        self.logit = nn.Parameter(torch.full((n_loops, dim if per_channel else 1), scale_logit(init, max_value)))

    @torch.no_grad()
    def set(self, value: float) -> None:
        """Every loop's ls to ``value`` (0 < value <= ls_max)."""
        self.logit.fill_(scale_logit(value, self.max_value))

    def forward(self, t: int) -> torch.Tensor:
        return self.max_value * torch.sigmoid(self.logit[loop_slot(t, self.logit.shape[0])])


def mix_weight(gate: IdentityBiasedGate, scale: LayerScale, t: int) -> torch.Tensor:
    """m_t = ls_t · g_t, inside (0, 1) because ls_max <= 1 and g < 1."""
    return scale(t) * gate(t)
