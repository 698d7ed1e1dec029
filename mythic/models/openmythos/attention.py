"""Attention for OpenMythos: GQA and MLA on ``scaled_dot_product_attention``, RoPE, masks.

Both read and write the model's cache at their layer index (in a looped pass, the view that maps it to
that pass's slot: ``recurrence/cache.py``) and run the same code with and without a cache: new keys are
appended, then attention covers the whole cached sequence.

GQA (Ainslie et al.): q = W_q x (H heads), k, v = W_k x, W_v x (H_kv heads), RoPE on q, k;
the cache holds k and v: 2 · H_kv · d_head values per token.

MLA (DeepSeek-V2):
    c_q = norm(W_qa x) (or x when q_lora_rank = 0);  [q_nope | q_pe] = W_qb c_q per head
    [c | k_pe] = W_kva x;  c ← norm(c)   (latent, kv_lora_rank);  k_pe shared by all heads
    [k_nope | v] = W_kvb c per head;  score = q_nope·k_nope + RoPE(q_pe)·RoPE(k_pe)
The cache holds [c | RoPE(k_pe)] only: kv_lora_rank + qk_rope_head_dim values per token.
Two equal forms of the same attention:
  expanded  (no past in the cache: training, first prefill) — k_nope, v from W_kvb c;
  absorbed  (past in the cache: decoding, chunked prefill) — W_UK is folded into the query
            (q_lat = q_nope W_UK, score = q_lat·c + q_pe·k_pe) and W_UV into the output
            (o = (softmax · c) W_UV), so the cache is never re-expanded per head; the heads share
            one key, so they are folded into the query rows of a single SDPA call over the latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mythic.models.openmythos.config import MythosConfig
from mythic.recurrence.cache import CacheView

LORA_TARGETS = ("wq", "wq_a", "wo")


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (B, 1, T, dim) in float32 for integer positions (B, T) (rotate-half layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    angles = positions.float().unsqueeze(-1) * inv_freq
    angles = torch.cat([angles, angles], dim=-1).unsqueeze(1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x·cos + rotate_half(x)·sin, computed in float32, for x (B, H, T, dim)."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


@dataclass
class AttentionMask:
    """What SDPA gets: a boolean ``mask`` (True = attend) of shape (B | 1, 1, T, S), or ``causal``."""

    mask: torch.Tensor | None
    causal: bool

    @classmethod
    def build(cls, past: int, length: int, padding: torch.Tensor | None, device: torch.device) -> AttentionMask:
        """Causal over past + new keys, minus padded keys (``padding`` (B, past + length), 1 = token).

        A query always sees its own key, so a padded query row is never empty (no NaN).
        """
        if padding is None and past == 0:
            return cls(None, causal=True)
        if padding is None and length == 1:
            return cls(None, causal=False)
        total = past + length
        allowed = torch.ones(1, 1, length, total, dtype=torch.bool, device=device).tril(past)  # key ≤ query
        if padding is not None:
            allowed = (allowed & padding.bool().view(-1, 1, 1, total)) | allowed.triu(past)  # | key = query
        return cls(allowed, causal=False)

    def rows(self, rows: torch.Tensor, index: torch.Tensor | None, past: int, length: int) -> AttentionMask:
        """The mask of the batch rows ``rows`` (R,) and in them the query positions ``index`` (R, Q) of
        the ``length`` new tokens (None: all of them; keys unchanged)."""
        if index is None:
            whole = self.mask is None or self.mask.shape[0] == 1
            return self if whole else AttentionMask(self.mask[rows], self.causal)
        total = past + length
        full = self.mask
        if full is None:
            full = torch.ones(1, 1, length, total, dtype=torch.bool, device=index.device).tril(past)
        full = full.expand(len(rows), 1, length, total) if full.shape[0] == 1 else full[rows]
        picked = full.gather(2, index.view(index.shape[0], 1, -1, 1).expand(-1, 1, -1, total))
        return AttentionMask(picked, causal=False)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: AttentionMask,
    dropout: float,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """SDPA, with the narrower of the q/k and v head widths zero-padded to the other.

    Equal widths let the fused (flash) kernels run on CPU and GPU; zero columns change
    neither the scores (scale given explicitly) nor the kept output columns.
    """
    dq, dv = q.shape[-1], v.shape[-1]
    scale = 1.0 / math.sqrt(dq) if scale is None else scale
    if dv < dq:
        v = F.pad(v, (0, dq - dv))
    elif dq < dv:
        q, k = F.pad(q, (0, dv - dq)), F.pad(k, (0, dv - dq))
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask.mask, is_causal=mask.causal, dropout_p=dropout, scale=scale, enable_gqa=enable_gqa
    )
    return out[..., :dv]


class GQAttention(nn.Module):
    """Grouped-query attention; see the module docstring."""

    def __init__(self, cfg: MythosConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = cfg.dim // cfg.n_heads
        self.dropout = cfg.dropout
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * self.head_dim, cfg.dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: AttentionMask,
        cache: CacheView | None,
        layer_idx: int,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v, layer_idx)
        dropout = self.dropout if self.training else 0.0
        out = attend(q, k, v, mask, dropout, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


class MLAttention(nn.Module):
    """Multi-head latent attention with a latent-only cache and absorbed decoding; see the module docstring."""

    def __init__(self, cfg: MythosConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.rank = cfg.kv_lora_rank
        self.nope, self.rope_dim, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.scale = 1.0 / math.sqrt(self.nope + self.rope_dim)
        self.dropout = cfg.dropout
        q_out = cfg.n_heads * (self.nope + self.rope_dim)
        if cfg.q_lora_rank:
            self.wq_a = nn.Linear(cfg.dim, cfg.q_lora_rank, bias=False)
            self.q_norm = nn.RMSNorm(cfg.q_lora_rank, eps=1e-6)
            self.wq_b = nn.Linear(cfg.q_lora_rank, q_out, bias=False)
        else:
            self.wq = nn.Linear(cfg.dim, q_out, bias=False)
        self.wkv_a = nn.Linear(cfg.dim, self.rank + self.rope_dim, bias=False)
        self.kv_norm = nn.RMSNorm(self.rank, eps=1e-6)
        self.wkv_b = nn.Linear(self.rank, cfg.n_heads * (self.nope + self.v_dim), bias=False)
        self.wo = nn.Linear(cfg.n_heads * self.v_dim, cfg.dim, bias=False)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "wq"):
            return self.wq(x)
        return self.wq_b(self.q_norm(self.wq_a(x)))

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: AttentionMask,
        cache: CacheView | None,
        layer_idx: int,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.query(x).view(b, t, self.n_heads, self.nope + self.rope_dim).transpose(1, 2)
        q_nope, q_pe = q.split([self.nope, self.rope_dim], dim=-1)
        q_pe = apply_rope(q_pe, *rope)
        c, k_pe = self.wkv_a(x).split([self.rank, self.rope_dim], dim=-1)
        k_pe = apply_rope(k_pe.unsqueeze(1), *rope)
        latent = torch.cat([self.kv_norm(c).unsqueeze(1), k_pe], dim=-1)  # (B, 1, T, rank + rope)
        if cache is not None:
            latent, _ = cache.update(latent, latent[..., :0], layer_idx)
        dropout = self.dropout if self.training else 0.0
        if latent.shape[2] > t:
            out = self._absorbed(q_nope, q_pe, latent, mask, dropout)
        else:
            out = self._expanded(q_nope, q_pe, latent, mask, dropout)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))

    def _up_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK (H, nope, rank) and W_UV (H, v, rank) as views of W_kvb."""
        w = self.wkv_b.weight.view(self.n_heads, self.nope + self.v_dim, self.rank)
        return w[:, : self.nope], w[:, self.nope :]

    def _expanded(
        self, q_nope: torch.Tensor, q_pe: torch.Tensor, latent: torch.Tensor, mask: AttentionMask, dropout: float
    ) -> torch.Tensor:
        b, h, s = q_nope.shape[0], self.n_heads, latent.shape[2]
        c, k_pe = latent.squeeze(1).split([self.rank, self.rope_dim], dim=-1)
        kv = self.wkv_b(c).view(b, s, h, self.nope + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        k = torch.cat([k_nope, k_pe.unsqueeze(1).expand(b, h, s, self.rope_dim)], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1)
        return attend(q, k, v, mask, dropout, scale=self.scale)

    def _absorbed(
        self, q_nope: torch.Tensor, q_pe: torch.Tensor, latent: torch.Tensor, mask: AttentionMask, dropout: float
    ) -> torch.Tensor:
        b, h, t = q_nope.shape[:3]
        w_uk, w_uv = self._up_weights()
        q_lat = torch.einsum("bhtn,hnr->bhtr", q_nope, w_uk)
        q = torch.cat([q_lat, q_pe], dim=-1).reshape(b, 1, h * t, self.rank + self.rope_dim)
        folded = mask
        if mask.mask is not None:
            folded = AttentionMask(mask.mask.repeat(1, 1, h, 1), causal=False)
        o = attend(q, latent, latent, folded, dropout, scale=self.scale)[..., : self.rank]  # value = c
        return torch.einsum("bhtr,hvr->bhtv", o.reshape(b, h, t, self.rank), w_uv)


def make_attention(cfg: MythosConfig) -> nn.Module:
    return MLAttention(cfg) if cfg.attn_type == "mla" else GQAttention(cfg)
