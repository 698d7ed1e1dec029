"""Update rules: how the loop state h moves from one pass of the block to the next.

Every rule splits a loop step into ``enter`` (the block's input x_t) and ``exit`` (the next state); the
driver in ``loop.py`` calls b_t = Block(x_t) between them. h₀ = e, the prelude output.

``residual`` (default; the rule that worked on the MoE retrofits)
    x_t = h_t
    h₁ = b₀ exactly (first pass is the base block, so a fresh wrapper at T = 1 is the base;
         the gate and LayerScale of loop index 0 are therefore never read when max_loops > 1)
    h_{t+1} = h_t + m_t ⊙ ((b_t − h_t) + s · (Ā ⊙ h_t + B̄ e)),   m_t = ls_t · g_t ∈ (0, 1)

``parcae`` (Prairie et al.; used by the from-scratch OpenMythos model)
    x_t = Ā ⊙ h_t + B̄ e,   h_{t+1} = b_t
    with ``state_norm``: x_t = Ā ⊙ RMSNorm(h_t) + B̄ e, so the share of e in the block's input
    cannot fade as ‖h_t‖ grows with the loop count.

``concat`` (retrofitted recurrence / Huginn)
    x_t = W [h_t ; e],   h_{t+1} = b_t,   W ∈ R^{d×2d} initialised to [0 | I]: x₀ = e, T = 1 is the base.

``token`` (the loop through the vocabulary; the block is the whole stack, so h_t is the last layer's output)
    x₀ = e,   h_{t+1} = b_t
    x_t = e + r ⊙ g · (softmax(Head(Norm(h_t))) · E · s − e)     t ≥ 1,  g = σ(a), a learned (init 2: g = 0.88)
    at the looped positions r each pass is fed its own prediction back as a soft token (E: the input
    embedding, s its scale). r is each row's last run of read positions (those whose next-token logits the
    forward reads: ``logits_to_keep``): the prompt's last token and the answer after it, which generation
    loops one by one. A read position before that run (an intermediate answer inside the prompt, whose
    logits training reads) is context to generation, so it is read at its first pass (one on the token
    right before the prompt's last would join the run). Every other position keeps its first pass
    (``fixed``): its state stays h₁, and to later passes it shows the keys and values of its first pass
    (the runner's fill-forward), so pass t ≥ 2 is computed for the looped positions alone. A model that
    has learned one step takes one more with each pass.

A rule meets each forward through ``for_forward(read)``, (B, q) bool of the read positions; the
``token`` rule is the one that uses them. ``fixed`` (B, q) or None: the positions that run the first
pass only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mythic.errors import MythicError
from mythic.recurrence.gates import IdentityBiasedGate, LayerScale, mix_weight
from mythic.recurrence.injection import LTIInjection


class UpdateRule(nn.Module):
    """x_t = enter(h_t, e, t); b_t = Block(x_t); h_{t+1} = exit(h_t, b_t, e, t). ``loops_context``: whether
    the positions that are not read loop too (all but the token rule)."""

    loops_context = True

    def enter(self, h: torch.Tensor, e: torch.Tensor, t: int) -> torch.Tensor:
        return h

    def exit(self, h: torch.Tensor, b: torch.Tensor, e: torch.Tensor, t: int) -> torch.Tensor:
        return b

    def for_forward(self, read: torch.Tensor) -> UpdateRule:
        """The rule as one forward runs it; ``read`` (B, q): the positions whose logits the forward reads."""
        return self

    @property
    def fixed(self) -> torch.Tensor | None:
        """(B, q) the positions that run the first pass only (None: every position loops)."""
        return None


class ResidualRule(UpdateRule):
    """Gated residual step toward the block output, with a small LTI injection inside the gate."""

    def __init__(
        self,
        dim: int,
        n_loops: int,
        inject_scale: float = 0.01,
        gate_bias_init: float = 0.0,
        gate_per_channel: bool = False,
        layerscale_init: float = 0.05,
        layerscale_max: float = 0.5,
        layerscale_per_channel: bool = False,
        full_b: bool = False,
    ) -> None:
        super().__init__()
        self.inject_scale = inject_scale
        self.gate = IdentityBiasedGate(n_loops, dim, gate_per_channel, gate_bias_init)
        self.scale = LayerScale(n_loops, dim, layerscale_per_channel, layerscale_init, layerscale_max)
        self.injection = LTIInjection(dim, full_b=full_b)

    def exit(self, h: torch.Tensor, b: torch.Tensor, e: torch.Tensor, t: int) -> torch.Tensor:
        if t == 0:
            return b
        m = mix_weight(self.gate, self.scale, t).to(h.dtype)
        return h + m * ((b - h) + self.inject_scale * self.injection(h, e))


class ParcaeRule(UpdateRule):
    """Inject before the block: x = Ā ⊙ h + B̄ e (h RMS-normalised first with ``state_norm``)."""

    def __init__(self, dim: int, full_b: bool = False, state_norm: bool = False) -> None:
        super().__init__()
        self.injection = LTIInjection(dim, full_b=full_b)
        self.state_norm = nn.RMSNorm(dim, eps=1e-6) if state_norm else None

    def enter(self, h: torch.Tensor, e: torch.Tensor, t: int) -> torch.Tensor:
        return self.injection(h if self.state_norm is None else self.state_norm(h), e)


class ConcatRule(UpdateRule):
    """x = W [h ; e] with W = [0 | I] at init."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.adapter = nn.Linear(2 * dim, dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        dim = self.adapter.out_features
        with torch.no_grad():
            self.adapter.weight.zero_()
            self.adapter.weight[:, dim:].copy_(torch.eye(dim))

    def enter(self, h: torch.Tensor, e: torch.Tensor, t: int) -> torch.Tensor:
        return self.adapter(torch.cat([h, e], dim=-1).to(self.adapter.weight.dtype)).to(h.dtype)


