"""Loss terms on plain logits tensors (B, L, V) and labels (B, L), ``-100`` = ignored.

Every function reduces over the *valid* tokens only and computes in float32.

- cross entropy          ce_i = −log p(y_i)
- focal weights          w_i = (1 − p_ref(y_i))^γ, computed without gradient
- focal CE               CE = Σ w_i·ce_i / max(Σ w_i, 1)
- dual-T margin          α_m · ReLU(CE_hi − CE_lo + m), on plain CEs (composed in ``objective.py``)
- KL                     KL(p ‖ q) = Σ_v p_v (log p_v − log q_v), averaged over valid tokens
                         (the KL anchor and self-distillation: ``objective.py``)
- model-provided terms   ``out.aux_losses`` (a dict) or ``out.aux_loss`` (a tensor), e.g. a MoE
                         balance loss or an ACT ponder cost, added with a weight (default 1)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def valid_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: the positions that carry a target."""
    return labels != IGNORE_INDEX


def token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, L) float32 per-token cross entropy, 0 where the label is ignored."""
    flat = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    return flat.view(labels.shape)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``mask`` (0 when nothing is valid)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over the valid tokens."""
    return masked_mean(token_ce(logits, labels), valid_mask(labels))


def sequence_ce(logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """(batch,) mean CE of each sequence (for per-T logging when depth differs per sequence), from one flattened
    sequence of labelled tokens (1, N, V) whose token i came from row ``rows[i]``; 0 for a row without one."""
    ce = token_ce(logits, labels).squeeze(0)
    totals = torch.zeros(batch, dtype=ce.dtype, device=ce.device).index_add_(0, rows, ce)
    counts = torch.zeros(batch, dtype=ce.dtype, device=ce.device).index_add_(0, rows, torch.ones_like(ce))
    return totals / counts.clamp(min=1)


@torch.no_grad()
def focal_weights(ref_logits: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B, L) w = (1 − p_ref(y))^γ from the reference pass, 0 at ignored positions, no gradient."""
    mask = valid_mask(labels)
    logp = torch.log_softmax(ref_logits.float(), dim=-1)
    p_target = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1).exp()
    return (1.0 - p_target).clamp(min=0.0).pow(gamma) * mask


def focal_ce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """CE = Σ w·ce / max(Σ w, 1)."""
    return (weights * token_ce(logits, labels)).sum() / weights.sum().clamp(min=1.0)


def margin_term(ce_lo: torch.Tensor, ce_hi: torch.Tensor, alpha: float, m: float) -> torch.Tensor:
    """α_m · ReLU(CE_hi − CE_lo + m): the deeper pass must beat the shallow one by m."""
    return alpha * torch.relu(ce_hi - ce_lo + m)


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per token, averaged over the valid tokens; gradients flow to whichever side has them."""
    logp = torch.log_softmax(p_logits.float(), dim=-1)
    logq = torch.log_softmax(q_logits.float(), dim=-1)
    p = logp.exp()
    per_token = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)
    return masked_mean(per_token, valid_mask(labels))


def model_aux_terms(out: Any) -> dict[str, torch.Tensor]:
    """Extra loss terms a model returns: ``out.aux_losses`` (dict) or ``out.aux_loss`` (tensor)."""
    losses = getattr(out, "aux_losses", None)
    if isinstance(losses, dict):
        return {str(k): v for k, v in losses.items() if isinstance(v, torch.Tensor)}
    single = getattr(out, "aux_loss", None)
    return {"aux": single} if isinstance(single, torch.Tensor) else {}
