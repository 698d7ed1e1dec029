"""bitsandbytes 4-bit bases, for every phase that loads one (sanity, train): config, experts, CPU fix, memory.

Linear layers are quantised by transformers' ``BitsAndBytesConfig`` load (nf4 or fp4, double quant, a
compute dtype); 3-D parameters (fused MoE experts, which ``Linear4bit`` never sees) go through
``bitsandbytes.nn.parametrize.replace_parameter_4bit``, module by module on the target device
(``finish_4bit``). Both phases quantise the same tensors, so sanity's estimate is what train loads.

Memory estimate, from a meta-device skeleton of the base's config (parameter counts only):

    bf16 / fp32 / fp16       n · itemsize bytes per tensor
    4-bit                    ⌈n/2⌉ (nibbles) + ⌈n/64⌉ (uint8 absmax per 64-block) + 4·⌈n/16384⌉ (fp32 absmax
                             per 256 blocks, double quant) + 1092 (code books, offset) bytes for a quantised
                             tensor: the weights of every nn.Linear but the output head (what transformers
                             converts to Linear4bit) and every 3-D parameter; everything else is bf16
    activations              B·S·(12·V + 16·H·itemsize) for a probe forward (float32 logits, a few hidden
                             states), plus the largest 3-D parameter dequantised to bf16 (4-bit only)

The 4-bit load goes through the CPU first (Linear layers quantised, 3-D expert weights still bf16: the
host "load peak"); ``mythic sanity`` refuses it with a one-line error when the estimate exceeds the free
GPU memory (``torch.cuda.mem_get_info``) or the available RAM (``psutil``).

CPU fix: bitsandbytes' packed CPU kernel (AVX512-BF16 CPUs, under ``no_grad``) asserts unless
``out_features % 32 == 0`` and ``in_features % 64 == 0``; other Linear4bit modules get
``support_avx512bf16_for_cpu = False`` (the generic dequantise-then-matmul path).
"""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel
from transformers.quantizers.base import get_keys_to_not_convert

from mythic.errors import MythicError
from mythic.loading import load_base_model

CPU_PACKED_OUT, CPU_PACKED_IN = 32, 64
QUANT_CONSTANT_BYTES = 256 * 4 + 16 * 4 + 4


@dataclass
class MemoryEstimate:
    """Bytes a load will need; see the module docstring."""

    device: str
    quantized: bool
    weights: int
    activations: int
    load_peak: int
    available: int
    host_available: int
    parameters: int
    quantized_parameters: int

    @property
    def need(self) -> int:
        return self.weights + self.activations


def quantized_tensor_bytes(n: int) -> int:
    """Bytes of one nf4 double-quant tensor of n values (module docstring)."""
    return math.ceil(n / 2) + math.ceil(n / 64) + 4 * math.ceil(n / (64 * 256)) + QUANT_CONSTANT_BYTES


def skeleton(config: Any) -> PreTrainedModel:
    """The base's module tree on the meta device: names, shapes and counts, no memory."""
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()
    return model


def quantizable(model: PreTrainedModel) -> tuple[set[str], set[str]]:
    """(Linear weights transformers converts to Linear4bit, 3-D parameters) by parameter name."""
    kept = set(get_keys_to_not_convert(model)) | set(getattr(model, "_keep_in_fp32_modules", None) or [])
    linear = {
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not any(name == k or name.startswith(f"{k}.") for k in kept)
    }
    cubes = {name for name, p in model.named_parameters() if p.ndim == 3}
    return linear, cubes


def available_memory(device: str) -> tuple[int, int]:
    """(free bytes on ``device``, available host RAM)."""
    host = int(psutil.virtual_memory().available)
    free = torch.cuda.mem_get_info(torch.device(device))[0] if device.startswith("cuda") else host
    return int(free), host


def estimate_memory(
    config: Any, *, quantize: bool, dtype: torch.dtype, device: str, rows: int, seq_len: int
) -> MemoryEstimate:
    """What loading and probing the base will take; see the module docstring."""
    model = skeleton(config)
    linear, cubes = quantizable(model) if quantize else (set(), set())
    itemsize = torch.tensor([], dtype=torch.bfloat16 if quantize else dtype).element_size()
    weights = load_peak = quantized = total = largest_cube = 0
    for name, p in model.named_parameters():  # a tied tensor once, under its first name
        n = p.numel()
        total += n
        if name in linear or name in cubes:
            quantized += n
            weights += quantized_tensor_bytes(n)
            load_peak += quantized_tensor_bytes(n) if name in linear else n * itemsize
            largest_cube = max(largest_cube, n if name in cubes else 0)
        else:
            weights += n * itemsize
            load_peak += n * itemsize
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    text = config.get_text_config(decoder=True)
    activations = rows * seq_len * (12 * text.vocab_size + 16 * text.hidden_size * itemsize) + 2 * largest_cube
    free, host = available_memory(device)
    return MemoryEstimate(
        device=device,
        quantized=quantize,
        weights=weights + buffers,
        activations=activations,
        load_peak=load_peak + buffers if quantize else 0,
        available=free,
        host_available=host,
        parameters=total,
        quantized_parameters=quantized,
    )


