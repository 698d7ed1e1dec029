"""The training objective as one ``nn.Module``: model passes + loss terms in a single forward.

Every pass of a step (T_lo, T_hi, the KL anchor's no-grad base pass) runs in one module forward, so
DDP/FSDP see exactly one forward per backward. The terms (``losses.py``):

Single-T:   L = CE(T)
Dual-T:     L = ½(CE_lo + CE_hi) + α_m·ReLU(CE(T_hi) − CE_lo + m) + α_sd·KL(p_lo ‖ p_hi.detach())
            with T_lo fixed (``loss.dual_t.t_lo``) and T_hi drawn from the curriculum;
            CE_hi optionally focal: Σ w·ce / max(Σ w, 1), w = (1 − p_lo(y))^γ without gradient.
            The margin always compares plain CEs (against a focal CE_hi it would measure the weighting).
KL anchor:  + α·KL(p_base ‖ p_model@T) on anchor steps, p_base from the base
            (``model.base_mode()``: recurrence, depth-LoRA and any peft LoRA switched off).
Model aux:  + Σ w_name · aux_name, averaged over the passes that returned it.

Every pass computes logits at the labelled positions only (a (B, L) mask as the model's
``logits_to_keep``; the kept positions come back flattened, (N, V)): on a small model with a large
vocabulary, the head and softmax at the other positions are most of a step. Every term is a mean over
labelled tokens, so it is the same on the flattened tokens; per-sequence CE regroups them by row.

The forward returns a dict of tensors: ``loss`` (with graph) and every term detached, plus ``seq_ce`` /
``seq_loops`` (per-sequence CE and depth of each pass) for per-T logging.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mythic.errors import MythicError
from mythic.models.protocol import LoopedModel
from mythic.train import losses
from mythic.train.curriculum import Depth
from mythic.train.recipe import Loss


def logits_of(out: Any) -> torch.Tensor:
    """Logits from a model output object or a bare tensor (OpenMythos returns logits)."""
    return out if isinstance(out, torch.Tensor) else out.logits


class Objective(nn.Module):
    """model + loss recipe → one forward returning the loss and its logged terms."""

    def __init__(self, model: nn.Module, loss: Loss) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor, depth: Depth, anchor: bool = False
    ) -> dict[str, torch.Tensor]:
        cfg = self.loss
        batch = input_ids.shape[0]
        keep = losses.valid_mask(labels)
        rows = keep.nonzero()[:, 0]
        labels = labels[keep].unsqueeze(0)
        depths = [depth]
        if cfg.dual_t is not None:
            t_lo = cfg.dual_t.t_lo
            lo_grad = None if depth.grad_loops is None else min(t_lo, depth.grad_loops)
            depths.insert(0, Depth(t_lo, lo_grad, depth.checkpoint_loops))
        outs = [self.model(input_ids, **d.model_kwargs(), logits_to_keep=keep) for d in depths]
        logits = [logits_of(out).unsqueeze(0) for out in outs]  # the kept positions as one sequence, (1, N, V)
        main = logits[-1]
        terms: dict[str, torch.Tensor] = {}
        if cfg.dual_t is None:
            terms["ce"] = losses.cross_entropy(main, labels)
        else:
            lo = logits[0]
            ce_lo = terms["ce_lo"] = losses.cross_entropy(lo, labels)
            plain_hi = terms["ce_hi"] = losses.cross_entropy(main, labels)
            if cfg.focal is not None:
                terms["ce_hi"] = losses.focal_ce(main, labels, losses.focal_weights(lo, labels, cfg.focal.gamma))
                terms["ce_hi_unweighted"] = plain_hi
            if cfg.margin is not None:
                terms["margin"] = losses.margin_term(ce_lo, plain_hi, cfg.margin.alpha, cfg.margin.m)
            if cfg.self_distill is not None:
                terms["self_distill"] = cfg.self_distill.alpha * losses.kl_divergence(lo, main.detach(), labels)
        if anchor and cfg.kl_anchor is not None:
            if not isinstance(self.model, LoopedModel) or not self.model.has_base:
                raise MythicError("loss.kl_anchor needs a model with a base (the retrofit wrapper)")
            with torch.no_grad(), self.model.base_mode():
                base = logits_of(self.model(input_ids, n_loops=1, logits_to_keep=keep)).unsqueeze(0)
            terms["kl_anchor"] = cfg.kl_anchor.alpha * losses.kl_divergence(base, main, labels)
        aux: dict[str, list[torch.Tensor]] = {}
        for out in outs:
            for name, value in losses.model_aux_terms(out).items():
                aux.setdefault(name, []).append(value)
        for name, values in aux.items():
            terms[f"aux_{name}"] = cfg.aux_weights.get(name, 1.0) * torch.stack(values).mean()
        loss = terms["ce"] if cfg.dual_t is None else 0.5 * (terms["ce_lo"] + terms["ce_hi"])
        for name, value in terms.items():
            if not name.startswith("ce"):  # the added terms: margin, self-distillation, KL anchor, model aux
                loss = loss + value
        result = {name: value.detach() for name, value in terms.items()}
        seq_ce = [losses.sequence_ce(x.detach(), labels, rows, batch) for x in logits]
        seq_loops = [torch.tensor(d.per_sequence(batch)) for d in depths]
        return result | {"loss": loss, "seq_ce": torch.cat(seq_ce), "seq_loops": torch.cat(seq_loops)}
