"""LTI injection (Parcae's zero-order-hold discretisation), stable by construction.

    Δ  = softplus(dt_bias)                       (per channel, > 0)
    Ā  = exp(−(ε + Δ · exp(A_log)))              (per channel, diagonal)
    B̄  = Δ · B                                   (B diagonal by default, or a full matrix)
    inj(h, e) = Ā ⊙ h + B̄ e

ρ(Ā) = max Ā (diagonal). The exponent is at least ε = 2⁻⁷ in float32 arithmetic too, so Ā ≤ exp(−2⁻⁷)
≈ 0.99222 < 1 in float32 and after rounding to bfloat16 (0.9921875), for *every* parameter value: tiny
or huge Δ, A_log = ±inf, and NaN (mapped to a zero term). The offset is smooth where a floor would pass
zero gradient. Ā is computed in float32. Init (Parcae): Ā ≈ 0.447 (ε + Δ·exp(A_log) ≈ 0.805), B = 1.
These parameters must get no weight decay (``mythic.train.model.param_groups`` exempts them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

EPS_EXPONENT = 2.0**-7
INIT_DECAY = math.log(1.0 / 0.447)


def stable_decay(a_log: torch.Tensor, dt_bias: torch.Tensor) -> torch.Tensor:
    """Ā = exp(−(ε + softplus(dt_bias)·exp(A_log))) in float32, with a NaN term mapped to 0."""
    delta = F.softplus(dt_bias.float())
    rate = torch.nan_to_num(delta * torch.exp(a_log.float()), nan=0.0, posinf=math.inf)
    return torch.exp(-(EPS_EXPONENT + rate))


class LTIInjection(nn.Module):
    """inj(h, e) = Ā ⊙ h + B̄ e with ρ(Ā) < 1 strictly; see the module docstring."""

    def __init__(self, dim: int, full_b: bool = False) -> None:
        super().__init__()
        self.full_b = full_b
        self.A_log = nn.Parameter(torch.zeros(dim))
        self.dt_bias = nn.Parameter(torch.zeros(dim))
        self.B = nn.Parameter(torch.empty(dim, dim) if full_b else torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.A_log.zero_()
            self.dt_bias.fill_(math.log(math.expm1(INIT_DECAY - EPS_EXPONENT)))
            self.B.copy_(torch.eye(self.B.shape[0]) if self.full_b else torch.ones_like(self.B))

    def get_A(self) -> torch.Tensor:  # noqa: N802 - the OpenMythos API name
        """The diagonal of Ā (float32); ``get_A().max() < 1`` is the stability check."""
        return stable_decay(self.A_log, self.dt_bias)

    def delta(self) -> torch.Tensor:
        return F.softplus(self.dt_bias.float())

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        a_bar = self.get_A().to(h.dtype)
        delta = self.delta().to(e.dtype)
        be = e @ self.B.to(e.dtype).T if self.full_b else e * self.B.to(e.dtype)
        return a_bar * h + delta * be
