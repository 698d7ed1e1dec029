"""Loss terms on plain logits: exact values on hand-built cases, invariants with hypothesis."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mythic.train import losses

# Two tokens, vocab 2: p(y) = 0.5 at position 0 (logits equal), p(y) = e/(1+e) at position 1.
LOGITS = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])
LABELS = torch.tensor([[1, 0]])
CE0, CE1 = math.log(2.0), math.log(1.0 + math.exp(-1.0))


def test_cross_entropy_ignores_masked_tokens() -> None:
    assert losses.cross_entropy(LOGITS, LABELS).item() == torch.tensor((CE0 + CE1) / 2).item()
    masked = torch.tensor([[1, losses.IGNORE_INDEX]])
    assert abs(losses.cross_entropy(LOGITS, masked).item() - CE0) < 1e-7
    assert torch.allclose(losses.token_ce(LOGITS, masked), torch.tensor([[CE0, 0.0]]))
    assert losses.cross_entropy(LOGITS, torch.full((1, 2), losses.IGNORE_INDEX)).item() == 0.0


def test_focal_weights_and_focal_ce() -> None:
    ref = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]], requires_grad=True)  # p(y): 0.5, 0.75
    w = losses.focal_weights(ref, LABELS, gamma=1.0)
    assert not w.requires_grad
    assert torch.allclose(w, torch.tensor([[0.5, 0.25]]))
    assert torch.allclose(losses.focal_weights(ref, LABELS, gamma=2.0), torch.tensor([[0.25, 0.0625]]))
    # Σw = 0.75 < 1, so the denominator is 1: CE = 0.5·ce0 + 0.25·ce1.
    assert abs(losses.focal_ce(LOGITS, LABELS, w).item() - (0.5 * CE0 + 0.25 * CE1)) < 1e-6
    big = torch.tensor([[2.0, 1.0]])
    assert abs(losses.focal_ce(LOGITS, LABELS, big).item() - (2 * CE0 + CE1) / 3) < 1e-6


def test_margin() -> None:
    lo, hi = torch.tensor(2.0), torch.tensor(2.05)
    assert abs(losses.margin_term(lo, hi, 0.1, 0.02).item() - 0.1 * 0.07) < 1e-7
    assert losses.margin_term(lo, torch.tensor(1.9), 0.1, 0.02).item() == 0.0


def test_kl_divergence_exact() -> None:
    p = torch.tensor([[[0.0, 0.0]]])  # (0.5, 0.5)
    q = torch.tensor([[[math.log(3.0), 0.0]]])  # (0.75, 0.25)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert abs(losses.kl_divergence(p, q, torch.tensor([[0]])).item() - expected) < 1e-6


@given(
    seed=st.integers(0, 10_000),
    scale=st.floats(0.1, 20.0),
)
@settings(max_examples=40, deadline=None)
def test_kl_invariants(seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(2, 5, 11, generator=g) * scale
    q = torch.randn(2, 5, 11, generator=g) * scale
    labels = torch.randint(0, 11, (2, 5), generator=g)
    assert losses.kl_divergence(p, q, labels).item() >= -1e-6
    assert abs(losses.kl_divergence(p, p, labels).item()) < 1e-6
    assert abs(losses.kl_divergence(p, p + 3.0, labels).item()) < 1e-5  # softmax is shift-invariant


@given(seed=st.integers(0, 10_000))
@settings(max_examples=30, deadline=None)
def test_focal_with_gamma_zero_is_plain_ce(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 4, 7, generator=g)
    labels = torch.randint(0, 7, (3, 4), generator=g)
    labels[0, :2] = losses.IGNORE_INDEX
    w = losses.focal_weights(logits, labels, gamma=1e-12)
    assert torch.allclose(losses.focal_ce(logits, labels, w), losses.cross_entropy(logits, labels), atol=1e-5)


def test_sequence_ce_per_row() -> None:
    """Labelled tokens flattened into one sequence, regrouped by their rows; a row without one reads 0."""
    logits = torch.cat([LOGITS[0], LOGITS[0, :1]]).unsqueeze(0)  # row 0's two tokens, then row 2's one
    labels = torch.tensor([[1, 0, 1]])
    got = losses.sequence_ce(logits, labels, torch.tensor([0, 0, 2]), batch=3)
    assert torch.allclose(got, torch.tensor([(CE0 + CE1) / 2, 0.0, CE0]))


def test_model_aux_terms() -> None:
    balance, ponder = torch.tensor(0.3), torch.tensor(0.01)
    assert losses.model_aux_terms(SimpleNamespace(aux_losses={"moe_balance": balance, "ponder": ponder})) == {
        "moe_balance": balance,
        "ponder": ponder,
    }
    assert losses.model_aux_terms(SimpleNamespace(aux_loss=balance)) == {"aux": balance}
    assert losses.model_aux_terms(SimpleNamespace(logits=LOGITS)) == {}
    assert losses.model_aux_terms(LOGITS) == {}


def test_kl_is_finite_when_the_reference_masks_a_token_to_minus_infinity() -> None:
    from mythic.train.losses import kl_divergence

    p = torch.tensor([[[0.0, float("-inf"), 1.0]]])
    q = torch.tensor([[[0.5, 0.0, 0.0]]])
    value = kl_divergence(p, q, torch.tensor([[1]]))
    pp = torch.softmax(torch.tensor([0.0, 1.0]), -1)
    qq = torch.log_softmax(q[0, 0], -1)[[0, 2]]
    expected = (pp * (pp.log() - qq)).sum()
    assert torch.isfinite(value) and abs(float(value) - float(expected)) < 1e-6
