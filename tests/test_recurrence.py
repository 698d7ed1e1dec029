"""Math invariants of the recurrence core (hypothesis where a property is universal)."""

from __future__ import annotations

import math
import threading

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mythic.recurrence.depth_lora import DepthLoRA, LoopContext
from mythic.recurrence.gates import IdentityBiasedGate, LayerScale, mix_weight
from mythic.recurrence.injection import LTIInjection, stable_decay
from mythic.recurrence.loop import run_loops
from mythic.recurrence.loop_embedding import LoopEmbedding, sinusoid
from mythic.recurrence.rules import ConcatRule, ParcaeRule, ResidualRule

ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=400, deadline=None)
@given(a_log=st.lists(ANY_FLOAT, min_size=1, max_size=8), dt=st.lists(ANY_FLOAT, min_size=1, max_size=8))
def test_spectral_radius_strictly_below_one_for_every_parameter_value(a_log: list[float], dt: list[float]) -> None:
    n = min(len(a_log), len(dt))
    a_bar = stable_decay(torch.tensor(a_log[:n]), torch.tensor(dt[:n]))
    assert a_bar.dtype == torch.float32
    assert float(a_bar.max()) < 1.0
    assert float(a_bar.min()) >= 0.0
    assert float(a_bar.to(torch.bfloat16).float().max()) < 1.0
    assert float(a_bar.to(torch.float16).float().max()) < 1.0


def test_spectral_radius_at_the_extremes_that_broke_prior_art() -> None:
    extremes = torch.tensor([-1e38, -100.0, -30.0, 0.0, 30.0, 1e38, -math.inf, math.inf, math.nan])
    for a_log in extremes:
        a_bar = stable_decay(a_log.expand(extremes.numel()), extremes)
        assert float(a_bar.max()) <= math.exp(-(2.0**-7)) + 1e-7
        assert float(a_bar.to(torch.bfloat16).max()) <= 0.9921875


def test_injection_init_matches_parcae_and_formula() -> None:
    inj = LTIInjection(16)
    assert abs(float(inj.get_A().detach().mean()) - 0.447) < 1e-4
    h, e = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    a_bar, delta = inj.get_A(), torch.nn.functional.softplus(inj.dt_bias)
    torch.testing.assert_close(inj(h, e), a_bar * h + delta * inj.B * e, rtol=0, atol=1e-6)
    full = LTIInjection(16, full_b=True)
    torch.testing.assert_close(full(h, e), full.get_A() * h + full.delta() * (e @ full.B.T), rtol=0, atol=1e-6)


def test_stability_survives_a_huge_optimizer_step() -> None:
    inj = LTIInjection(8)
    opt = torch.optim.SGD(inj.parameters(), lr=1e12)
    loss = -(inj(torch.ones(1, 8), torch.ones(1, 8))).sum()
    loss.backward()
    opt.step()
    assert float(inj.get_A().max()) < 1.0
    assert float(inj.get_A().to(torch.bfloat16).max()) < 1.0


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31), spread=st.floats(0.1, 60.0), t=st.integers(0, 40))
def test_mix_weight_is_in_unit_interval_and_loops_past_the_last_reuse_it(seed: int, spread: float, t: int) -> None:
    gate, ls = IdentityBiasedGate(4, 8, per_channel=True), LayerScale(4, 8, per_channel=True, max_value=0.5)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every loop slot different, so a wrong slot mapping cannot go unnoticed
        gate.value.copy_(torch.randn(4, 8, generator=generator) * spread)
        ls.logit.copy_(torch.randn(4, 8, generator=generator) * spread)
    m = mix_weight(gate, ls, t)
    assert float(m.min()) >= 0.0 and float(m.max()) <= 0.5
    expected = ls.max_value * torch.sigmoid(ls.logit[min(t, 3)]) * torch.sigmoid(gate.value[min(t, 3)])
    assert torch.equal(m, expected)


def test_layerscale_and_decay_floor_pass_gradient_at_their_bounds() -> None:
    """The old clamp (LayerScale in [0, 0.5]) and floor (max(rate, ε)) passed zero gradient past the bound,
    so a parameter that crossed it could never come back."""
    ls = LayerScale(2, 1, max_value=0.5)
    with torch.no_grad():
        ls.logit.copy_(torch.tensor([[-12.0], [12.0]]))  # ls ≈ 3e-6 and ≈ 0.5 - 3e-6
    (ls(0) + ls(1)).sum().backward()
    assert float(ls.logit.grad.abs().min()) > 1e-7
    a_log = torch.tensor([-20.0], requires_grad=True)  # rate far below ε: the floor would have cut the gradient
    stable_decay(a_log, torch.zeros(1)).sum().backward()
    assert float(a_log.grad.abs()) > 0
    assert float(stable_decay(torch.tensor([-20.0]), torch.zeros(1))) < math.exp(-(2.0**-7)) + 1e-7
    ls.set(0.5)
    assert math.isinf(float(ls.logit[0])) and float(ls(0)) == 0.5  # the "always on" probe scale of sanity


def test_gate_and_layerscale_initial_values() -> None:
    m = mix_weight(IdentityBiasedGate(4, 8), LayerScale(4, 8), 1)
    assert float(m) == torch.tensor(0.05 * 0.5).item()


def _block(x: torch.Tensor, t: int) -> torch.Tensor:
    return torch.tanh(x * 1.5 + 0.1 * (t + 1))


