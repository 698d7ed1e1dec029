"""Pre-configured OpenMythos sizes, ``variant("1b")`` … ``variant("1t")``, and their parameter counts.

The configurations are the reference's (its ``mythos_1b`` … ``mythos_1t``), one row each;
``count_parameters`` builds the model on the meta device and returns (total, active per token): active
counts the top-k routed experts instead of all of them and one loop's Depth-LoRA deltas; the embedding,
tied to the head, is counted once.

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

COLUMNS = (
    "vocab_size", "dim", "n_heads", "n_kv_heads", "max_seq_len", "max_loop_iters", "prelude_layers",
    "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "n_experts", "n_shared_experts",
    "n_experts_per_tok", "expert_dim", "rope_theta", "lora_rank",
)  # fmt: skip
VARIANTS = {  # one value a name of COLUMNS
    "1b":   ( 32000,  2048,  16,  4,    4096, 16, 2,  256,  512, 32,  64,  64, 2, 4,  2048, 5e5,   8),
    "3b":   ( 32000,  3072,  24,  6,    4096, 16, 2,  384,  768, 32,  96,  64, 2, 4,  4096, 5e5,   8),
    "10b":  ( 32000,  4096,  32,  8,    8192, 24, 2,  512, 1024, 64, 128, 128, 2, 4,  5632, 5e5,  16),
    "50b":  ( 32000,  6144,  48,  8,    8192, 32, 3,  512, 1536, 64, 128, 256, 4, 4,  9728, 5e5,  32),
    "100b": ( 32000,  8192,  64,  8, 1000000, 32, 4,  512, 2048, 64, 128, 256, 4, 8, 13568, 1e6,  64),
    "500b": (100000, 12288,  96, 16, 1000000, 48, 4, 1024, 3072, 64, 128, 512, 8, 8, 23040, 1e6, 128),
    "1t":   (100000, 16384, 128, 16, 1000000, 64, 6, 1024, 4096, 64, 128, 512, 8, 8, 34560, 2e6, 256),
}  # fmt: skip


def variant(name: str) -> MythosConfig:
    """The config of one row of ``VARIANTS``: the coda as deep as the prelude, value heads as wide as the
    no-position query/key part."""
    row = dict(zip(COLUMNS, VARIANTS[name], strict=True))
    return MythosConfig(**row, coda_layers=row["prelude_layers"], v_head_dim=row["qk_nope_head_dim"])


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
