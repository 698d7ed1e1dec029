"""Pre-configured OpenMythos sizes, ``mythos_1b`` … ``mythos_1t``, and their parameter counts.

The configurations are the reference's; ``count_parameters`` builds the model on the meta device and
returns (total, active per token): active counts the top-k routed experts instead of all of them and
one loop's Depth-LoRA deltas; the embedding, tied to the head, is counted once.

    variant   total / active (reference)      variant   total / active (reference)
    1b        1.06 B / 0.31 B                 100b      99.6 B / 16.9 B
    3b        3.04 B / 0.78 B                 500b      498 B  / 70 B
    10b       9.98 B / 1.40 B                 1t        999 B  / 143 B
    50b       50.4 B / 5.2 B
"""

from __future__ import annotations

import torch

from mythic.models.openmythos.config import MythosConfig
from mythic.models.openmythos.model import OpenMythos


def mythos_1b() -> MythosConfig:
    """dim 2048, 64 experts top-4, 16 loops, 4k context."""
    return MythosConfig(
        vocab_size=32000, dim=2048, n_heads=16, n_kv_heads=4, max_seq_len=4096, max_loop_iters=16,
        prelude_layers=2, coda_layers=2, kv_lora_rank=256, q_lora_rank=512, qk_rope_head_dim=32,
        qk_nope_head_dim=64, v_head_dim=64, n_experts=64, n_shared_experts=2, n_experts_per_tok=4,
        expert_dim=2048, rope_theta=500000.0, lora_rank=8,
    )  # fmt: skip


def mythos_3b() -> MythosConfig:
    """dim 3072, 64 experts top-4, 16 loops, 4k context."""
    return MythosConfig(
        vocab_size=32000, dim=3072, n_heads=24, n_kv_heads=6, max_seq_len=4096, max_loop_iters=16,
        prelude_layers=2, coda_layers=2, kv_lora_rank=384, q_lora_rank=768, qk_rope_head_dim=32,
        qk_nope_head_dim=96, v_head_dim=96, n_experts=64, n_shared_experts=2, n_experts_per_tok=4,
        expert_dim=4096, rope_theta=500000.0, lora_rank=8,
    )  # fmt: skip


def mythos_10b() -> MythosConfig:
    """dim 4096, 128 experts top-4, 24 loops, 8k context."""
    return MythosConfig(
        vocab_size=32000, dim=4096, n_heads=32, n_kv_heads=8, max_seq_len=8192, max_loop_iters=24,
        prelude_layers=2, coda_layers=2, kv_lora_rank=512, q_lora_rank=1024, qk_rope_head_dim=64,
        qk_nope_head_dim=128, v_head_dim=128, n_experts=128, n_shared_experts=2, n_experts_per_tok=4,
        expert_dim=5632, rope_theta=500000.0, lora_rank=16,
    )  # fmt: skip


def mythos_50b() -> MythosConfig:
    """dim 6144, 256 experts top-4, 32 loops, 8k context."""
    return MythosConfig(
        vocab_size=32000, dim=6144, n_heads=48, n_kv_heads=8, max_seq_len=8192, max_loop_iters=32,
        prelude_layers=3, coda_layers=3, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64,
        qk_nope_head_dim=128, v_head_dim=128, n_experts=256, n_shared_experts=4, n_experts_per_tok=4,
        expert_dim=9728, rope_theta=500000.0, lora_rank=32,
    )  # fmt: skip


def mythos_100b() -> MythosConfig:
    """dim 8192, 256 experts top-8, 32 loops, 1M context."""
    return MythosConfig(
        vocab_size=32000, dim=8192, n_heads=64, n_kv_heads=8, max_seq_len=1000000, max_loop_iters=32,
        prelude_layers=4, coda_layers=4, kv_lora_rank=512, q_lora_rank=2048, qk_rope_head_dim=64,
        qk_nope_head_dim=128, v_head_dim=128, n_experts=256, n_shared_experts=4, n_experts_per_tok=8,
        expert_dim=13568, rope_theta=1000000.0, lora_rank=64,
    )  # fmt: skip


def mythos_500b() -> MythosConfig:
    """dim 12288, 512 experts top-8, 48 loops, 1M context."""
    return MythosConfig(
        vocab_size=100000, dim=12288, n_heads=96, n_kv_heads=16, max_seq_len=1000000, max_loop_iters=48,
        prelude_layers=4, coda_layers=4, kv_lora_rank=1024, q_lora_rank=3072, qk_rope_head_dim=64,
        qk_nope_head_dim=128, v_head_dim=128, n_experts=512, n_shared_experts=8, n_experts_per_tok=8,
        expert_dim=23040, rope_theta=1000000.0, lora_rank=128,
    )  # fmt: skip


def mythos_1t() -> MythosConfig:
    """dim 16384, 512 experts top-8, 64 loops, 1M context."""
    return MythosConfig(
        vocab_size=100000, dim=16384, n_heads=128, n_kv_heads=16, max_seq_len=1000000, max_loop_iters=64,
        prelude_layers=6, coda_layers=6, kv_lora_rank=1024, q_lora_rank=4096, qk_rope_head_dim=64,
        qk_nope_head_dim=128, v_head_dim=128, n_experts=512, n_shared_experts=8, n_experts_per_tok=8,
        expert_dim=34560, rope_theta=2000000.0, lora_rank=256,
    )  # fmt: skip


VARIANTS = {
    "1b": mythos_1b,
    "3b": mythos_3b,
    "10b": mythos_10b,
    "50b": mythos_50b,
    "100b": mythos_100b,
    "500b": mythos_500b,
    "1t": mythos_1t,
}


def count_parameters(cfg: MythosConfig) -> tuple[int, int]:
    """(total, active per token) parameters of ``OpenMythos(cfg)``, counted on the meta device."""
    with torch.device("meta"):
        model = OpenMythos(cfg)
    total = sum(p.numel() for p in model.parameters())
    moe = model.block.ffn
    per_expert = (moe.w1.numel() + moe.w3.numel() + moe.w2.numel()) // cfg.n_experts
    inactive = per_expert * (cfg.n_experts - cfg.n_experts_per_tok)
    if model.recurrence.lora is not None:
        lora = sum(p.numel() for p in model.recurrence.lora.parameters())
        inactive += lora - lora // cfg.max_loop_iters
    return total, total - inactive
