"""The peft LoRA on a frozen base: one ``LoraConfig`` from a spec, for training and for loading.

A spec is the recipe's ``trainable.lora`` as a mapping (also what ``base_lora.json`` holds):
``rank``, ``alpha``, ``dropout``, ``target_modules``, ``target_parameters`` (3-D MoE expert
weights) and ``layers`` (peft's ``layers_to_transform``; absent or None: every layer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def lora_config(spec: Mapping[str, Any]) -> Any:
    """peft's ``LoraConfig`` for ``spec``."""
    from peft import LoraConfig

    return LoraConfig(
        r=spec["rank"],
        lora_alpha=spec["alpha"],
        lora_dropout=spec.get("dropout", 0.0),
        target_modules=spec.get("target_modules") or None,
        target_parameters=spec.get("target_parameters") or None,
        layers_to_transform=spec.get("layers"),
    )
