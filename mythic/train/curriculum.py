"""Loop curricula: the depth T that each micro-batch trains at.

Kinds (``recipe.curriculum.kind``):

- ``fixed``: T = ``loops`` always.
- ``stages``: a stage table; from step ``start`` on, T ~ Categorical(``weights``).
- ``poisson_lognormal`` (retrofitted recurrence, arXiv 2511.07384), clipped to ``max_loops``:
      r̄(s) = r̄₀ + (r̄ − r̄₀)·ρ(s/S),  ρ(u) = u (linear) or 1 − √(1 − u) (sqrt), u clipped to [0, 1]
      τ ~ LogNormal(log r̄(s) − σ²/2, σ)   (so E[τ] = r̄(s)),   r = Poisson(τ) + 1
- ``difficulty``: T_b = min(d_b + U{0, …, extra}, max_loops) per sequence, d_b the example's
  difficulty (1 without one); before step ``extra_after``, T_b = d_b (why: docs/lab-notes.md, "Pointer
  chasing from the final answer alone": one step per loop is learned first, when to stop later).
  With ``hold``, from ``extra_after`` on a micro-batch is, with probability ``hold.fraction``, run far
  past the stop instead (the same micro-batches on every rank): T_b = max(d_b, L), L ~ U{hold.loops}
  once for the micro-batch, gradient through the last ``hold.grad_loops`` loops only (so an answer must
  survive many loops at the cost of few).

``per_sequence: true`` (always, for ``difficulty``) draws one depth per sequence (Parcae): ``n_loops`` is
then a LongTensor (B,) (``recurrence/loop.py``). Otherwise one T is drawn per micro-batch and shared by
all ranks, so data-parallel ranks do the same amount of work.

Truncated backprop: ``grad_loops = k`` gives every sequence its own last min(n_b, k) loops with gradient
(``recurrence/loop.py``); ``grad_loops: uniform`` draws k ~ U{1, …, max_b n_b} afresh for every
micro-batch (Bansal et al. 2022's progressive loss; docs/lab-notes.md); ``checkpoint_loops`` asks the
model to checkpoint activations per loop. Every draw uses ``numpy.random.default_rng([seed, step,
micro, rank, salt])``, a pure function of its key, so a resumed run samples exactly the same depths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mythic.train.recipe import (
    CurriculumSpec,
    DifficultyCurriculum,
    FixedCurriculum,
    PoissonLognormalCurriculum,
    StagesCurriculum,
)

LoopCount = int | torch.Tensor


@dataclass(frozen=True)
class Depth:
    """What one forward pass runs: the loop count(s) and the truncated-backprop settings."""

    n_loops: LoopCount
    grad_loops: int | None = None
    checkpoint_loops: bool = False

    def model_kwargs(self) -> dict[str, Any]:
        """The looped model's keyword arguments for this depth (``forward(ids, **depth.model_kwargs())``)."""
        return {"n_loops": self.n_loops, "grad_loops": self.grad_loops, "checkpoint_loops": self.checkpoint_loops}

    def per_sequence(self, batch_size: int) -> list[int]:
        """The depth of each of ``batch_size`` sequences."""
        if isinstance(self.n_loops, torch.Tensor):
            return [int(t) for t in self.n_loops.tolist()]
        return [int(self.n_loops)] * batch_size


def steps_of(difficulty: np.ndarray | None, size: int) -> np.ndarray:
    """The fewest loops each of ``size`` examples may run: its difficulty, 1 where it has none (0 or no file)."""
    return np.ones(size, dtype=np.int64) if difficulty is None else np.maximum(difficulty, 1)


def ramped_mean(spec: PoissonLognormalCurriculum, step: int) -> float:
    """r̄(step): the curriculum's mean ramp (linear or 1 − √(1 − u)) from ``mean_start`` to ``mean``."""
    u = 1.0 if spec.ramp_steps == 0 else min(max(step / spec.ramp_steps, 0.0), 1.0)
    shape = u if spec.ramp == "linear" else 1.0 - math.sqrt(1.0 - u)
    return spec.mean_start + (spec.mean - spec.mean_start) * shape


