"""THE loop driver: the runner (``runner.py``) runs every model's block through ``run_loops``.

    h₀ = e
    for t in 0 … T−1:
        x_t     = rule.enter(h_t, e, t)   (+ γ ⊙ PE(t) when a loop embedding is given)
        b_t     = step(x_t, t)            (the block; the caller routes cache slot and LoRA by t)
        h_{t+1} = rule.exit(h_t, b_t, e, t)
    return h_T

``n_loops`` is an int, or a LongTensor (B,) of per-sequence depths (Parcae): the batch runs max(n)
loops and a sequence whose depth is reached keeps its state (h ← where(t < n_b, h_new, h); before the
shallowest depth every sequence runs and no mask is applied).

Truncated backprop (``grad_loops = k``, Parcae's rule): every sequence b backpropagates through its own
last min(n_b, k) loops, t ∈ [n_b − k, n_b). Loops before min_b(n_b − k) run under ``torch.no_grad`` for
the whole batch; in later loops a sequence still in its no-gradient part has its new state detached, so
it gets the same gradient as alone. ``checkpoint=True`` wraps each graph-building loop in non-reentrant
activation checkpointing (never while writing a KV cache: the recomputation would write it twice).

Masks: ACT halting (``halting.begin(t)``) and adaptive exit (``early_exit.begin``) say which positions run
pass t (ANDed); the others are frozen (h ← where(running, h_new, h)). ACT returns its weighted output
instead of h_T; adaptive exit stops the loop when no position runs (``early_exit.stop``: ``exit.py``).

``observer(t, h_t)``, when given, sees every new state h_1 … h_T; it must not change them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from mythic.recurrence.loop_embedding import LoopEmbedding
from mythic.recurrence.rules import UpdateRule

if TYPE_CHECKING:
    from mythic.recurrence.exit import ExitRun
    from mythic.recurrence.halting import ACTRun

LoopCount = int | torch.Tensor


def deepest(n_loops: LoopCount) -> int:
    """The number of passes a batch runs: its deepest sequence's loop count."""
    return int(n_loops.max()) if isinstance(n_loops, torch.Tensor) else int(n_loops)


def run_loops(
    step: Callable[[torch.Tensor, int], torch.Tensor],
    rule: UpdateRule,
    e: torch.Tensor,
    n_loops: LoopCount,
    *,
    embedding: LoopEmbedding | None = None,
    grad_loops: int | None = None,
    checkpoint: bool = False,
    halting: ACTRun | None = None,
    early_exit: ExitRun | None = None,
    observer: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run the block ``n_loops`` times from h₀ = e; see the module docstring."""
    total = deepest(n_loops)
    per_sequence = isinstance(n_loops, torch.Tensor)
    shallowest = int(n_loops.min()) if per_sequence else total  # before it every sequence runs
    row_first = None  # per sequence: the first loop with gradient, n_b − k
    if grad_loops is None:
        first_grad = last_first = 0
    elif per_sequence:
        row_first = (n_loops.to(e.device) - grad_loops).clamp(min=0).view(-1, *([1] * (e.dim() - 1)))
        first_grad, last_first = int(row_first.min()), int(row_first.max())
    else:
        first_grad = last_first = max(total - grad_loops, 0)

    def one_loop(h: torch.Tensor, e: torch.Tensor, t: int) -> torch.Tensor:
        x = rule.enter(h, e, t)
        if embedding is not None:
            x = embedding(x, t)
        return rule.exit(h, step(x, t), e, t)

    h = e
    for t in range(total):
        running = halting.begin(t) if halting is not None else None
        if early_exit is not None:
            running = early_exit.begin(t, running)
            if early_exit.done(t):
                early_exit.stop(t, total)
                break
        with torch.no_grad() if t < first_grad else contextlib.nullcontext():
            if checkpoint and torch.is_grad_enabled():
                h_next = activation_checkpoint(one_loop, h, e, t, use_reentrant=False)
            else:
                h_next = one_loop(h, e, t)
            if running is not None:
                h_next = torch.where(running.unsqueeze(-1), h_next, h)
            if halting is not None:
                halting.update(h_next, t)
            if early_exit is not None:
                early_exit.update(h, h_next, t)
        if row_first is not None and first_grad <= t < last_first and torch.is_grad_enabled():
            h_next = torch.where(row_first > t, h_next.detach(), h_next)
        if t >= shallowest:
            active = (n_loops.to(h.device) > t).view(-1, *([1] * (h.dim() - 1)))
            h_next = torch.where(active, h_next, h)
        h = h_next
        if observer is not None:
            observer(t + 1, h.detach())
    return h if halting is None else halting.output(h.dtype)
