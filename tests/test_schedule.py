"""The learning-rate schedule: warmup, cosine / linear decay, and decay over the last steps only (WSD)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mythic.train.recipe import Optim
from mythic.train.schedule import lr_factor, make_scheduler


def test_warmup_then_cosine_to_the_floor() -> None:
    spec = Optim(lr=1.0, schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, spec, 110) == pytest.approx(0.1)
    assert lr_factor(9, spec, 110) == pytest.approx(1.0)
    assert lr_factor(10, spec, 110) == pytest.approx(1.0)
    assert lr_factor(60, spec, 110) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(110, spec, 110) == pytest.approx(0.1)


def test_decay_steps_keep_the_full_rate_until_the_last_ones() -> None:
    spec = Optim(lr=1.0, schedule="linear", warmup_steps=10, decay_steps=25, min_lr_ratio=0.1)
    assert [lr_factor(s, spec, 100) for s in (10, 50, 75)] == [1.0, 1.0, 1.0]
    assert lr_factor(80, spec, 100) == pytest.approx(0.1 + 0.9 * (1 - 5 / 25))
    assert lr_factor(100, spec, 100) == pytest.approx(0.1)


def test_the_scheduler_sets_each_steps_rate() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2e-3)
    spec = Optim(lr=2e-3, schedule="linear", decay_steps=4)
    scheduler = make_scheduler(optimizer, spec, 8)
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([2e-3] * 5 + [1.5e-3, 1e-3, 0.5e-3])


def test_a_constant_schedule_refuses_decay_steps() -> None:
    with pytest.raises(ValidationError, match="decay_steps: a constant schedule has no decay"):
        Optim(lr=1.0, schedule="constant", decay_steps=10)


@settings(max_examples=200, deadline=None)
@given(
    warmup=st.integers(0, 50),
    steps=st.integers(1, 400),
    decay=st.integers(1, 500),
    floor=st.floats(0, 1),
    shape=st.sampled_from(["cosine", "linear"]),
)
def test_decay_steps_invariants(warmup: int, steps: int, decay: int, floor: float, shape: str) -> None:
    """Full rate from the warmup to S − D, then non-increasing within [r, 1], reaching r at S; with D at least
    the steps after the warmup, the plain schedule."""
    spec = Optim(lr=1.0, schedule=shape, warmup_steps=warmup, decay_steps=decay, min_lr_ratio=floor)
    plain = Optim(lr=1.0, schedule=shape, warmup_steps=warmup, min_lr_ratio=floor)
    after = [lr_factor(s, spec, steps) for s in range(warmup, steps + 1)]
    start = max(warmup, steps - decay)
    assert all(math.isclose(f, 1.0, abs_tol=1e-12) for f in after[: start - warmup + 1])
    assert all(floor - 1e-12 <= f <= 1.0 + 1e-12 for f in after)
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:], strict=False))
    if steps > warmup:
        assert math.isclose(after[-1], floor, abs_tol=1e-12)
    if decay >= steps - warmup:
        assert after == [lr_factor(s, plain, steps) for s in range(warmup, steps + 1)]
