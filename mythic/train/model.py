"""Build the model a recipe names, choose its trainable parameters and their optimizer groups.

``model.kind``:
- ``retrofit``: ``MythicForCausalLM.from_pretrained(checkpoint)`` (the base comes from its config)
- ``surgery``: load the HF base, then ``MythicForCausalLM.from_base(base, **surgery)`` in memory
- ``openmythos``: ``MythosForCausalLM`` (the HF-native OpenMythos) built from scratch from
  ``MythosConfig(**config)``; all of it trains, its MoE balance / ACT ponder terms come back
  as ``out.aux_losses``. Its tokenizer (a folder, or ``chars``: built from the task files) sets
  the vocabulary size when the config gives none, and the EOS / padding ids generation uses.

A 4-bit base uses ``transformers.BitsAndBytesConfig`` (nf4/fp4, double quant, compute dtype).
Trainable set: the recurrence modules (``model.recurrence_parameters()``) and, optionally, a
peft LoRA on the frozen base (``target_modules`` for Linear layers, ``target_parameters``
for 3-D MoE expert weights); everything else is frozen.

Weight decay (``param_groups``, the one rule for the retrofit and the from-scratch model) is
decided by what a parameter is, not its shape: the weight matrices of Linear, Embedding and
convolution layers, the Depth-LoRA matrices (A_t, B_t) and the MoE expert matrices decay;
everything else does not: norms, biases, and the recurrence's stability and mixing parameters
(LTI A_log / dt_bias / B, gates, LayerScale, loop embedding γ, token convolution), whose decay
would pull ρ(Ā) toward 1 or switch the loops off (gate and LayerScale values are stored
(n_loops, 1): a shape rule decayed them).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mythic.errors import MythicError
from mythic.lora import lora_config
from mythic.surgery import DTYPES
from mythic.train.data import load_tokenizer
from mythic.train.recipe import Data, Lora, ModelSpec, OpenMythosModel, Quantization, Recipe, RetrofitModel

SURGERY_RESERVED = {"text_config", "base_name_or_path", "base_revision"}


def quantization_config(spec: Quantization) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=spec.kind,
        bnb_4bit_use_double_quant=spec.double_quant,
        bnb_4bit_compute_dtype=DTYPES[spec.compute_dtype],
    )


def check_surgery_keys(settings: dict[str, Any]) -> None:
    """Surgery settings must be ``MythicConfig`` fields (a PreTrainedConfig would swallow typos)."""
    from mythic.models.retrofit import MythicConfig

    allowed = sorted(set(MythicConfig.__annotations__) - SURGERY_RESERVED)
    for key in settings:
        if key not in allowed:
            raise MythicError(f"recipe model.surgery.{key}: unknown surgery setting (expected one of {allowed})")


def _load_kwargs(spec: RetrofitModel | Any, device: torch.device) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dtype": DTYPES[spec.dtype]}
    if spec.quantization is not None:
        kwargs["quantization_config"] = quantization_config(spec.quantization)
        kwargs["device_map"] = {"": device}
    return kwargs


def build_model(spec: ModelSpec, device: torch.device, data: Data) -> tuple[nn.Module, Any]:
    """(model on ``device``, tokenizer) for a recipe's model section (``data.tokenizer`` overrides the model's)."""
    tokenizer_path = data.tokenizer
    if isinstance(spec, OpenMythosModel):
        from mythic.models.openmythos import MythosConfig, MythosForCausalLM, MythosHFConfig

        fields = [f.name for f in dataclasses.fields(MythosConfig)]
        for key in spec.config:
            if key not in fields:
                raise MythicError(f"recipe model.config.{key}: unknown MythosConfig field (expected one of {fields})")
        tokenizer = load_tokenizer(tokenizer_path or spec.tokenizer, data)
        settings = {"vocab_size": len(tokenizer), **spec.config}
        if settings["vocab_size"] < len(tokenizer):
            raise MythicError(
                f"recipe model.config.vocab_size: {settings['vocab_size']} is below the tokenizer's {len(tokenizer)}"
            )
        special = {
            name: getattr(tokenizer, name)
            for name in ("bos_token_id", "eos_token_id", "pad_token_id")
            if getattr(tokenizer, name) is not None
        }
        config = MythosHFConfig.from_mythos(MythosConfig(**settings), **special)
        model = MythosForCausalLM(config).to(device=device, dtype=DTYPES[spec.dtype])
        return model, tokenizer

    from mythic.models.retrofit import MythicForCausalLM

    kwargs = _load_kwargs(spec, device)
    if isinstance(spec, RetrofitModel):
        if not Path(spec.checkpoint).is_dir():
            raise MythicError(f"recipe model.checkpoint: {spec.checkpoint} is not a folder")
        model = MythicForCausalLM.from_pretrained(spec.checkpoint, **kwargs)
        base_path = tokenizer_path or model.config.base_name_or_path or spec.checkpoint
    else:
        from transformers import AutoModelForCausalLM

        check_surgery_keys(spec.surgery)
        if not Path(spec.base).is_dir():
            raise MythicError(f"recipe model.base: {spec.base} is not a folder (run mythic fetch base first)")
        base = AutoModelForCausalLM.from_pretrained(spec.base, **kwargs)
        settings = {"base_name_or_path": str(spec.base), **spec.surgery}
        model = MythicForCausalLM.from_base(base, **settings)
        base_path = tokenizer_path or spec.base
    if spec.quantization is None:
        model = model.to(device)
    elif device.type == "cpu":
        plain_cpu_4bit(model)
    return model, load_tokenizer(base_path)


def plain_cpu_4bit(model: nn.Module) -> None:
    """bitsandbytes' packed CPU 4-bit path fails on widths that are not a multiple of its block
    size; its plain path works for every width."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def add_lora(model: nn.Module, spec: Lora) -> None:
    """Inject a peft LoRA into the model's frozen base (adapter name ``default``)."""
    from peft import inject_adapter_in_model

    base = getattr(model, "base", model)
    try:
        inject_adapter_in_model(lora_config(spec.model_dump()), base)
    except ValueError as err:
        raise MythicError(f"recipe trainable.lora: {str(err).splitlines()[0]}") from None


