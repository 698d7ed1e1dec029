"""What differs between the supported base families, in one table (``FAMILIES``).

Everything else is the base model's own forward (README, "How it works"), so a family needs no
modeling code here. Notes: qwen3_moe's experts are 3-D params (no Depth-LoRA on them); deepseek_v2
(MLA) has q_b_proj when q_lora_rank is set; gemma4_text's per-layer inputs are sized by the layer count
(no layer dropping) and a block may not straddle its KV-sharing start; gemma4 is the multimodal
checkpoint (Stage-2 base), its text decoder's layers at model.language_model. Layer counts and widths
are read from the decoder's text config (``config.get_text_config(decoder=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from mythic.errors import MythicError


@dataclass(frozen=True)
class Family:
    model_type: str
    lora_targets: tuple[str, ...] = ("q_proj", "o_proj")
    can_drop_layers: bool = True
    layers_path: str = "model.layers"


FAMILIES = {
    f.model_type: f
    for f in (
        Family("llama"),
        Family("mistral"),
        Family("qwen2"),
        Family("qwen3"),
        Family("qwen3_moe"),
        Family("deepseek_v2", lora_targets=("q_proj", "q_b_proj", "o_proj")),
        Family("gemma4_text", can_drop_layers=False),
        Family("gemma4", can_drop_layers=False, layers_path="model.language_model.layers"),
    )
}


def family_of(config: PreTrainedConfig) -> Family:
    """The family entry for a base config, or a one-line error naming the architecture."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise MythicError(f"unsupported architecture {model_type!r}: mythic supports {', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type]


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The base's decoder-layer list (``model.model.layers``, or where its family keeps it)."""
    path = family_of(model.config).layers_path
    layers = model
    for name in path.split("."):
        layers = getattr(layers, name, None)
    if not isinstance(layers, nn.ModuleList):
        raise MythicError(f"{type(model).__name__} has no decoder-layer list at {path}")
    return layers


def check_block(config: PreTrainedConfig, start: int, end: int, drop: tuple[int, int] | None) -> None:
    """Validate a block [start, end) and an optional dropped range against the base config."""
    family = family_of(config)
    text = config.get_text_config(decoder=True)
    n = text.num_hidden_layers
    if not 0 <= start < n:
        raise MythicError(f"block start {start} is out of range: the base has layers 0..{n - 1}")
    if end <= start:
        raise MythicError(f"block end {end} must be greater than block start {start}")
    if end > n:
        raise MythicError(f"block end {end} is out of range: the base has {n} layers")
    if drop is not None:
        a, b = drop
        if not family.can_drop_layers:
            raise MythicError(f"layer dropping is not supported for {family.model_type}")
        if not (0 <= a < b <= start):
            raise MythicError(f"dropped layers {a}:{b} must lie between the prelude and the block start {start}")
    shared_from = n - (getattr(text, "num_kv_shared_layers", 0) or 0)
    if start < shared_from < end:
        raise MythicError(f"block {start}:{end} straddles the KV-sharing start at layer {shared_from}")


def batch_separable(layer: nn.Module) -> bool:
    """Whether a decoder layer can run on some rows of the batch alone: not one that reads or
    stores keys and values shared with other layers (gemma4's KV sharing, kept outside the cache)."""
    attention = getattr(layer, "self_attn", None)
    return not (getattr(attention, "is_kv_shared_layer", False) or getattr(attention, "store_full_length_kv", False))


def final_norm(model: PreTrainedModel) -> nn.Module:
    """The base's final norm, beside its decoder-layer list (``model.model.norm`` and the like)."""
    owner = model
    for name in family_of(model.config).layers_path.split(".")[:-1]:
        owner = getattr(owner, name)
    norm = getattr(owner, "norm", None)
    if not isinstance(norm, nn.Module):
        raise MythicError(f"{type(model).__name__} has no final norm beside its decoder layers")
    return norm
