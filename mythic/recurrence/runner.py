"""The runner: one code path that loops a block, for both model kinds (retrofit and OpenMythos).

A model kind hands the runner its block as a ``LoopedBlock`` (its adapter):

    block(x, view, token_mask)             one pass of the block layers over the whole batch
    block.subset(x, view, rows, index)     the pass for the batch rows ``rows`` (R,) and in them, when
                                           ``block.positions``, the tokens ``index`` (R, Q); else whole rows
    block.separable                        whether a pass may be computed for some rows apart

and the runner owns everything else, the same for both kinds:

    checks      n_loops ≥ 1; ``kv_share`` needs one loop count for the batch; ``--exit act`` needs a halting head
    depth       an ``AdaptiveDepth`` without MAX runs at most the trained maximum (``max_loops``)
    slots       pass t writes ``cache.at_loop(t)`` (``cache.LoopCache``: per-(loop, layer) slots), or, with
                ``kv_share``, the one shared slot of the passes t ≥ 1 (``SharedPass``); a pass whose slots
                hold other than the ``past`` tokens is refused
    exit        an ``ExitRun`` (adaptive depth, ``exit.py``) with its fill-forward views (``FillForward``)
    fixed       the positions an update rule keeps at their first pass (``rule.fixed``: the token rule's
                context) show their first pass's keys and values to every later pass through the same
                fill-forward view, on the forward's cache (the model makes a throwaway one when it has none),
                and passes t ≥ 1 are computed for the other tokens alone
    halting     the ACT head's ``ACTRun`` (``halting.py``)
    compaction  once few tokens still run, the pass for the running rows (and tokens) alone (``Compacted``),
                its output written back into the batch; with per-sequence depths and no cache (training),
                the pass past some sequence's depth for the rows still running (row sums in another order:
                gradients equal to float32 rounding)
    the loop    ``loop.run_loops`` with the update rule as this forward runs it (``rule.for_forward`` with the
                read positions, ``read_mask``), the loop embedding and the context's observer

``Recurrence`` holds the new parameters every kind has (update rule, loop embedding, Depth-LoRA, halting
head, depth head) and the model's context; ``Recurrence.run`` is the runner, the forward's ``Request`` an argument
(a retrofit's travels in the ``LoopContext``: ``context.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from mythic.errors import MythicError
from mythic.recurrence.cache import CacheView, Compacted, FillForward, LoopCache, SharedPass
from mythic.recurrence.context import LoopContext
from mythic.recurrence.depth_head import DepthHead
from mythic.recurrence.depth_lora import DepthLoRA
from mythic.recurrence.exit import AdaptiveDepth, ExitRun, gathered, read_mask, running_index, running_rows
from mythic.recurrence.halting import ACTHalting, ACTRun
from mythic.recurrence.loop import LoopCount, deepest, run_loops
from mythic.recurrence.loop_embedding import LoopEmbedding
from mythic.recurrence.rules import ResidualRule, UpdateRule


@dataclass(frozen=True)
class Request:
    """What one forward asks of the recurrence: the loop count (or adaptive depth), truncated backprop,
    per-loop checkpointing, KV sharing across loops, and where logits are read (``logits_to_keep``: where
    an adaptive exit decides)."""

    n_loops: LoopCount | AdaptiveDepth
    grad_loops: int | None = None
    checkpoint: bool = False
    kv_share: bool = False
    logits_to_keep: int | torch.Tensor = 0


class LoopedBlock(Protocol):
    """A model kind's block, as the runner calls it (see the module docstring)."""

    positions: bool
    separable: bool

    def __call__(self, x: torch.Tensor, view: CacheView | None, token_mask: torch.Tensor | None) -> torch.Tensor: ...

    def subset(
        self, x: torch.Tensor, view: Compacted | None, rows: torch.Tensor, index: torch.Tensor | None
    ) -> torch.Tensor: ...


