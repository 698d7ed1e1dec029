"""Build the model a recipe names, choose its trainable parameters and their optimizer groups.

``model.kind``:
- ``retrofit``: ``mythic.loading.load_checkpoint(checkpoint)`` (the base comes from its config)
- ``surgery``: load the HF base, then ``RetrofitForCausalLM.from_base(base, **surgery)`` in memory
- ``openmythos``: ``OpenMythosForCausalLM`` built from scratch from ``MythosConfig(**config)``; all of
  it trains, its MoE balance / ACT ponder terms come back as ``out.aux_losses``. Its tokenizer (a
  folder, or ``chars``: built from the task files) sets the vocabulary size when the config gives
  none, and the EOS / padding ids.

A 4-bit base is loaded as ``mythic sanity`` loads it (``mythic.quant``).

Trainable set: the recurrence modules (``model.recurrence_parameters()``) and, optionally, a peft LoRA
on the frozen base (``target_modules`` for Linear layers, ``target_parameters`` for 3-D MoE expert
weights); everything else is frozen.

Weight decay (``param_groups``, one rule for both kinds) goes by what a parameter is, not its shape:
the weight matrices of Linear, Embedding and convolution layers, the Depth-LoRA matrices (A_t, B_t) and
the MoE expert matrices decay; norms, biases and the recurrence's stability and mixing parameters (LTI
A_log / dt_bias / B, gates, LayerScale, loop embedding γ, token convolution) do not: their decay would
pull ρ(Ā) toward 1 or switch the loops off (gate and LayerScale values are stored (n_loops, 1), which a
shape rule would decay).
"""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mythic.errors import MythicError
from mythic.loading import DTYPES, load_base_model, load_checkpoint
from mythic.lora import lora_config
from mythic.models.openmythos import MythosConfig, OpenMythosConfig, OpenMythosForCausalLM
from mythic.models.retrofit import RetrofitForCausalLM
from mythic.quant import finish_4bit, quantization_config
from mythic.train.data import recipe_tokenizer
from mythic.train.recipe import Data, Lora, ModelSpec, OpenMythosModel, Recipe, RetrofitModel


def build_model(spec: ModelSpec, device: torch.device, data: Data) -> tuple[nn.Module, Any]:
    """(model on ``device``, tokenizer) for a recipe's model section (``data.tokenizer`` overrides the model's)."""
    tokenizer_path = data.tokenizer
    if isinstance(spec, OpenMythosModel):
        tokenizer = recipe_tokenizer(tokenizer_path or spec.tokenizer, data)
        settings = {"vocab_size": len(tokenizer), **spec.config.model_dump(exclude_none=True)}
        if settings["vocab_size"] < len(tokenizer):
            raise MythicError(
                f"recipe model.config.vocab_size: {settings['vocab_size']} is below the tokenizer's {len(tokenizer)}"
            )
        special = {name: getattr(tokenizer, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
        config = OpenMythosConfig.from_mythos(MythosConfig(**settings), **special)
        model = OpenMythosForCausalLM(config).to(device=device, dtype=DTYPES[spec.dtype])
        return model, tokenizer

    kwargs: dict[str, Any] = {"dtype": DTYPES[spec.dtype]}
    if (q := spec.quantization) is not None:
        kwargs["quantization_config"] = quantization_config(q.kind, q.double_quant, DTYPES[q.compute_dtype])
        kwargs["device_map"] = {"": "cpu"}  # its expert cubes are still bf16 here: quantised on the device later
    if isinstance(spec, RetrofitModel):
        if not Path(spec.checkpoint).is_dir():
            raise MythicError(f"recipe model.checkpoint: {spec.checkpoint} is not a folder")
        model = load_checkpoint(Path(spec.checkpoint), **kwargs).train()
        base_path = tokenizer_path or model.config.base_name_or_path or spec.checkpoint
    else:
        if not Path(spec.base).is_dir():
            raise MythicError(f"recipe model.base: {spec.base} is not a folder (run mythic fetch base first)")
        base = load_base_model(Path(spec.base), **kwargs)
        settings = {"base_name_or_path": str(spec.base), **spec.surgery.model_dump()}
        model = RetrofitForCausalLM.from_base(base, **settings)
        base_path = tokenizer_path or spec.base
    if q is not None:
        finish_4bit(model.base, device, q.kind, q.double_quant)
    return model.to(device), recipe_tokenizer(base_path)


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
    elif recipe.trainable.recurrence:  # but the depth head, fitted after training (``train/depth.py``)
        selected.update((n, p) for n, p in model.recurrence_parameters() if ".depth_head." not in n)
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


def param_groups(
    model: nn.Module,
    trainable: dict[str, nn.Parameter],
    weight_decay: float,
    lr: float | None = None,
    lr_scale: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """AdamW groups: ``weight_decay`` for the decayed kinds of parameter, none for the rest; tied weights once.
    ``lr_scale`` (fnmatch pattern → factor, the first matching pattern wins) puts the parameters it names in
    groups of their own at ``lr`` × factor (the schedule scales every group alike)."""
    scales = lr_scale or {}
    for pattern in scales:
        if not any(fnmatch(name, pattern) for name in trainable):
            raise MythicError(f"optim.lr_scale: {pattern!r} matches no trainable parameter")
    decayed = decayed_parameters(model)
    seen: set[int] = set()
    by_key: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, param in trainable.items():
        if id(param) in seen:  # tied weights once, by their first name
            continue
        seen.add(id(param))
        factor = next((f for pattern, f in scales.items() if fnmatch(name, pattern)), 1.0)
        by_key.setdefault((id(param) in decayed, factor), []).append(param)
    groups = [{"params": by_key[(True, 1.0)], "weight_decay": weight_decay}] if (True, 1.0) in by_key else []
    groups.append({"params": by_key.get((False, 1.0), []), "weight_decay": 0.0})
    for (decay, factor), params in by_key.items():
        if factor != 1.0:
            assert lr is not None, "a scaled group needs the base learning rate"
            groups.append({"params": params, "weight_decay": weight_decay if decay else 0.0, "lr": lr * factor})
    return groups