def stage_at(spec: StagesCurriculum, step: int) -> dict[int, float]:
    """The {T: weight} table in force at ``step`` (the first stage starts at 0)."""
    return next(stage.weights for stage in reversed(spec.stages) if stage.start <= step)


class Curriculum:
    """Samples a ``Depth`` from (seed, step, micro-batch, rank); see the module docstring."""

    SALT = 0x10095

    def __init__(self, spec: CurriculumSpec, seed: int) -> None:
        self.spec, self.seed = spec, seed

    @property
    def per_sequence(self) -> bool:
        return isinstance(self.spec, DifficultyCurriculum) or bool(getattr(self.spec, "per_sequence", False))

    def rng(self, step: int, micro: int, rank: int, stream: int = 0) -> np.random.Generator:
        """The generator for one draw; ``stream`` 0 draws depths, 1 draws ``grad_loops: uniform``, 2 hold."""
        key = [self.seed, step, micro, rank, self.SALT]
        return np.random.default_rng(key + [stream] if stream else key)

    def draw(self, rng: np.random.Generator, step: int, size: int, difficulty: np.ndarray | None = None) -> np.ndarray:
        """``size`` loop counts in [1, max_loops] for ``step`` (``difficulty``: the examples' (size,))."""
        spec = self.spec
        if isinstance(spec, DifficultyCurriculum):
            floor = steps_of(difficulty, size)
            extra = spec.extra if step >= spec.extra_after else 0
            return np.minimum(floor + rng.integers(0, extra + 1, size=size), spec.max_loops).astype(np.int64)
        if isinstance(spec, FixedCurriculum):
            return np.full(size, spec.loops, dtype=np.int64)
        if isinstance(spec, StagesCurriculum):
            table = stage_at(spec, step)
            loops = np.array(sorted(table), dtype=np.int64)
            probs = np.array([table[t] for t in sorted(table)], dtype=np.float64)
            return rng.choice(loops, size=size, p=probs / probs.sum())
        assert isinstance(spec, PoissonLognormalCurriculum)
        mean = ramped_mean(spec, step)
        tau = rng.lognormal(math.log(mean) - spec.sigma**2 / 2, spec.sigma, size=size)
        return np.minimum(rng.poisson(tau) + 1, spec.max_loops).astype(np.int64)

    def sample(
        self, step: int, micro: int, batch_size: int, rank: int = 0, difficulty: torch.Tensor | None = None
    ) -> Depth:
        """The depth for micro-batch ``micro`` of optimizer step ``step`` on ``rank`` (``difficulty``: its
        examples' difficulties (B,), 0 where unknown; read by the ``difficulty`` curriculum only)."""
        if self.per_sequence:
            known = None if difficulty is None else difficulty.numpy()
            hold = self.hold(step, micro, batch_size, known)
            if hold is not None:
                return hold
            loops = self.draw(self.rng(step, micro, rank), step, batch_size, known)
            n_loops: LoopCount = torch.from_numpy(loops)
        else:
            n_loops = int(self.draw(self.rng(step, micro, 0), step, 1)[0])
        grad_loops = self.spec.grad_loops
        if grad_loops == "uniform":
            deepest = int(n_loops.max()) if isinstance(n_loops, torch.Tensor) else n_loops
            rng = self.rng(step, micro, rank if self.per_sequence else 0, stream=1)
            grad_loops = int(rng.integers(1, deepest + 1))
        return Depth(n_loops, grad_loops, self.spec.checkpoint_loops)

    def hold(self, step: int, micro: int, size: int, difficulty: np.ndarray | None) -> Depth | None:
        """The depth of a hold micro-batch (``difficulty`` curriculum with ``hold``), None for any other; whether
        to hold and L are drawn without the rank, so data-parallel ranks hold the same micro-batches."""
        spec = self.spec
        if not isinstance(spec, DifficultyCurriculum) or spec.hold is None or step < spec.extra_after:
            return None
        rng = self.rng(step, micro, 0, stream=2)
        if rng.random() >= spec.hold.fraction:
            return None
        length = rng.integers(spec.hold.loops[0], spec.hold.loops[1] + 1)
        loops = np.minimum(np.maximum(steps_of(difficulty, size), length), spec.max_loops)
        return Depth(torch.from_numpy(loops.astype(np.int64)), spec.hold.grad_loops, spec.checkpoint_loops)