class TokenRule(UpdateRule):
    """Feed each read position its own soft prediction back through the input embedding (module docstring).

    ``bind(readout, embedding)`` hands it the model's head and input embedding after the wrapper is built;
    they stay the model's (held in a tuple, not registered here)."""

    loops_context = False

    def __init__(self, gate_init: float = 2.0) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))
        self._bound: tuple[Callable[[torch.Tensor], torch.Tensor], nn.Embedding] | None = None

    def bind(self, readout: Callable[[torch.Tensor], torch.Tensor], embedding: nn.Embedding) -> None:
        self._bound = (readout, embedding)

    def fed_back(self, h: torch.Tensor) -> torch.Tensor:
        """softmax(Head(Norm(h))) · E · s for states (N, D): the expected input embedding of the next token."""
        if self._bound is None:
            raise MythicError("the token rule needs the model's head and embedding: bind them first")
        readout, embedding = self._bound
        probs = torch.softmax(readout(h).float(), dim=-1)
        scale = getattr(embedding, "embed_scale", 1.0)
        return (probs @ embedding.weight.float() * scale).to(h.dtype)

    def for_forward(self, read: torch.Tensor) -> UpdateRule:
        return TokenPass(self, last_run(read))


def last_run(mask: torch.Tensor) -> torch.Tensor:
    """(B, q) bool: each row's last run of consecutive True positions of ``mask`` (B, q): a True position
    with no gap (a False position followed by a True one) after it."""

    def from_the_end(x: torch.Tensor) -> torch.Tensor:  # x at or after each position, counted
        return x.flip(-1).int().cumsum(-1).flip(-1)

    gap = ~mask & (from_the_end(mask) > 0)
    return mask & (from_the_end(gap) == 0)


class TokenPass(UpdateRule):
    """The token rule within one forward: ``read`` (B, q) marks the positions that are fed back."""

    def __init__(self, rule: TokenRule, read: torch.Tensor) -> None:
        super().__init__()
        self._rule = (rule,)
        self.read = read

    def enter(self, h: torch.Tensor, e: torch.Tensor, t: int) -> torch.Tensor:
        if t == 0:
            return e
        (rule,) = self._rule
        g = torch.sigmoid(rule.gate).to(e.dtype)
        fed = rule.fed_back(h[self.read])
        return e.index_put((self.read,), e[self.read] + g * (fed - e[self.read]))

    def exit(self, h: torch.Tensor, b: torch.Tensor, e: torch.Tensor, t: int) -> torch.Tensor:
        return b if t == 0 else torch.where(self.read.unsqueeze(-1), b, h)

    @property
    def fixed(self) -> torch.Tensor | None:
        return None if bool(self.read.all()) else ~self.read