def select_trainable(model: nn.Module, recipe: Recipe) -> dict[str, nn.Parameter]:
    """Freeze everything, then unfreeze the recipe's trainable set; returns it by name."""
    if recipe.trainable.lora is not None:
        add_lora(model, recipe.trainable.lora)
    for param in model.parameters():
        param.requires_grad_(False)
    selected: dict[str, nn.Parameter] = {}
    if recipe.model.kind == "openmythos" or recipe.trainable.base:
        selected.update(model.named_parameters())
    elif recipe.trainable.recurrence:
        selected.update(model.recurrence_parameters())
    if recipe.trainable.lora is not None:
        selected.update((n, p) for n, p in model.named_parameters() if "lora_" in n)
    if not selected:
        raise MythicError("recipe trainable: nothing to train (enable recurrence or lora)")
    for param in selected.values():
        param.requires_grad_(True)
    return selected


def decayed_parameters(model: nn.Module) -> set[int]:
    """Ids of the parameters that get weight decay (see the module docstring)."""
    from mythic.models.openmythos.moe import MoE
    from mythic.recurrence.depth_lora import LoRADelta

    ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding | nn.Conv1d):
            ids.add(id(module.weight))
        elif isinstance(module, LoRADelta):
            ids.update((id(module.A), id(module.B)))
        elif isinstance(module, MoE):
            ids.update((id(module.w1), id(module.w2), id(module.w3)))
    return ids


def param_groups(model: nn.Module, trainable: dict[str, nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: ``weight_decay`` for the decayed kinds of parameter, none for the rest; tied weights once."""
    decayed = decayed_parameters(model)
    unique = list({id(p): p for p in trainable.values()}.values())
    decay = [p for p in unique if id(p) in decayed]
    no_decay = [p for p in unique if id(p) not in decayed]
    groups = [{"params": no_decay, "weight_decay": 0.0}]
    if decay:
        groups.insert(0, {"params": decay, "weight_decay": weight_decay})
    return groups
