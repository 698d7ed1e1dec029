"""Learning-rate schedule: linear warmup, then cosine / linear decay to ``min_lr_ratio`` or constant.

f(s) = (s + 1) / W                                       for s < W (warmup steps)
s₀   = W, or max(W, S − D) with ``decay_steps`` D        where the decay starts (before it f = 1:
                                                         warmup–stable–decay, Hägele et al. 2024)
u    = clamp((s − s₀) / max(S − s₀, 1), 0, 1)            progress of the decay, in [0, 1]
f(s) = r + (1 − r) · ½ (1 + cos(π u))                    cosine
f(s) = r + (1 − r) · (1 − u)                             linear
f(s) = 1                                                 constant
lr(s) = lr · f(s),  r = min_lr_ratio, S = total steps
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from mythic.train.recipe import Optim


def lr_factor(step: int, spec: Optim, total_steps: int) -> float:
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    if spec.schedule == "constant":
        return 1.0
    start = spec.warmup_steps if spec.decay_steps is None else max(spec.warmup_steps, total_steps - spec.decay_steps)
    u = min(max((step - start) / max(total_steps - start, 1), 0.0), 1.0)
    shape = 0.5 * (1.0 + math.cos(math.pi * u)) if spec.schedule == "cosine" else 1.0 - u
    return spec.min_lr_ratio + (1.0 - spec.min_lr_ratio) * shape


def make_scheduler(optimizer: torch.optim.Optimizer, spec: Optim, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_factor(step, spec, total_steps))
