"""ACT halting through the shared loop driver: weights, init behaviour, ponder cost, no early exit."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mythic.recurrence.halting import ACTHalting
from mythic.recurrence.loop import run_loops
from mythic.recurrence.rules import ParcaeRule

DIM = 8


def _block(x: torch.Tensor, t: int) -> torch.Tensor:
    return torch.tanh(x * 1.5 + 0.1 * (t + 1))


def _reference_act(states: list[torch.Tensor], head: ACTHalting, depth: int) -> tuple[torch.Tensor, list[float]]:
    """Graves' ACT for ONE position, written as plainly as possible: (output, weights)."""
    cumulative, out, weights = 0.0, torch.zeros(DIM), []
    for t in range(depth):
        p = float(head.probability(states[t]))
        if cumulative + p >= head.threshold or t == depth - 1:
            weights.append(1.0 - cumulative)
            return out + (1.0 - cumulative) * states[t], weights
        weights.append(p)
        out = out + p * states[t]
        cumulative += p
    raise AssertionError("unreachable: the last loop always halts")


def _states(rule: ParcaeRule, e: torch.Tensor, depth: int) -> list[torch.Tensor]:
    """h_1 … h_depth of one position without halting (the driver freezes halted ones later)."""
    h, out = e, []
    for t in range(depth):
        h = _block(rule.enter(h, e, t), t)
        out.append(h)
    return out


@settings(max_examples=60, deadline=None)
@given(
    bias=st.floats(-6, 6),
    scale=st.floats(-2, 2),
    threshold=st.floats(0.05, 1.0),
    depths=st.lists(st.integers(1, 7), min_size=1, max_size=3),
)
def test_halting_weights_sum_to_one_and_match_a_plain_reference(
    bias: float, scale: float, threshold: float, depths: list[int]
) -> None:
    torch.manual_seed(0)
    rule = ParcaeRule(DIM)
    head = ACTHalting(DIM, threshold=threshold, max_loops=4)
    with torch.no_grad():
        head.proj.bias.fill_(bias)
        head.proj.weight.normal_(0, 1).mul_(scale)
    e = torch.randn(len(depths), 5, DIM)
    n_loops = torch.tensor(depths)
    run = head.start(e, n_loops)
    with torch.no_grad():
        out = run_loops(_block, rule, e, n_loops, halting=run)
    assert float((run.cumulative - 1.0).abs().max()) <= 1e-6
    assert bool(run.halted.all())
    for b, depth in enumerate(depths):
        for pos in range(e.shape[1]):
            with torch.no_grad():
                expected, weights = _reference_act(_states(rule, e[b, pos], depth), head, depth)
            assert abs(sum(weights) - 1.0) <= 1e-6
            assert float(run.steps[b, pos]) == len(weights)
            torch.testing.assert_close(out[b, pos], expected, rtol=0, atol=1e-5)


def test_at_init_the_output_is_the_uniform_average_and_more_loops_change_it() -> None:
    torch.manual_seed(0)
    rule, head = ParcaeRule(DIM), ACTHalting(DIM, threshold=0.99, max_loops=16)
    assert abs(float(head.probability(torch.randn(DIM)).detach()) - 1 / 16) < 1e-6
    e = torch.randn(2, 3, DIM)
    with torch.no_grad():
        deep = run_loops(_block, rule, e, 16, halting=head.start(e, 16))
        shallow = run_loops(_block, rule, e, 2, halting=head.start(e, 2))
        states = [run_loops(_block, rule, e, t) for t in range(1, 17)]
    torch.testing.assert_close(deep, torch.stack(states).mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(shallow, states[0] / 16 + states[1] * 15 / 16, rtol=0, atol=1e-6)
    assert float((deep - shallow).abs().max()) > 1e-2


def test_ponder_cost_is_steps_plus_remainder_with_gradient() -> None:
    torch.manual_seed(0)
    rule, head = ParcaeRule(DIM), ACTHalting(DIM, threshold=0.99, max_loops=16)
    e = torch.randn(2, 3, DIM)
    run = head.start(e, 4)
    run_loops(_block, rule, e, 4, halting=run)
    cost = run.ponder_cost()
    assert abs(cost.item() - (4 + (1 - 3 / 16))) < 1e-6
    cost.backward()
    assert float(head.proj.bias.grad) < 0  # raising p shrinks the remainder


def test_halting_masks_but_never_exits_early() -> None:
    """Every pass runs for the whole batch (same collective calls on every rank); halted states freeze."""
    torch.manual_seed(0)
    rule, head = ParcaeRule(DIM), ACTHalting(DIM, threshold=0.5, max_loops=8)
    with torch.no_grad():
        head.proj.bias.fill_(20.0)  # p ≈ 1: every position halts after its first pass
    calls = []

    def block(x: torch.Tensor, t: int) -> torch.Tensor:
        calls.append(t)
        return _block(x, t)

    e = torch.randn(2, 3, DIM)
    run = head.start(e, 6)
    out = run_loops(block, rule, e, 6, halting=run)
    assert calls == [0, 1, 2, 3, 4, 5]
    assert [int(m.sum()) for m in run.masks] == [6, 0, 0, 0, 0, 0]
    torch.testing.assert_close(out, run_loops(_block, rule, e, 1), rtol=0, atol=0)
    assert run.ponder_cost().item() == 1.0 + 1.0


def test_checkpointed_loops_with_halting_give_the_same_gradients() -> None:
    torch.manual_seed(0)
    rule, head = ParcaeRule(DIM), ACTHalting(DIM, threshold=0.7, max_loops=4)
    with torch.no_grad():
        head.proj.weight.normal_(0, 0.5)
    e = torch.randn(2, 5, DIM)
    grads = []
    for checkpoint in (False, True):
        rule.zero_grad()
        head.zero_grad()
        run = head.start(e, 5)
        out = run_loops(_block, rule, e, 5, checkpoint=checkpoint, halting=run)
        (out.square().sum() + run.ponder_cost()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in [*rule.parameters(), *head.parameters()]]))
    assert float((grads[0] - grads[1]).abs().max()) == 0.0
    assert math.isfinite(float(grads[0].abs().sum()))
