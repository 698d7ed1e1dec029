"""``MythosConfig``: the OpenMythos configuration reference, validated at construction.

Fields follow the reference (seeds/003); of note: max_loop_iters is also the default n_loops,
n_experts (routed) and n_experts_per_tok (top-k) size the MoE, attn_type is "mla" | "gqa", q_lora_rank
= 0 means no query compression and lora_rank (per-loop Depth-LoRA) = 0 none. Additions: ``act`` (False:
the loop output is h_T, no halting), ``router_bias_rate`` (γ of the aux-loss-free balancing update),
``init_std`` (0.02 suits wide models; a tiny model learns far faster near 1/√dim), ``token_conv``
(kernel size of a causal depthwise convolution over the token embeddings, 0 = off: ``model.CausalConv``),
``loop_conv`` (kernel size of a causal depthwise convolution over the loop state at the block's input, every
pass, 0 = off; kernel 2: a token reads its left neighbour once per loop), ``state_norm`` (x_t = Ā ⊙
RMSNorm(h_t) + B̄ e). Prelude and coda use a dense SwiGLU FFN of width
``dense_dim`` = dim·4//3, the recurrent block the MoE; each shared expert has width expert_dim ·
n_experts_per_tok.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mythic.errors import MythicError

ATTN_TYPES = ("mla", "gqa")


@dataclass
class MythosConfig:
    vocab_size: int = 32000
    dim: int = 2048
    n_heads: int = 16
    n_kv_heads: int = 4
    max_seq_len: int = 4096
    max_loop_iters: int = 16
    prelude_layers: int = 2
    coda_layers: int = 2
    n_experts: int = 64
    n_shared_experts: int = 2
    n_experts_per_tok: int = 4
    expert_dim: int = 512
    lora_rank: int = 16
    attn_type: str = "mla"
    kv_lora_rank: int = 512
    q_lora_rank: int = 1536
    qk_rope_head_dim: int = 64
    qk_nope_head_dim: int = 128
    v_head_dim: int = 128
    rope_theta: float = 500000.0
    act_threshold: float = 0.99
    dropout: float = 0.0
    act: bool = True
    router_bias_rate: float = 1e-3
    init_std: float = 0.02
    token_conv: int = 0
    loop_conv: int = 0
    state_norm: bool = False

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """One-line ``MythicError`` for an impossible configuration."""
        positive = ("vocab_size", "dim", "n_heads", "max_seq_len", "max_loop_iters", "n_experts", "expert_dim")
        for name in positive:
            if getattr(self, name) < 1:
                raise MythicError(f"MythosConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("prelude_layers", "coda_layers", "n_shared_experts", "lora_rank", "token_conv", "loop_conv"):
            if getattr(self, name) < 0:
                raise MythicError(f"MythosConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.loop_conv == 1:
            raise MythicError("MythosConfig.loop_conv must be 0 (off) or >= 2 (a token reads k − 1 tokens back), got 1")
        if self.attn_type not in ATTN_TYPES:
            raise MythicError(f"MythosConfig.attn_type must be one of {ATTN_TYPES}, got {self.attn_type!r}")
        if not 1 <= self.n_experts_per_tok <= self.n_experts:
            raise MythicError(
                f"MythosConfig.n_experts_per_tok must be in [1, n_experts={self.n_experts}], "
                f"got {self.n_experts_per_tok}"
            )
        if not 0.0 < self.act_threshold <= 1.0:
            raise MythicError(f"MythosConfig.act_threshold must be in (0, 1], got {self.act_threshold}")
        if not 0.0 <= self.dropout < 1.0:
            raise MythicError(f"MythosConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.attn_type == "gqa":
            if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
                raise MythicError(f"GQA needs dim ({self.dim}) divisible by n_heads ({self.n_heads}) into even heads")
            if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
                raise MythicError(f"GQA needs n_heads ({self.n_heads}) divisible by n_kv_heads ({self.n_kv_heads})")
        else:
            for name in ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
                if getattr(self, name) < 1:
                    raise MythicError(f"MLA needs MythosConfig.{name} >= 1, got {getattr(self, name)}")
            if self.qk_rope_head_dim % 2:
                raise MythicError(f"MLA needs an even qk_rope_head_dim, got {self.qk_rope_head_dim}")
            if self.q_lora_rank < 0:
                raise MythicError(
                    f"MythosConfig.q_lora_rank must be >= 0 (0: no query compression), got {self.q_lora_rank}"
                )

    @property
    def dense_dim(self) -> int:
        """Hidden width of the dense SwiGLU FFN in prelude and coda layers."""
        return self.dim * 4 // 3

    @property
    def rope_dim(self) -> int:
        """Channels per head that receive RoPE."""
        return self.qk_rope_head_dim if self.attn_type == "mla" else self.dim // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MythosConfig:
        """Build from a mapping (a recipe's ``model.config``); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MythicError(f"MythosConfig has no field {unknown[0]!r}")
        return cls(**data)
