"""Adaptive depth: every position stops looping when a criterion says its state is done.

``n_loops = AdaptiveDepth(limit, criterion, eps)`` (``--loops auto:MAX --exit CRITERION``) runs at most
``limit`` passes of the block; after pass t has produced h_{t+1}, a position still running exits when

    convergence   ‖h_{t+1} − h_t‖ / ‖h_t‖ < eps
    kl            KL(p_t ‖ p_{t+1}) < eps,  p_t = softmax(Head(Norm(h_t)))   (t ≥ 1; the "logit lens":
                  the coda skipped; one head pass per loop and position)
    act           the halting head's cumulative probability ≥ its threshold (ACT, ``halting.py``)
    depth         t + 1 ≥ T̂, the count the depth head read off the position's first state (``depth_head.py``)

Only the positions whose next-token logits the caller reads decide (``read``, the model's
``logits_to_keep``; 0, the default: all; ``generate``: the last one), the halting head's too with
``act``; every other position runs as long as any read position of its row runs (docs/lab-notes.md).

An exited position keeps its state (h ← h) and, at every later pass, presents to itself and to every
later token the keys and values of its last computed pass (fill-forward), never ones computed from its
frozen state; an uncached adaptive forward runs on a throwaway cache to compute the same. A pass at
which no position of the batch runs is not computed: its cache slots get the fill-forward entries and
the loop ends (unless torch.distributed runs several processes: then every pass runs, masked, so every
rank makes the same collective calls). Once the running tokens fill under ``COMPACT_BELOW`` of the
batch, a pass is computed for them alone (``gathered``: ``running_rows`` and ``running_index``; cache
rows through ``cache.Compacted``), which changes no token's result.

So a criterion that never fires computes exactly fixed T = ``limit``, and decoding token by token
computes exactly what one forward over the whole sequence computes when each position exits at the
same pass in both. ``steps`` (per position) counts the passes each position ran: the loops it used.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mythic.errors import MythicError
from mythic.recurrence.cache import Written

CRITERIA = ("convergence", "kl", "act", "depth")
UNTUNED = ("act", "depth")  # criteria without an EPS: a head decides
TOLD = "d"  # a --loops entry: each example's difficulty as its loop count (task files)
DEFAULT_EXIT = "kl:0.0001"  # chosen on the hops valid split (docs/lab-notes.md)


@dataclass(frozen=True)
class AdaptiveDepth:
    """Loop until each position's criterion fires, at most ``limit`` passes (None: the model's trained maximum)."""

    limit: int | None
    criterion: str = "convergence"
    eps: float | None = 0.01

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise MythicError(f"--loops auto:MAX needs MAX >= 1, got {self.limit}")
        if self.criterion not in CRITERIA:
            raise MythicError(f"unknown exit criterion {self.criterion!r}: use one of {', '.join(CRITERIA)}")
        if self.criterion in UNTUNED:
            if self.eps is not None:
                raise MythicError(f"--exit {self.criterion} takes no EPS (its head decides)")
        elif self.eps is None or not math.isfinite(self.eps) or self.eps <= 0:
            raise MythicError(f"--exit {self.criterion}:EPS needs a number EPS > 0, got {self.eps}")

    @property
    def label(self) -> str:
        """The row label, ``auto:MAX``."""
        return f"auto:{self.limit}"

    @property
    def rule(self) -> str:
        """The criterion as ``--exit`` spells it."""
        return self.criterion if self.eps is None else f"{self.criterion}:{self.eps:g}"

    def bounded(self, trained: int) -> AdaptiveDepth:
        """This depth with MAX set to ``trained`` (the model's trained maximum) when it was left open."""
        return self if self.limit is not None else dataclasses.replace(self, limit=trained)


def parse_depth(token: str, exit_rule: str) -> int | AdaptiveDepth | str:
    """One ``--loops`` entry: ``N`` (fixed), ``auto`` or ``auto:MAX`` (adaptive, with ``exit_rule``), or ``d``
    (``TOLD``: each example's difficulty, for task files)."""
    if token.strip() == TOLD:
        return TOLD
    name, colon, cap = token.strip().partition(":")
    if name != "auto":
        try:
            n = int(token)
        except ValueError:
            raise MythicError(f"--loops takes positive integers or auto[:MAX], got {token!r}") from None
        if n < 1:
            raise MythicError(f"--loops takes positive integers or auto[:MAX], got {token!r}")
        return n
    try:
        limit = int(cap) if colon else None
    except ValueError:
        raise MythicError(f"--loops auto:MAX needs an integer MAX, got {token!r}") from None
    criterion, eps = parse_exit(exit_rule)
    return AdaptiveDepth(limit, criterion, eps)


def parse_exit(text: str) -> tuple[str, float | None]:
    """``convergence:EPS`` | ``kl:EPS`` | ``act`` | ``depth`` → (criterion, eps); a one-line error otherwise."""
    name, _, value = text.strip().partition(":")
    if name not in CRITERIA:
        raise MythicError(f"--exit: unknown criterion {name!r}: use convergence:EPS, kl:EPS, act or depth")
    if name in UNTUNED and value:
        raise MythicError(f"--exit {name} takes no EPS (its head decides)")
    try:
        eps = float(value) if value else None
    except ValueError:
        raise MythicError(f"--exit {name}:EPS needs a number, got {value!r}") from None
    AdaptiveDepth(None, name, eps)  # its checks: EPS > 0 for convergence and kl, no EPS for act and depth
    return name, eps


class ExitRun:
    """The exit state of one forward call; the loop driver calls ``begin`` / ``update`` / ``stop``.

    ``readout(h)`` gives next-token logits for states (the ``kl`` criterion), ``depth_head(h)`` the loop count
    of first-pass states (the ``depth`` criterion); ``fill(t)`` writes the
    fill-forward cache entries of a skipped pass t; ``fires(h, h_next, t)`` replaces the criterion;
    ``written`` holds the keys and values this forward wrote per (pass, block layer), for
    ``cache.FillForward``; ``read`` is the model's ``logits_to_keep`` (see the module docstring).
    """

    def __init__(
        self,
        spec: AdaptiveDepth,
        e: torch.Tensor,
        *,
        readout: Callable[[torch.Tensor], torch.Tensor] | None = None,
        fill: Callable[[int], None] | None = None,
        fires: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
        read: int | torch.Tensor = 0,
        depth_head: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if spec.criterion == "kl" and readout is None:
            raise MythicError("--exit kl needs a model with an output head")
        if spec.criterion == "depth" and depth_head is None:
            raise MythicError("--exit depth needs a model with a fitted depth head (depth_head: true, then training)")
        self.spec = spec
        self.readout = readout
        self.depth_head = depth_head
        self.told: torch.Tensor | None = None  # the depth head's T̂ at the read positions
        self.fill = fill
        self.fires = fires or self._criterion
        shape = e.shape[:-1]
        self.running = torch.ones(shape, dtype=torch.bool, device=e.device)
        self.steps = torch.zeros(shape, dtype=torch.long, device=e.device)
        self.read, self.context = read_positions(read, e)
        self.masks: list[torch.Tensor] = []
        self.log_p: torch.Tensor | None = None
        self.written: Written = {}
        self.may_stop = not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)

    def begin(self, t: int, running: torch.Tensor | None = None) -> torch.Tensor:
        """The positions that run pass t (also halting's ``running`` when given, at read positions), recorded."""
        if t == len(self.masks):
            mask = self.running
            if running is not None:
                mask = mask & (running if self.context is None else running | self.context)
            self.masks.append(mask)
        return self.masks[t]

    def frozen(self, t: int) -> torch.Tensor | None:
        """Positions that have exited before pass t (None when every position runs it)."""
        mask = self.masks[t] if t < len(self.masks) else self.running
        return None if bool(mask.all()) else ~mask

    def done(self, t: int) -> bool:
        """True when no position runs pass t and the loop may end there."""
        return self.may_stop and not bool(self.masks[t].any())

    def stop(self, t: int, total: int) -> None:
        """Passes t … total − 1 are skipped: write their fill-forward cache entries."""
        if self.fill is not None:
            for skipped in range(t, total):
                self.fill(skipped)

    def update(self, h: torch.Tensor, h_next: torch.Tensor, t: int) -> None:
        """After pass t: count it for the positions that ran it, then let the criterion retire some."""
        ran = self.masks[t]
        self.steps = self.steps + ran.long()
        running = ran & ~self.fires(h, h_next, t)
        if self.context is not None:
            reading = running[:, self.read].any(-1, keepdim=True)
            running = torch.where(self.context, ran & reading, running)
        self.running = running

    def _criterion(self, h: torch.Tensor, h_next: torch.Tensor, t: int) -> torch.Tensor:
        fired = torch.zeros_like(self.running)
        if self.spec.criterion == "convergence":
            before, after = h[:, self.read].float(), h_next[:, self.read].float()
            fired[:, self.read] = (after - before).norm(dim=-1) / before.norm(dim=-1).clamp(min=1e-12) < self.spec.eps
        elif self.spec.criterion == "kl":
            log_p = F.log_softmax(self.readout(h_next[:, self.read]).float(), dim=-1)
            previous, self.log_p = self.log_p, log_p
            if previous is not None:
                fired[:, self.read] = (previous.exp() * (previous - log_p)).sum(-1) < self.spec.eps
        elif self.spec.criterion == "depth":
            if self.told is None:
                self.told = self.depth_head(h_next[:, self.read])
            fired[:, self.read] = self.told <= t + 1
        return fired


def read_mask(read: int | torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """(B, q) bool: the positions of ``e`` (B, q, D) whose next-token logits the forward reads, from its
    ``logits_to_keep``: the last k positions for an int k (0: all), a 1-D index of positions, or a (B, q)
    mask (training: the labelled positions)."""
    batch, length = e.shape[:2]
    if isinstance(read, torch.Tensor) and read.dim() == 2:
        if tuple(read.shape) != (batch, length):
            raise MythicError(f"logits_to_keep as a mask must be (batch, length) = {(batch, length)}")
        return read.to(device=e.device, dtype=torch.bool)
    mask = torch.zeros(length, dtype=torch.bool, device=e.device)
    if isinstance(read, torch.Tensor):
        mask[read.to(e.device)] = True
    elif read < 0:
        raise MythicError(f"logits_to_keep must be >= 0, got {read}")
    else:
        mask[length - read if 0 < read < length else 0 :] = True
    return mask.expand(batch, length)


def read_positions(read: int | torch.Tensor, e: torch.Tensor) -> tuple[slice | torch.Tensor, torch.Tensor | None]:
    """``logits_to_keep`` → (the read positions as an index, the context mask (q,) or None when all are read),
    the same positions in every row (``read_mask``)."""
    if isinstance(read, torch.Tensor) and read.dim() != 1:
        raise MythicError("adaptive depth reads positions given as a 1-D index (logits_to_keep), not a mask")
    mask = read_mask(read, e)[0]
    if bool(mask.all()):
        return slice(None), None
    return mask.nonzero().squeeze(1), ~mask


COMPACT_BELOW = 0.75  # compute a pass for the running tokens only when they fill less than this share of it


def gathered(frozen: torch.Tensor, positions: bool) -> bool:
    """Whether a pass with these exited tokens (B, q) is worth computing for the running ones alone:
    the rows that still run, each as wide as the widest row's running tokens (``positions``) or
    whole, hold under COMPACT_BELOW of the batch's tokens."""
    counts = (~frozen).sum(1)
    width = counts.max() if positions else frozen.shape[1]
    return bool((counts > 0).sum() * width < COMPACT_BELOW * frozen.numel())


def running_rows(frozen: torch.Tensor) -> torch.Tensor:
    """(R,) the batch rows with a running token."""
    return (~frozen).any(1).nonzero().squeeze(1)


def running_index(running: torch.Tensor) -> torch.Tensor:
    """(B, R) positions of each row's running tokens, R = the most any row has; a row with fewer
    repeats its first running token, a row with none points at its token 0 (exited)."""
    width = int(running.sum(1).max())
    order = torch.argsort((~running).to(torch.int8), dim=1, stable=True)[:, :width]
    first = order[:, :1]
    valid = torch.arange(width, device=running.device).unsqueeze(0) < running.sum(1, keepdim=True)
    return torch.where(valid, order, first)
