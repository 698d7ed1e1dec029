"""Adaptive depth: every position stops looping when a criterion says its state is done.

``n_loops = AdaptiveDepth(max_loops, criterion, eps)`` (``--loops auto:MAX --exit CRITERION``)
runs at most ``max_loops`` passes of the block; after pass t has produced h_{t+1}, a position
that is still running exits when

    convergence   ‖h_{t+1} − h_t‖ / ‖h_t‖ < eps
    kl            KL(p_t ‖ p_{t+1}) < eps,  p_t = softmax(Head(Norm(h_t)))   (t ≥ 1; the "logit lens":
                  the final norm and the head applied to the loop state, the coda skipped; one head
                  pass per loop and position)
    act           the halting head's cumulative probability ≥ its threshold (ACT, ``halting.py``)

An exited position keeps its state (h ← h) for the remaining passes, so the block's output at it
is the state after its last computed pass. Keys and values (fill-forward): at every pass after
its exit the position presents, to itself and to every later token, the keys and values of its
last computed pass, never ones computed from its frozen state. In a cached forward this is what
the cache holds; an uncached adaptive forward runs on a throwaway cache so that it computes the
same thing. A pass at which no position of the batch is running is not computed: its cache slots
get the fill-forward entries and the loop ends (unless torch.distributed runs more than one
process: then every pass runs, masked, so every rank makes the same collective calls).

So a criterion that never fires computes exactly fixed-T = ``max_loops``, and decoding token by
token computes exactly what one forward over the whole sequence computes, whichever positions
exit where.

``steps`` (per position) counts the passes each position ran: the loops it used.
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

CRITERIA = ("convergence", "kl", "act")
DEFAULT_EXIT = "kl:0.0001"  # chosen on the hops valid split (docs/lab-notes.md)


@dataclass(frozen=True)
class AdaptiveDepth:
    """Loop until each position's criterion fires, at most ``max_loops`` passes."""

    max_loops: int | None
    criterion: str = "convergence"
    eps: float | None = 0.01

    def __post_init__(self) -> None:
        if self.max_loops is not None and self.max_loops < 1:
            raise MythicError(f"--loops auto:MAX needs MAX >= 1, got {self.max_loops}")
        if self.criterion not in CRITERIA:
            raise MythicError(f"unknown exit criterion {self.criterion!r}: use one of {', '.join(CRITERIA)}")
        if self.criterion == "act":
            if self.eps is not None:
                raise MythicError("--exit act takes no EPS (the halting head's threshold decides)")
        elif self.eps is None or not math.isfinite(self.eps) or self.eps <= 0:
            raise MythicError(f"--exit {self.criterion}:EPS needs a number EPS > 0, got {self.eps}")

    @property
    def label(self) -> str:
        """The row label, ``auto:MAX``."""
        return f"auto:{self.max_loops}"

    @property
    def rule(self) -> str:
        """The criterion as ``--exit`` spells it."""
        return self.criterion if self.eps is None else f"{self.criterion}:{self.eps:g}"

    def bounded(self, trained: int) -> AdaptiveDepth:
        """This depth with MAX set to ``trained`` (the model's trained maximum) when it was left open."""
        return self if self.max_loops is not None else dataclasses.replace(self, max_loops=trained)


def parse_depth(token: str, exit_rule: str) -> int | AdaptiveDepth:
    """One ``--loops`` entry: ``N`` (fixed), ``auto`` or ``auto:MAX`` (adaptive, with ``exit_rule``)."""
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
        max_loops = int(cap) if colon else None
    except ValueError:
        raise MythicError(f"--loops auto:MAX needs an integer MAX, got {token!r}") from None
    criterion, eps = parse_exit(exit_rule)
    return AdaptiveDepth(max_loops, criterion, eps)


def parse_exit(text: str) -> tuple[str, float | None]:
    """``convergence:EPS`` | ``kl:EPS`` | ``act`` → (criterion, eps); a one-line error otherwise."""
    name, _, value = text.strip().partition(":")
    if name not in CRITERIA:
        raise MythicError(f"--exit: unknown criterion {name!r}: use convergence:EPS, kl:EPS or act")
    if name == "act":
        if value:
            raise MythicError("--exit act takes no EPS")
        return name, None
    try:
        eps = float(value)
    except ValueError:
        raise MythicError(f"--exit {name}:EPS needs a number, got {value!r}") from None
    if not math.isfinite(eps) or eps <= 0:
        raise MythicError(f"--exit {name}:EPS needs EPS > 0, got {value}")
    return name, eps


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class ExitRun:
    """The exit state of one forward call; the loop driver calls ``begin`` / ``update`` / ``stop``.

    ``readout(h)`` gives next-token logits for states (the ``kl`` criterion); ``fill(t)`` writes
    the fill-forward cache entries of pass t when that pass is skipped; ``written`` holds the
    keys and values this forward wrote per (pass, block layer), for ``cache.FillForward``.
    """

    def __init__(
        self,
        spec: AdaptiveDepth,
        e: torch.Tensor,
        *,
        readout: Callable[[torch.Tensor], torch.Tensor] | None = None,
        fill: Callable[[int], None] | None = None,
        fires: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
    ) -> None:
        if spec.criterion == "kl" and readout is None:
            raise MythicError("--exit kl needs a model with an output head")
        self.spec = spec
        self.readout = readout
        self.fill = fill
        self.fires = fires or self._criterion
        shape = e.shape[:-1]
        self.running = torch.ones(shape, dtype=torch.bool, device=e.device)
        self.steps = torch.zeros(shape, dtype=torch.long, device=e.device)
        self.masks: list[torch.Tensor] = []
        self.log_p: torch.Tensor | None = None
        self.written: Written = {}
        self.may_stop = not distributed()

    def begin(self, t: int, running: torch.Tensor | None = None) -> torch.Tensor:
        """The positions that run pass t (also halting's ``running`` when given), recorded."""
        if t == len(self.masks):
            self.masks.append(self.running if running is None else self.running & running)
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
        self.running = ran & ~self.fires(h, h_next, t)

    def _criterion(self, h: torch.Tensor, h_next: torch.Tensor, t: int) -> torch.Tensor:
        if self.spec.criterion == "convergence":
            change = (h_next.float() - h.float()).norm(dim=-1) / h.float().norm(dim=-1).clamp(min=1e-12)
            return change < self.spec.eps
        if self.spec.criterion == "kl":
            log_p = F.log_softmax(self.readout(h_next).float(), dim=-1)
            previous, self.log_p = self.log_p, log_p
            if previous is None:
                return torch.zeros_like(self.running)
            kl = (previous.exp() * (previous - log_p)).sum(-1)
            return kl < self.spec.eps
        return torch.zeros_like(self.running)