class Recurrence(nn.Module):
    """The recurrence's parameters (update rule, loop embedding, Depth-LoRA, halting head, depth head), the
    trained loop count, the model's loop context, and the runner."""

    def __init__(
        self,
        rule: UpdateRule,
        max_loops: int,
        embedding: LoopEmbedding | None = None,
        lora: DepthLoRA | None = None,
        halting: ACTHalting | None = None,
        depth_head: DepthHead | None = None,
    ) -> None:
        super().__init__()
        self.rule = rule
        self.embedding = embedding
        self.lora = lora
        self.halting = halting
        self.depth_head = depth_head
        self.max_loops = max_loops
        self.context = LoopContext()

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """ρ(Ā) of the update rule's injection, when it has one (the ``concat`` rule has none), and the
        ``residual`` rule's gate and LayerScale per loop: what a run logs to see the recurrence wake up."""
        injection = getattr(self.rule, "injection", None)
        stats = {} if injection is None else {"rho_A": float(injection.get_A().max())}
        if isinstance(self.rule, ResidualRule):
            for t in range(1, self.max_loops):
                stats[f"gate/{t}"] = float(self.rule.gate(t).mean())
                stats[f"layerscale/{t}"] = float(self.rule.scale(t).mean())
        return stats

    def run(
        self,
        block: LoopedBlock,
        e: torch.Tensor,
        request: Request,
        cache: LoopCache | None,
        past: int,
        readout: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> tuple[torch.Tensor, ACTRun | None]:
        """Loop ``block`` from h₀ = ``e`` (B, q, D) as ``request`` asks; ``past``: tokens already in ``cache``.
        Returns the output state and the ACT run when the model halts (its ponder cost)."""
        n_loops, early_exit = request.n_loops, None
        if isinstance(n_loops, AdaptiveDepth):
            depth = n_loops.bounded(self.max_loops)
            if depth.criterion == "act" and self.halting is None:
                raise MythicError("--exit act needs a model with a halting head (OpenMythos with act: true)")
            if cache is None:
                raise MythicError("adaptive depth keeps its fill-forward keys in a cache: pass one")
            n_loops = depth.limit
        elif (n_loops < 1).any() if isinstance(n_loops, torch.Tensor) else n_loops < 1:
            raise MythicError(f"n_loops must be >= 1, got {n_loops}")
        if request.kv_share and isinstance(n_loops, torch.Tensor):
            raise MythicError("kv_share needs one loop count for the whole batch, not per-sequence depths")
        total = deepest(n_loops)
        shallowest = int(n_loops.min()) if isinstance(n_loops, torch.Tensor) else total
        rule = self.rule.for_forward(read_mask(request.logits_to_keep, e))
        fixed, written = rule.fixed, {}
        if fixed is not None and (request.kv_share or cache is None):
            raise MythicError(
                "a rule that keeps positions at their first pass takes no kv_share, and a cache for their keys "
                "(the model makes one when it has none)"
            )

        def view_at(t: int) -> CacheView | None:
            """The cache as pass t sees it: its own slots, the slot shared by the passes t ≥ 1 (``kv_share``),
            and an adaptive forward's fill-forward view on top."""
            if cache is None:
                return None
            view: CacheView = cache.at_loop(t)
            if request.kv_share and t >= 1:
                view = SharedPass(cache, store=t == total - 1)
            if early_exit is not None or fixed is not None:
                view = FillForward(view, t, frozen_at(t), early_exit.written if early_exit is not None else written)
            return view

        if isinstance(request.n_loops, AdaptiveDepth):
            fill = lambda t: view_at(t).fill()  # noqa: E731 - a skipped pass's fill-forward entries
            head = self.depth_head if self.depth_head is not None and self.depth_head.fitted else None
            early_exit = ExitRun(depth, e, readout=readout, fill=fill, read=request.logits_to_keep, depth_head=head)
        halting = self.halting.start(e, n_loops) if self.halting is not None else None

        def depth_running(t: int) -> torch.Tensor | None:
            """(B, q) the tokens of the sequences whose own depth is beyond pass t (per-sequence depths); None
            while every sequence runs."""
            if not isinstance(n_loops, torch.Tensor) or t < shallowest:
                return None
            return (n_loops.to(e.device) > t).unsqueeze(1).expand(e.shape[:2])

        def reached(t: int) -> torch.Tensor | None:
            """The tokens pass t may leave out for their sequence's depth: none while a cache slot needs every
            row's keys or a halting head every row's state."""
            running = None if cache is not None or halting is not None else depth_running(t)
            return None if running is None else ~running

        def frozen_at(t: int) -> torch.Tensor | None:
            """The tokens pass t leaves out: exited (adaptive depth) or past their sequence's depth, and those
            the rule keeps at their first pass."""
            frozen = early_exit.frozen(t) if early_exit is not None else reached(t)
            if fixed is None or t == 0:
                return frozen
            if early_exit is None and (running := depth_running(t)) is not None:
                frozen = ~running
            return fixed if frozen is None else fixed | frozen

        def step(x: torch.Tensor, t: int) -> torch.Tensor:
            if cache is not None and t > 0:
                cache.check_loop(min(t, 1) if request.kv_share else t, past)
            view = view_at(t)
            frozen = frozen_at(t)
            # an exit or the rule stops tokens; a depth, whole rows
            tokens = block.positions and (early_exit is not None or fixed is not None)
            with self.context.at_loop(t):
                if frozen is not None and block.separable and gathered(frozen, positions=tokens):
                    return compacted(block, x, view, frozen, tokens)
                return block(x, view, token_mask(t))

        def token_mask(t: int) -> torch.Tensor | None:
            if early_exit is not None:
                return early_exit.masks[t]
            if halting is not None:
                return halting.masks[t]
            if fixed is not None and t > 0:
                return ~frozen_at(t)
            return depth_running(t)

        h = run_loops(
            step,
            rule,
            e,
            n_loops,
            embedding=self.embedding,
            grad_loops=request.grad_loops,
            checkpoint=request.checkpoint and cache is None,
            halting=halting,
            early_exit=early_exit,
            observer=self.context.observer,
        )
        if early_exit is not None:
            self.context.record_loops(early_exit.steps[:, -1])
        return h, halting


def compacted(
    block: LoopedBlock, x: torch.Tensor, view: CacheView | None, frozen: torch.Tensor, tokens: bool
) -> torch.Tensor:
    """The pass computed for the running rows (and, with ``tokens``, their running tokens) alone, written
    back into ``x``; every other output is the block's input itself (the loop keeps their states)."""
    assert view is None or isinstance(view, FillForward), "a cached pass is compacted only in an adaptive forward"
    batch, length, width = x.shape
    rows = running_rows(frozen)
    index = running_index(~frozen[rows]) if tokens else None
    out = block.subset(x, None if view is None else Compacted(view, rows, index, batch, length), rows, index)
    if index is not None:
        out = x[rows].scatter(1, index.unsqueeze(-1).expand(-1, -1, width), out)
    return x.index_copy(0, rows, out)