def test_residual_rule_first_pass_is_the_block_exactly_and_then_follows_the_formula() -> None:
    torch.manual_seed(0)
    rule = ResidualRule(8, n_loops=4, inject_scale=0.01)
    e = torch.randn(2, 5, 8)
    assert torch.equal(run_loops(_block, rule, e, 1), _block(e, 0))
    h1 = _block(e, 0)
    b1 = _block(h1, 1)
    m = mix_weight(rule.gate, rule.scale, 1)
    expected = h1 + m * ((b1 - h1) + 0.01 * rule.injection(h1, e))
    torch.testing.assert_close(run_loops(_block, rule, e, 2), expected, rtol=0, atol=1e-7)


def test_concat_rule_is_identity_at_one_loop_and_parcae_injects_before_the_block() -> None:
    torch.manual_seed(0)
    e = torch.randn(2, 5, 8)
    assert torch.equal(run_loops(_block, ConcatRule(8), e, 1), _block(e, 0))
    parcae = ParcaeRule(8)
    torch.testing.assert_close(run_loops(_block, parcae, e, 1), _block(parcae.injection(e, e), 0), rtol=0, atol=0)


def test_per_sequence_depth_matches_each_sequence_alone() -> None:
    torch.manual_seed(0)
    rule = ResidualRule(8, n_loops=4)
    with torch.no_grad():
        rule.scale.set(0.4)
    e = torch.randn(3, 5, 8)
    depths = torch.tensor([1, 3, 2])
    batched = run_loops(_block, rule, e, depths)
    for i, d in enumerate(depths.tolist()):
        assert torch.equal(batched[i], run_loops(_block, rule, e[i : i + 1], d)[0])


def test_truncated_backprop_leaves_early_loops_without_gradient_and_checkpoint_is_exact() -> None:
    torch.manual_seed(0)
    grads = []
    e = torch.randn(2, 4, 8)
    for checkpoint in (False, True):
        rule = ResidualRule(8, n_loops=6)
        run_loops(_block, rule, e, 6, grad_loops=2, checkpoint=checkpoint).square().sum().backward()
        grads.append(rule.scale.logit.grad.clone())
    g = grads[0]
    assert torch.count_nonzero(g[:4]) == 0, "loops 0..3 ran without grad"
    assert torch.count_nonzero(g[4:]) == 2
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-7)


def test_truncated_backprop_counts_loops_per_sequence() -> None:
    """Each sequence backpropagates through its own last min(n_b, k) loops, batched or alone (Parcae's rule).

    Before the fix the no-gradient loops were counted from the deepest sequence, so a depth-1 sequence
    batched with a depth-4 one under k = 2 got no gradient at all.
    """
    torch.manual_seed(0)
    e = torch.randn(2, 3, 8)

    def grads(depths: torch.Tensor, rows: slice) -> torch.Tensor:
        rule = ResidualRule(8, n_loops=4)
        with torch.no_grad():
            rule.scale.set(0.4)
        block_in = e[rows].clone().requires_grad_(True)
        run_loops(_block, rule, block_in, depths, grad_loops=2).square().sum().backward()
        scale = rule.scale.logit.grad if rule.scale.logit.grad is not None else torch.zeros_like(rule.scale.logit)
        return torch.cat([scale.flatten(), block_in.grad.flatten()])

    alone = [grads(torch.tensor([1]), slice(0, 1)), grads(torch.tensor([4]), slice(1, 2))]
    batched = grads(torch.tensor([1, 4]), slice(0, 2))
    assert float(alone[0].abs().sum()) > 1.0  # the depth-1 sequence alone: gradient through its one loop
    n = alone[0].numel() - e[0].numel()
    torch.testing.assert_close(batched[:n], alone[0][:n] + alone[1][:n], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batched[n:], torch.cat([alone[0][n:], alone[1][n:]]), rtol=1e-5, atol=1e-6)


def test_loop_embedding_is_off_at_init_and_sinusoid_is_bounded() -> None:
    h = torch.randn(2, 3, 10)
    assert torch.equal(LoopEmbedding(10)(h, 3), h)
    pe = sinusoid(5, 10)
    assert float(pe.abs().max()) <= 1.0
    assert float(sinusoid(0, 10)[1]) == 1.0


def test_depth_lora_uses_the_loop_of_its_own_model_in_each_thread() -> None:
    torch.manual_seed(0)
    blocks, contexts = [], []
    for _ in range(2):
        block = torch.nn.ModuleList([torch.nn.ModuleDict({"q_proj": torch.nn.Linear(4, 4)})])
        ctx = LoopContext()
        lora = DepthLoRA(n_loops=3, rank=2, alpha=4)
        assert lora.attach(block, ("q_proj",), ctx) == ["0.q_proj"]
        with torch.no_grad():
            lora.deltas["0__q_proj"].B.normal_()
        blocks.append((block[0]["q_proj"], lora))
        contexts.append(ctx)
    x = torch.randn(5, 4)
    linear, lora = blocks[0]
    plain = linear(x)
    with contexts[0].at_loop(1):
        looped = linear(x)
        assert torch.equal(blocks[1][0](x), torch.nn.functional.linear(x, blocks[1][0].weight, blocks[1][0].bias))
    d = lora.deltas["0__q_proj"]
    torch.testing.assert_close(looped, plain + d.scaling * (x @ d.A[1].T) @ d.B[1].T, rtol=0, atol=1e-6)
    seen: list[bool] = []

    def other_thread() -> None:
        seen.append(torch.equal(linear(x), plain))

    with contexts[0].at_loop(2):
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert seen == [True], "a loop index set in one thread must not leak into another"