def check_fits(estimate: MemoryEstimate) -> None:
    """One-line refusal when the base will not fit the device (or, for a 4-bit load, the host)."""
    gb = 1e9
    where = "free GPU memory" if estimate.device.startswith("cuda") else "available RAM"
    if estimate.need > estimate.available:
        raise MythicError(
            f"the base needs about {estimate.need / gb:.2f} GB on {estimate.device} "
            f"(weights {estimate.weights / gb:.2f} GB + activations {estimate.activations / gb:.2f} GB), "
            f"only {estimate.available / gb:.2f} GB {where}" + ("" if estimate.quantized else "; try --4bit")
        )
    if estimate.quantized and estimate.load_peak > estimate.host_available:
        raise MythicError(
            f"loading the 4-bit base needs about {estimate.load_peak / gb:.2f} GB of RAM before its expert weights "
            f"are quantised, only {estimate.host_available / gb:.2f} GB available"
        )


# ----------------------------------------------------------------------------- loading


def quantization_config(
    kind: str = "nf4", double_quant: bool = True, compute_dtype: torch.dtype = torch.bfloat16
) -> Any:
    """transformers' ``BitsAndBytesConfig`` for a 4-bit load (what its Linear layers become)."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=kind,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def fix_cpu_packing(model: nn.Module) -> list[str]:
    """Send Linear4bit modules the packed CPU kernel cannot take to the generic path; returns their names."""
    import bitsandbytes as bnb

    fixed = []
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit) and (
            module.out_features % CPU_PACKED_OUT or module.in_features % CPU_PACKED_IN
        ):
            module.support_avx512bf16_for_cpu = False
            fixed.append(name)
    return fixed


def load_base(
    base_dir: Path, *, quantize: bool, dtype: torch.dtype, device: str
) -> tuple[PreTrainedModel, list[str], int]:
    """(model in eval mode, Linear4bit modules on the generic CPU path, 3-D parameters quantised)."""
    if not quantize:
        return load_base_model(base_dir, dtype=dtype, device_map={"": device}).eval(), [], 0
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MythicError("--4bit needs bitsandbytes: pip install 'mythic[quant]'")
    model = load_base_model(
        base_dir, quantization_config=quantization_config(), dtype=torch.bfloat16, device_map={"": "cpu"}
    )
    generic, cubes = finish_4bit(model, device)
    return model.eval(), generic, cubes


def finish_4bit(
    model: nn.Module, device: str | torch.device, kind: str = "nf4", double_quant: bool = True
) -> tuple[list[str], int]:
    """What transformers' 4-bit load leaves undone: quantise the 3-D expert weights on ``device``, module by
    module, move the model there, and on the CPU route unpackable widths to the generic kernel.
    Returns (Linear4bit modules on the generic CPU path, 3-D parameters quantised)."""
    from bitsandbytes.nn.parametrize import replace_parameter_4bit

    cubes = 0
    for module in list(model.modules()):
        names = [name for name, p in module.named_parameters(recurse=False) if p.ndim == 3]
        if names:
            module.to(device)
        for name in names:
            replace_parameter_4bit(module, name, compress_statistics=double_quant, quant_type=kind)
            cubes += 1
    model.to(device)
    generic = fix_cpu_packing(model) if torch.device(device).type == "cpu" else []
    return generic, cubes


def unquantized_parameters(model: PreTrainedModel) -> list[dict[str, Any]]:
    """Parameters left in bf16 by a 4-bit load, grouped by name pattern, with the reason."""
    import bitsandbytes as bnb

    owners = {id(p): module for module in model.modules() for p in module.parameters(recurse=False)}
    head = model.get_output_embeddings()
    groups: dict[str, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        module = owners[id(p)]
        if isinstance(p, bnb.nn.Params4bit) or ".parametrizations." in name:
            continue
        if module is head:
            why = "output head (or the embedding tied to it): transformers keeps it unquantised"
        elif isinstance(module, nn.Embedding):
            why = "embedding: bitsandbytes quantises nn.Linear only"
        elif p.ndim == 1:
            why = "1-D (norm weight or bias)"
        else:
            why = f"{p.ndim}-D parameter outside nn.Linear"
        pattern = re.sub(r"\.\d+(?=\.|$)", ".*", name)
        group = groups.setdefault(pattern, {"name": pattern, "tensors": 0, "values": 0, "why": why})
        group["tensors"] += 1
        group["values"] += p.numel()
    return sorted(groups.values(), key=lambda g: -g["values"])


def count_quantized(model: nn.Module) -> int:
    import bitsandbytes as bnb

    return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
