"""Loop curricula: determinism, stage tables, the Poisson-lognormal ramp, per-sequence depth, truncation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mythic.train.curriculum import Curriculum, Depth, ramped_mean, stage_at
from mythic.train.recipe import (
    DifficultyCurriculum,
    FixedCurriculum,
    Hold,
    PoissonLognormalCurriculum,
    StagesCurriculum,
)

STAGES = StagesCurriculum(
    kind="stages",
    stages=[
        {"start": 0, "weights": {1: 1.0}},
        {"start": 80, "weights": {1: 0.4, 2: 0.6}},
        {"start": 200, "weights": {1: 0.2, 2: 0.5, 4: 0.3}},
        {"start": 320, "weights": {2: 0.4, 4: 0.6}},
    ],
)


def test_fixed_and_truncation() -> None:
    spec = FixedCurriculum(kind="fixed", loops=6, grad_loops=4, checkpoint_loops=True)
    assert Curriculum(spec, 0).sample(3, 1, 2) == Depth(6, 4, True)
    short = FixedCurriculum(kind="fixed", loops=2, grad_loops=4)  # k is each sequence's own bound: min(n_b, k)
    assert Curriculum(short, 0).sample(0, 0, 2) == Depth(2, 4, False)


def test_stage_table_boundaries() -> None:
    assert stage_at(STAGES, 0) == {1: 1.0}
    assert stage_at(STAGES, 79) == {1: 1.0}
    assert stage_at(STAGES, 80) == {1: 0.4, 2: 0.6}
    assert stage_at(STAGES, 319) == {1: 0.2, 2: 0.5, 4: 0.3}
    assert stage_at(STAGES, 10_000) == {2: 0.4, 4: 0.6}


def test_stage_frequencies_match_weights() -> None:
    curriculum = Curriculum(STAGES, seed=3)
    draws = [curriculum.sample(step, micro, 2).n_loops for step in range(200, 320) for micro in range(50)]
    counts = {t: draws.count(t) / len(draws) for t in (1, 2, 4)}
    assert set(draws) == {1, 2, 4}
    # 6000 draws: the standard error of each frequency is < 0.0065; allow 4 of them.
    for t, weight in {1: 0.2, 2: 0.5, 4: 0.3}.items():
        assert abs(counts[t] - weight) < 0.026
    assert {curriculum.sample(s, 0, 2).n_loops for s in range(80)} == {1}


@given(seed=st.integers(0, 2**31), step=st.integers(0, 10_000), micro=st.integers(0, 64), rank=st.integers(0, 7))
@settings(max_examples=50, deadline=None)
def test_sampling_is_a_pure_function_of_its_key(seed: int, step: int, micro: int, rank: int) -> None:
    spec = PoissonLognormalCurriculum(kind="poisson_lognormal", mean=6, max_loops=8, per_sequence=True, grad_loops=3)
    a = Curriculum(spec, seed).sample(step, micro, 5, rank)
    b = Curriculum(spec, seed).sample(step, micro, 5, rank)
    assert torch.equal(a.n_loops, b.n_loops)
    assert a.grad_loops == b.grad_loops == 3
    assert int(a.n_loops.min()) >= 1 and int(a.n_loops.max()) <= 8


def test_batch_depth_is_shared_by_ranks_and_per_sequence_depth_is_not() -> None:
    shared = Curriculum(STAGES, 0)
    assert [shared.sample(250, m, 2, rank=0).n_loops for m in range(20)] == [
        shared.sample(250, m, 2, rank=1).n_loops for m in range(20)
    ]
    per_seq = Curriculum(STAGES.model_copy(update={"per_sequence": True}), 0)
    a = torch.cat([per_seq.sample(250, m, 4, rank=0).n_loops for m in range(20)])
    b = torch.cat([per_seq.sample(250, m, 4, rank=1).n_loops for m in range(20)])
    assert a.shape == (80,) and not torch.equal(a, b)


@pytest.mark.parametrize(
    ("ramp", "step", "expected"),
    [
        ("linear", 0, 1.0),
        ("linear", 50, 1.0 + 31.0 * 0.5),
        ("linear", 100, 32.0),
        ("linear", 400, 32.0),
        ("sqrt", 50, 1.0 + 31.0 * (1.0 - math.sqrt(0.5))),
        ("sqrt", 75, 1.0 + 31.0 * 0.5),
        ("sqrt", 100, 32.0),
    ],
)
def test_ramped_mean(ramp: str, step: int, expected: float) -> None:
    spec = PoissonLognormalCurriculum(kind="poisson_lognormal", mean=32, ramp=ramp, ramp_steps=100, max_loops=64)
    assert ramped_mean(spec, step) == pytest.approx(expected, abs=1e-12)


def test_poisson_lognormal_mean_is_rbar_plus_one() -> None:
    spec = PoissonLognormalCurriculum(kind="poisson_lognormal", mean=6, sigma=0.5, max_loops=64, per_sequence=True)
    curriculum = Curriculum(spec, seed=0)
    draws = torch.cat([curriculum.sample(step, 0, 100).n_loops for step in range(200)]).double()
    # E[r] = E[Poisson(τ)] + 1 = E[τ] + 1 = r̄ + 1 = 7; Var[r] = r̄ + r̄²(e^{σ²} − 1) ≈ 16.2, 20000 draws.
    assert abs(float(draws.mean()) - 7.0) < 0.12
    assert abs(float(draws.var()) - (6 + 36 * (math.exp(0.25) - 1))) < 1.5


def test_depth_is_clipped_to_max_loops() -> None:
    spec = PoissonLognormalCurriculum(kind="poisson_lognormal", mean=4, max_loops=4, per_sequence=True)
    draws = np.concatenate([Curriculum(spec, 0).sample(s, 0, 64).n_loops.numpy() for s in range(50)])
    assert draws.max() == 4 and draws.min() == 1


@given(
    seed=st.integers(0, 2**31),
    extra=st.integers(0, 3),
    difficulty=st.lists(st.integers(0, 12), min_size=1, max_size=16),
)
@settings(max_examples=50, deadline=None)
def test_difficulty_curriculum_never_loops_less_than_the_steps(seed: int, extra: int, difficulty: list[int]) -> None:
    spec = DifficultyCurriculum(kind="difficulty", max_loops=8, extra=extra)
    depth = Curriculum(spec, seed).sample(5, 0, len(difficulty), 0, torch.tensor(difficulty))
    floor = torch.tensor(difficulty).clamp(min=1)  # 0 = no difficulty: counted as 1
    assert isinstance(depth.n_loops, torch.Tensor)
    assert bool((depth.n_loops >= floor.clamp(max=8)).all())
    assert bool((depth.n_loops <= (floor + extra).clamp(max=8)).all())
    again = Curriculum(spec, seed).sample(5, 0, len(difficulty), 0, torch.tensor(difficulty))
    assert torch.equal(depth.n_loops, again.n_loops)


def test_difficulty_curriculum_draws_every_extra_loop_once_they_start() -> None:
    spec = DifficultyCurriculum(kind="difficulty", max_loops=8, extra=2, extra_after=20)
    three = torch.full((64,), 3)
    early = torch.cat([Curriculum(spec, 0).sample(s, 0, 64, 0, three).n_loops for s in range(20)])
    draws = torch.cat([Curriculum(spec, 0).sample(s, 0, 64, 0, three).n_loops for s in range(20, 40)])
    assert set(early.tolist()) == {3}, "before extra_after every example loops exactly its difficulty"
    assert set(draws.tolist()) == {3, 4, 5}
    assert abs(float((draws == 4).float().mean()) - 1 / 3) < 0.05  # 1280 draws: SE 0.013


def test_hold_batches_loop_far_past_the_stop_with_a_truncated_gradient() -> None:
    hold = Hold(fraction=0.25, loops=(12, 32), grad_loops=8)
    spec = DifficultyCurriculum(kind="difficulty", max_loops=32, extra=2, extra_after=20, hold=hold)
    difficulty = torch.tensor([1, 2, 3, 4] * 4 + [40])  # one example deeper than any hold draw (clipped to 32)
    early = [Curriculum(spec, 0).sample(s, m, 17, 0, difficulty) for s in range(20) for m in range(4)]
    assert all(d.grad_loops is None for d in early), "no hold micro-batch before extra_after"
    draws = [Curriculum(spec, 0).sample(s, m, 17, 0, difficulty) for s in range(20, 520) for m in range(4)]
    held = [d for d in draws if d.grad_loops == 8]
    assert abs(len(held) / len(draws) - 0.25) < 0.03  # 2000 micro-batches: SE 0.0097
    lengths = set()
    for d in held:
        loops = d.n_loops.tolist()
        assert len(set(loops[:16])) == 1 and loops[16] == 32, "one L for the micro-batch, max(d_b, L) ≤ max_loops"
        lengths.add(loops[0])
    assert lengths == set(range(12, 33))
    plain = torch.stack([d.n_loops for d in draws if d.grad_loops is None])
    assert bool((plain[:, :16] <= difficulty[:16] + 2).all()), "the other micro-batches draw d + U{0..extra}"
    again = Curriculum(spec, 0).sample(300, 2, 17, 0, difficulty)
    assert torch.equal(again.n_loops, draws[(300 - 20) * 4 + 2].n_loops)
    ranks = [
        [Curriculum(spec, 0).sample(s, 0, 17, rank, difficulty).grad_loops for s in range(20, 120)] for rank in (0, 1)
    ]
    assert ranks[0] == ranks[1], "data-parallel ranks hold the same micro-batches"


def test_hold_loops_are_checked_against_max_loops() -> None:
    with pytest.raises(ValidationError, match="hold.loops: T=12 is above max_loops=8"):
        DifficultyCurriculum(kind="difficulty", max_loops=8, hold=Hold(fraction=0.5, loops=(12, 32), grad_loops=4))
    with pytest.raises(ValidationError, match=r"loops: \[9, 3\] must be \[lowest, highest\]"):
        Hold(fraction=0.5, loops=(9, 3), grad_loops=4)
