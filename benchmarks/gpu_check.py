"""What only a GPU can show, at DeepSeek-Coder-V2-Lite's real sizes, in one command (≤ 8 min on one H200).

    python benchmarks/gpu_check.py [--json OUT.json]                  # one CUDA device, no network
    python benchmarks/gpu_check.py --tiny [--json OUT.json]           # every check at tiny sizes on the CPU
    python benchmarks/gpu_check.py --nf4-from-disk [--tmp-dir DIR]    # check 1 through a ~31 GB temp folder

The model is DeepSeek-Coder-V2-Lite-Instruct's architecture with random weights, no download: built
on the meta device from ``AutoConfig.for_model("deepseek_v2", ...)`` (hidden 2048, 27 layers, the
first dense with intermediate 10944, 64 routed experts of width 1408 top-6 plus 2 shared, MLA with
kv_lora_rank 512 and no q LoRA, rope/nope/v head dims 64/128/128, 16 heads, vocab 102400, greedy
routing; the real model's YaRN rope scaling is left out: it changes values, not shapes or cost),
then materialised on the GPU in bf16 with a seeded N(0, 0.02²) init (norm weights 1, biases 0).
``--tiny``: hidden 64, 4 layers, 4 experts top-2, vocab 256, on the CPU (one thread) whatever the
machine has.

Checks, in the table's order (they run as 0, 2, 3, 1, 4, 5, 6: the bf16 model is needed before it
becomes nf4). Each is timed and becomes a row group of one table and an entry of the JSON; one that
raises is recorded as "failed: <one line>" and the others still run:

0. build       the random bf16 model: parameter count, build seconds, transformers' experts kernel.
1. nf4 load    phase 0 (``mythic sanity --4bit``) on this model: the bf16 weights go to the host,
               then every Linear that transformers' 4-bit load converts (``quant.quantizable``)
               becomes an nf4 double-quant ``Linear4bit`` (bf16 compute) on the device, and
               ``quant.finish_4bit`` quantises the fused 3-D experts module by module and moves the
               rest (``quant.load_base``'s steps, without the disk). ``--nf4-from-disk`` saves the bf16
               model to a temp folder and loads it through ``quant.load_base`` itself. Reported: CUDA
               peak allocated during the load (target ≤ 24 GiB), quantised Linear / 3-D counts
               (target > 0), the model's tensor bytes against ``quant.estimate_memory``, and the nf4
               logits against the bf16 ones on ``surgery.identity_probe``.
2. wrap        ``mythic surgery --layer 13`` in memory: ``RetrofitForCausalLM.from_base`` with block 13:14
               and every other setting at its default. Max |Δlogit| of the wrapper at T=1 against the
               base on the identity probe (target: no more than the base against itself, 0 where the
               kernels are deterministic). Then cached == uncached: the same block as sanity's plain
               repeat (``sanity.REPEAT``, so every loop applies the whole block) with the recurrence
               parameters perturbed (seeded N(0, 0.05²)); prefill plus token-by-token greedy decode
               through the LoopCache against the uncached forward on the same tokens, at T=1 and T=4
               (target: max |Δlogit| ≤ 5e-2 · max |logit|), next to the base's own DynamicCache
               difference and what looping changes (T=4 against T=1).
3. speed       prefill (1×2048) and decode (32 tokens after 128) tokens/s of the fresh wrapper at
               T = 1, 2, 4, 8; the measured time ratio to T=1 next to the FLOP ideal (L + (T−1)k)/L
               (informational: no target).
4. train step  recipes/v6K.yaml on the nf4 base of check 1: its surgery (block 4:23), recurrence
               trainable (``train.model.select_trainable``), its ``Objective`` (dual-T 1/4, margin,
               focal, KL anchor), the curriculum's depth (T=4, checkpointed loops), bf16 autocast,
               AdamW on ``param_groups``, gradient clipping; two steps (step 0 with the KL anchor,
               step 1 without) of ``--train-batch`` × 2048 tokens (v6K's micro-batch is 2). Reported:
               loss terms (target: finite), grad norms, seconds, CUDA peak allocated.
5. MoE         OpenMythos ``MoE`` at DeepSeek-V2-Lite's routed shape (2048 → 64 experts of 1408, top-6,
               no shared expert), 2×2048 tokens, bf16 (float32 on the CPU): ``backend="auto"``
               (``torch._grouped_mm`` where it fits) against ``backend="loop"`` and the reference's
               masked loop (``NaiveMoE`` of benchmarks/openmythos_moe.py; prior art: 6.7× on a GPU),
               forward and forward+backward; output and w1-gradient agreement (target: ≤ 5e-2
               relative in bf16, 1e-4 in float32).
6. compile     ``nn.Module.compile`` (inductor) of the OpenMythos recurrent block (MLA and MoE of the
               shapes above, Depth-LoRA rank 8, no ACT) inside the model's bf16 forward at T=4 on
               1×2048 tokens: first-call seconds, eager and compiled time, max |Δlogit| (target:
               ≤ 5e-2 relative). A compile error is the check's "failed: …" line. ``--tiny`` traces
               with the aot_eager backend (dynamo + AOTAutograd, no code generation): inductor's C++
               build on a cold cache takes 10–40 s on two cores, more than the rest of the run.

Tolerances: two computations of one function agree when max |Δ| ≤ 5e-2 · max |reference| in bf16
(a few 2⁻⁸ ulps gathered over layers and kernels; a KV-slot mix-up, a routing slip or a miscompiled
kernel moves the output by its own order) or 1e-4 in float32.

Time: each check has a wall-clock limit (``CHECK_LIMITS_S``, SIGALRM) and no check starts once
``--budget`` seconds (420; 900 with --nf4-from-disk) are spent; either is a "failed: …" line.
Exit status: 0 when every check is "ok"; 1 when one "failed" (raised, or timed out) or "missed"
(ran, a target not met); 2 without a CUDA device and without ``--tiny``. Peak memory is CUDA's
peak allocation (``torch.cuda.max_memory_allocated`` after a reset); on the CPU it is "n/a (cpu)".
Every figure in the table is measured in this run, except the FLOP ideal and the prior-art figure,
which are labelled as such; targets have their own column.
"""

# ruff: noqa: E402 - the repository root goes on sys.path before mythic is imported (an uninstalled checkout)

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "mythic").is_dir() and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's mythic, installed or not

import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, PreTrainedModel

from mythic.models.families import decoder_layers
from mythic.models.openmythos import MythosConfig, OpenMythos
from mythic.models.openmythos.moe import MoE, grouped_mm_fits
from mythic.models.retrofit import RetrofitForCausalLM
from mythic.quant import count_quantized, estimate_memory, finish_4bit, load_base, quantizable
from mythic.recurrence.depth_lora import LoRADelta
from mythic.recurrence.loop import deepest
from mythic.sanity import REPEAT
from mythic.surgery import identity_probe
from mythic.train.curriculum import Curriculum
from mythic.train.model import param_groups, select_trainable
from mythic.train.objective import Objective
from mythic.train.recipe import load_recipe

GIB = 1024**3
NF4_TARGET_BYTES = 24 * GIB
LOOPS = (1, 2, 4, 8)
CACHE_LOOPS = (1, 4)
REL_TOL = {torch.bfloat16: 5e-2, torch.float32: 1e-4}
"""Two computations of the same function (cached vs uncached, grouped vs loop, compiled vs eager) agree when
max |Δ| ≤ REL_TOL · max |reference|: in bf16 a few ulps (2⁻⁸) gathered over the layers and kernels; a KV-slot
mix-up, a routing slip or a miscompiled kernel moves the output by the order of the output itself."""
PERTURB_STD = 0.05
SURGERY_KEYS = ("max_loops", "rule", "lora_rank", "lora_alpha", "inject_scale", "layerscale_init", "layerscale_max",
                "gate_bias_init", "loop_embedding")  # fmt: skip
INIT_STD = 0.02
SEED = 0
V6K = ROOT / "recipes" / "v6K.yaml"
DEEPSEEK_V2_LITE: dict[str, Any] = dict(
    vocab_size=102400,
    hidden_size=2048,
    num_hidden_layers=27,
    first_k_dense_replace=1,
    intermediate_size=10944,
    moe_intermediate_size=1408,
    n_routed_experts=64,
    num_experts_per_tok=6,
    n_shared_experts=2,
    num_attention_heads=16,
    num_key_value_heads=16,
    kv_lora_rank=512,
    q_lora_rank=None,
    qk_rope_head_dim=64,
    qk_nope_head_dim=128,
    v_head_dim=128,
    topk_method="greedy",
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
TINY_DEEPSEEK: dict[str, Any] = {
    **DEEPSEEK_V2_LITE,
    **dict(
        vocab_size=256,
        hidden_size=64,
        num_hidden_layers=4,
        intermediate_size=96,
        moe_intermediate_size=32,
        n_routed_experts=4,
        num_experts_per_tok=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        kv_lora_rank=32,
        qk_rope_head_dim=8,
        qk_nope_head_dim=16,
        v_head_dim=16,
    ),
}


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the real run and ``--tiny``."""

    deepseek: dict[str, Any]
    layer: int  # ``mythic surgery --layer``
    v6k_block: tuple[int, int] | None  # None: the recipe's own block
    cache_prompt: int
    cache_new: int
    prefill: int
    decode_prompt: int
    decode_new: int
    prefill_repeats: int
    decode_repeats: int
    train_tokens: int
    moe: dict[str, int]
    moe_tokens: tuple[int, int]
    moe_repeats: int
    mythos: dict[str, Any]
    compile_tokens: int
    compile_repeats: int


FULL = Sizes(
    deepseek=DEEPSEEK_V2_LITE,
    layer=13,
    v6k_block=None,
    cache_prompt=32,
    cache_new=8,
    prefill=2048,
    decode_prompt=128,
    decode_new=32,
    prefill_repeats=3,
    decode_repeats=2,
    train_tokens=2048,
    moe=dict(dim=2048, n_experts=64, n_shared=0, top_k=6, expert_dim=1408),
    moe_tokens=(2, 2048),
    moe_repeats=5,
    mythos=dict(
        vocab_size=32000,
        dim=2048,
        n_heads=16,
        n_kv_heads=16,
        max_seq_len=4096,
        max_loop_iters=4,
        prelude_layers=1,
        coda_layers=1,
        n_experts=64,
        n_shared_experts=0,
        n_experts_per_tok=6,
        expert_dim=1408,
        lora_rank=8,
        attn_type="mla",
        kv_lora_rank=512,
        q_lora_rank=0,
        qk_rope_head_dim=64,
        qk_nope_head_dim=128,
        v_head_dim=128,
        act=False,
    ),  # fmt: skip
    compile_tokens=2048,
    compile_repeats=5,
)
TINY = Sizes(
    deepseek=TINY_DEEPSEEK,
    layer=2,
    v6k_block=(1, 3),
    cache_prompt=12,
    cache_new=4,
    prefill=64,
    decode_prompt=16,
    decode_new=8,
    prefill_repeats=3,
    decode_repeats=2,
    train_tokens=64,
    moe=dict(dim=64, n_experts=4, n_shared=0, top_k=2, expert_dim=32),
    moe_tokens=(2, 32),
    moe_repeats=3,
    mythos=dict(
        vocab_size=256,
        dim=64,
        n_heads=4,
        n_kv_heads=4,
        max_seq_len=256,
        max_loop_iters=4,
        prelude_layers=1,
        coda_layers=1,
        n_experts=4,
        n_shared_experts=0,
        n_experts_per_tok=2,
        expert_dim=32,
        lora_rank=8,
        attn_type="mla",
        kv_lora_rank=32,
        q_lora_rank=0,
        qk_rope_head_dim=8,
        qk_nope_head_dim=16,
        v_head_dim=16,
        act=False,
    ),  # fmt: skip
    compile_tokens=64,
    compile_repeats=3,
)


# ----------------------------------------------------------------------------- results


@dataclass
class Check:
    """One check: its status, seconds, display rows (what, measured, target) and JSON metrics."""

    number: int
    name: str
    title: str
    status: str = "not run"
    seconds: float = 0.0
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    misses: list[str] = field(default_factory=list)

    def row(self, what: str, measured: str, target: str = "") -> None:
        self.rows.append((what, measured, target))

    def expect(self, ok: bool, miss: str) -> None:
        """Record a missed target (the check ran; its status becomes "missed: …")."""
        if not ok:
            self.misses.append(miss)


@dataclass
class Context:
    """What the checks share: sizes, device, the models built so far, results other checks need."""

    sizes: Sizes
    device: torch.device
    dtype: torch.dtype
    nf4_from_disk: bool
    tmp_dir: Path
    train_batch: int
    compile_backend: str = "inductor"
    config: Any = None
    base: PreTrainedModel | None = None
    nf4: PreTrainedModel | None = None
    expected_logits: torch.Tensor | None = None  # the bf16 base on the identity probe (check 2)


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def fmt_bytes(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def fmt_num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def best_seconds(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls, synchronised on a GPU."""
    best = math.inf
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, int | None]]:
    """{"before", "peak"}: CUDA allocated bytes at entry and the peak inside the block (None on the CPU)."""
    result: dict[str, int | None] = {"before": None, "peak": None}
    if device.type == "cuda":
        free_memory(device)
        torch.cuda.reset_peak_memory_stats(device)
        result["before"] = int(torch.cuda.memory_allocated(device))
    yield result
    if device.type == "cuda":
        sync(device)
        result["peak"] = int(torch.cuda.max_memory_allocated(device))


def peak_text(peak: int | None) -> str:
    return "n/a (cpu)" if peak is None else fmt_bytes(peak)


# ----------------------------------------------------------------------------- model building


def deepseek_config(sizes: Sizes) -> Any:
    return AutoConfig.for_model("deepseek_v2", **sizes.deepseek)


def random_init(model: nn.Module, seed: int, std: float) -> None:
    """Seeded N(0, std²) for every matrix and 3-D expert tensor, 1 for norm weights, 0 for biases."""
    with torch.no_grad():
        generators: dict[torch.device, torch.Generator] = {}
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.zero_() if name.endswith("bias") else p.fill_(1.0)
                continue
            gen = generators.setdefault(p.device, torch.Generator(device=p.device).manual_seed(seed))
            p.normal_(0.0, std, generator=gen)


def build_random_model(config: Any, device: torch.device, dtype: torch.dtype, seed: int = SEED) -> PreTrainedModel:
    """The config's causal LM with parameters on the meta device, materialised on ``device`` and seeded.

    Buffers (rotary tables) are real from the start (``init_empty_weights`` keeps them); ``to_empty``
    would leave them uninitialised, so they are copied back.
    """
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    model.to_empty(device=device)
    for name, value in buffers.items():
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._buffers[leaf] = value.to(device)
    random_init(model, seed, INIT_STD)
    return model.eval()


def recurrence_device(model: RetrofitForCausalLM) -> set[str]:
    return {str(p.device) for _, p in model.recurrence_parameters()}


def expect_recurrence_on(model: RetrofitForCausalLM, device: torch.device, check: Check) -> None:
    """``from_base`` builds the recurrence where the base lives; recorded, and a miss is a missed target."""
    where = recurrence_device(model)
    check.metrics["recurrence_device"] = sorted(where)
    check.expect(where == {str(device)}, f"from_base built the recurrence on {sorted(where)}, the base is on {device}")


def remove_depth_lora_hooks(base: nn.Module) -> None:
    for module in base.modules():
        for key, hook in list(module._forward_hooks.items()):
            if isinstance(getattr(hook, "__self__", None), LoRADelta):
                del module._forward_hooks[key]


@contextlib.contextmanager
def wrapped(base: PreTrainedModel, **settings: Any) -> Iterator[RetrofitForCausalLM]:
    """``RetrofitForCausalLM.from_base``; afterwards the base's layer list and modules are as before."""
    layers = decoder_layers(base)
    original = list(layers)
    try:
        yield RetrofitForCausalLM.from_base(base, **settings).eval()
    finally:
        for i, layer in enumerate(original):
            layers[i] = layer
        remove_depth_lora_hooks(base)


# ----------------------------------------------------------------------------- check 0: build


def check_build(ctx: Context, check: Check) -> None:
    ctx.config = deepseek_config(ctx.sizes)
    started = time.perf_counter()
    ctx.base = build_random_model(ctx.config, ctx.device, ctx.dtype)
    sync(ctx.device)
    seconds = time.perf_counter() - started
    n = sum(p.numel() for p in ctx.base.parameters())
    experts = getattr(ctx.base.config, "_experts_implementation", None)
    check.metrics.update(
        parameters=n, build_seconds=seconds, dtype=str(ctx.dtype), experts_implementation=experts, seed=SEED
    )
    if ctx.device.type == "cuda":
        check.metrics["allocated_bytes"] = int(torch.cuda.memory_allocated(ctx.device))
    check.row(
        "random model",
        f"{n:,} parameters, {str(ctx.dtype).removeprefix('torch.')} on {ctx.device}, "
        f"built in {seconds:.1f} s; experts: {experts}",
    )


# ----------------------------------------------------------------------------- check 1: nf4 load


def quantize_linears(model: nn.Module, device: torch.device) -> int:
    """Every Linear transformers' 4-bit load converts (``quant.quantizable``) → nf4 ``Linear4bit`` on ``device``."""
    import bitsandbytes as bnb

    linear, _ = quantizable(model)
    count = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or f"{name}.weight" not in linear:
            continue
        q = bnb.nn.Linear4bit(
            module.in_features,
            module.out_features,
            bias=module.bias is not None,
            compute_dtype=torch.bfloat16,
            compress_statistics=True,
            quant_type="nf4",
            device="meta",
        )
        weight = bnb.nn.Params4bit(
            module.weight.data, requires_grad=False, compress_statistics=True, quant_type="nf4", module=q
        )
        q.weight = weight.to(device)
        if module.bias is not None:
            q.bias = nn.Parameter(module.bias.data.to(device), requires_grad=False)
        model.set_submodule(name, q)
        count += 1
    return count


def nf4_in_memory(model: PreTrainedModel, device: torch.device) -> tuple[PreTrainedModel, int, int, list[str]]:
    """(model, Linear4bit count, 3-D count, generic-CPU-path modules): ``load_base``'s steps, from host memory."""
    linears = quantize_linears(model, device)
    generic, cubes = finish_4bit(model, device)
    return model.eval(), linears, cubes, generic


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of the model's state (quantised data and statistics included) plus non-persistent buffers."""
    state = model.state_dict()
    total = sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))
    return total + sum(b.numel() * b.element_size() for name, b in model.named_buffers() if name not in state)


def nf4_from_disk(
    model: PreTrainedModel, device: torch.device, tmp_dir: Path, check: Check
) -> tuple[PreTrainedModel, int, int, list[str]]:
    """``save_pretrained`` to a temp folder, then ``mythic.quant.load_base(quantize=True)``."""
    need = tensor_bytes(model)
    free = shutil.disk_usage(tmp_dir).free
    if free < need * 1.1:
        raise RuntimeError(f"--nf4-from-disk needs {fmt_bytes(need)} in {tmp_dir}, {fmt_bytes(free)} free")
    folder = Path(tempfile.mkdtemp(prefix="gpu_check-", dir=tmp_dir))
    try:
        started = time.perf_counter()
        model.save_pretrained(folder, max_shard_size="5GB")
        check.metrics["save_seconds"] = time.perf_counter() - started
        check.metrics["saved_bytes"] = sum(f.stat().st_size for f in folder.iterdir())
        del model
        free_memory(device)
        loaded, generic, cubes = load_base(folder, quantize=True, dtype=torch.bfloat16, device=str(device))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return loaded, count_quantized(loaded), cubes, generic


def check_nf4(ctx: Context, check: Check) -> None:
    if ctx.base is None:
        raise RuntimeError("needs the random model of check 0, which was not built")
    base, ctx.base = ctx.base, None
    estimate = estimate_memory(
        ctx.config, quantize=True, dtype=torch.bfloat16, device=str(ctx.device), rows=1, seq_len=2
    )
    if ctx.device.type == "cuda":
        started = time.perf_counter()
        base.to("cpu")  # phase 0 starts from host memory: the GPU holds nothing of the model before the load
        check.metrics["to_host_seconds"] = time.perf_counter() - started
    with peak_memory(ctx.device) as peak:
        started = time.perf_counter()
        if ctx.nf4_from_disk:
            model, linears, cubes, generic = nf4_from_disk(base, ctx.device, ctx.tmp_dir, check)
        else:
            model, linears, cubes, generic = nf4_in_memory(base, ctx.device)
        del base
        sync(ctx.device)
        seconds = time.perf_counter() - started
    ctx.nf4 = model
    measured = tensor_bytes(model)
    allocated = int(torch.cuda.memory_allocated(ctx.device)) if ctx.device.type == "cuda" else None
    path = "save_pretrained + quant.load_base" if ctx.nf4_from_disk else "in memory, load_base's steps"
    check.metrics.update(
        path=path,
        load_seconds=seconds,
        peak_allocated_bytes=peak["peak"],
        allocated_before_bytes=peak["before"],
        allocated_after_bytes=allocated,
        fits_24gib=None if peak["peak"] is None else peak["peak"] <= NF4_TARGET_BYTES,
        quantized_linear=linears,
        quantized_cubes=cubes,
        quantized_layers=linears + cubes,
        generic_cpu_path=len(generic),
        model_tensor_bytes=measured,
        estimated_weight_bytes=estimate.weights,
        estimate_over_measured=estimate.weights / measured,
    )
    before = "" if peak["before"] is None else f" (allocated before: {fmt_bytes(peak['before'])})"
    check.row(
        "load",
        f"{path}: {seconds:.1f} s"
        + (f" + save {check.metrics['save_seconds']:.1f} s" if "save_seconds" in check.metrics else ""),
    )
    check.row("peak allocated during the load", peak_text(peak["peak"]) + before, "≤ 24 GiB")
    check.row("quantised", f"{linears} Linear4bit + {cubes} 3-D expert tensors", "> 0")
    check.row(
        "model tensors vs quant.estimate_memory",
        f"{fmt_bytes(measured)} measured, {fmt_bytes(estimate.weights)} estimated (×{estimate.weights / measured:.3f})",
    )
    check.expect(linears + cubes > 0, "nothing was quantised")
    check.expect(cubes > 0, "no 3-D expert tensor was quantised")
    if peak["peak"] is not None:
        check.expect(peak["peak"] <= NF4_TARGET_BYTES, f"peak {fmt_bytes(peak['peak'])} > 24 GiB")
    probe = identity_probe(ctx.config.vocab_size).to(ctx.device)
    with torch.no_grad():
        logits = model(probe).logits.float()
    finite = bool(torch.isfinite(logits).all())
    check.metrics["nf4_logits_finite"] = finite
    check.expect(finite, "the nf4 model's logits are not finite")
    if ctx.expected_logits is not None:
        diff = float((logits - ctx.expected_logits).abs().max())
        scale = float(ctx.expected_logits.abs().max())
        check.metrics.update(nf4_vs_bf16_max_abs_diff=diff, bf16_max_abs_logit=scale)
        check.row("nf4 vs bf16 logits (identity probe)", f"max |Δ| {diff:.3g} (max |logit| {scale:.3g})")


# ----------------------------------------------------------------------------- check 2: wrap


def incremental_logits(
    forward: Callable[..., Any], cache: Any, prompt: torch.Tensor, n_new: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy: prefill ``prompt`` into ``cache``, then one token at a time. (logits (n_new, V), tokens (n_new,))."""
    with torch.no_grad():
        logits = [forward(prompt, cache=cache, use_cache=True).logits[0, -1].float()]
        tokens = [logits[-1].argmax()]
        for _ in range(n_new - 1):
            step = tokens[-1].view(1, 1)
            logits.append(forward(step, cache=cache, use_cache=True).logits[0, -1].float())
            tokens.append(logits[-1].argmax())
    return torch.stack(logits), torch.stack(tokens)


def uncached_logits(forward: Callable[..., Any], prompt: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The uncached forward's logits at the positions that predicted ``tokens`` (teacher-forced)."""
    sequence = torch.cat([prompt[0], tokens[:-1]]).unsqueeze(0)
    with torch.no_grad():
        full = forward(sequence, use_cache=False).logits[0].float()
    return full[prompt.shape[1] - 1 :]


def check_wrap(ctx: Context, check: Check) -> None:
    base = ctx.base
    if base is None:
        raise RuntimeError("needs the random model of check 0, which was not built")
    sizes, device = ctx.sizes, ctx.device
    layer = sizes.layer
    settings = dict(block_start=layer, block_end=layer + 1)  # `mythic surgery --layer L`: every other setting default

    # T = 1 identity: a fresh wrapper (surgery defaults) against the base, next to the base against itself.
    probe = identity_probe(ctx.config.vocab_size).to(device)
    with torch.no_grad():
        expected = base(probe).logits.float()
        floor = max(float((base(probe).logits.float() - expected).abs().max()) for _ in range(2))
    ctx.expected_logits = expected
    with wrapped(base, **settings) as model:
        expect_recurrence_on(model, device, check)
        with torch.no_grad():
            diff = float((model(probe, n_loops=1).logits.float() - expected).abs().max())
        check.metrics.update(block=[layer, layer + 1], settings={k: getattr(model.config, k) for k in SURGERY_KEYS})
    check.metrics.update(identity_max_abs_diff=diff, base_rerun_max_abs_diff=floor)
    check.row(
        f"T=1 identity, block {layer}:{layer + 1}",
        f"max |Δlogit| {diff:.3g} (base vs itself: {floor:.3g})",
        "≤ base vs itself",
    )
    check.expect(diff <= floor, f"T=1 identity max |Δlogit| {diff:.3g} > base run-to-run {floor:.3g}")

    # Cached == uncached: the base's own DynamicCache first (the floor of bf16 decode vs prefill), then the
    # wrapper as a plain repeat with perturbed recurrence parameters, so that every loop changes the output.
    prompt = torch.randint(
        0, ctx.config.vocab_size, (1, sizes.cache_prompt), generator=torch.Generator().manual_seed(2)
    ).to(device)
    base_cached, base_tokens = incremental_logits(base, DynamicCache(config=base.config), prompt, sizes.cache_new)
    base_floor = float((base_cached - uncached_logits(base, prompt, base_tokens)).abs().max())
    cache_settings = {**settings, **REPEAT}
    tol = REL_TOL[ctx.dtype]
    results: dict[str, dict[str, Any]] = {}
    with wrapped(base, **cache_settings) as model:
        with torch.no_grad():
            for _, p in model.recurrence_parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)).to(p) * PERTURB_STD)
        for t in CACHE_LOOPS:

            def forward(ids: torch.Tensor, t: int = t, **kwargs: Any) -> Any:
                return model(ids, n_loops=t, **kwargs)

            cached, tokens = incremental_logits(forward, model.new_cache(), prompt, sizes.cache_new)
            full = uncached_logits(forward, prompt, tokens)
            scale = float(full.abs().max())
            max_diff = float((cached - full).abs().max())
            results[str(t)] = dict(
                max_abs_diff=max_diff,
                last_max_abs_diff=float((cached[-1] - full[-1]).abs().max()),
                max_abs_logit=scale,
                relative=max_diff / max(scale, 1e-30),
                tokens_agree=bool(torch.equal(full.argmax(-1), tokens)),
                tokens=tokens.tolist(),
            )
        deepest = max(CACHE_LOOPS)
        sequence = torch.cat([prompt[0], torch.tensor(results[str(deepest)]["tokens"][:-1], device=device)])
        with torch.no_grad():
            deep = model(sequence.unsqueeze(0), n_loops=deepest, use_cache=False).logits
            one = model(sequence.unsqueeze(0), n_loops=1, use_cache=False).logits
        effect = float((deep.float() - one.float()).abs().max())
    check.metrics.update(
        cache_settings=cache_settings,
        perturb_std=PERTURB_STD,
        cache_prompt=sizes.cache_prompt,
        cache_new_tokens=sizes.cache_new,
        cache=results,
        base_cache_max_abs_diff=base_floor,
        loop_effect_max_abs_diff=effect,
    )
    for t, r in results.items():
        check.row(
            f"cached vs uncached, T={t}, {sizes.cache_new} greedy tokens",
            f"max |Δlogit| {r['max_abs_diff']:.3g} (last token {r['last_max_abs_diff']:.3g}; rel {r['relative']:.2g});"
            f" greedy tokens {'agree' if r['tokens_agree'] else 'differ'}",
            f"rel ≤ {tol:g}",
        )
        check.expect(r["relative"] <= tol, f"cached vs uncached at T={t}: relative {r['relative']:.2g} > {tol:g}")
    check.row(
        "for scale",
        f"base's own cache: max |Δlogit| {base_floor:.3g}; T={deepest} vs T=1 (plain repeat): {effect:.3g}",
    )


# ----------------------------------------------------------------------------- check 3: speed


def check_speed(ctx: Context, check: Check) -> None:
    base = ctx.base
    if base is None:
        raise RuntimeError("needs the random model of check 0, which was not built")
    sizes, device = ctx.sizes, ctx.device
    n_layers = ctx.config.num_hidden_layers
    layer = sizes.layer
    k = 1
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, ctx.config.vocab_size, (1, sizes.prefill), generator=gen).to(device)
    prompt = torch.randint(0, ctx.config.vocab_size, (1, sizes.decode_prompt), generator=gen).to(device)
    settings = dict(block_start=layer, block_end=layer + 1)
    rows: list[dict[str, Any]] = []
    with wrapped(base, **settings) as model, torch.no_grad():
        for t in LOOPS:

            def prefill(t: int = t) -> None:
                model(ids, n_loops=t, cache=model.new_cache(), use_cache=True, logits_to_keep=1)

            def decode(t: int = t, n: int = sizes.decode_new) -> float:
                cache = model.new_cache()
                token = (
                    model(prompt, n_loops=t, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1:].argmax(-1)
                )
                sync(device)
                start = time.perf_counter()
                for _ in range(n):
                    logits = model(token, n_loops=t, cache=cache, use_cache=True, logits_to_keep=1).logits
                    token = logits[:, -1:].argmax(-1)
                sync(device)
                return time.perf_counter() - start

            prefill()  # warm-up
            decode(n=2)
            prefill_s = best_seconds(prefill, device, sizes.prefill_repeats)
            decode_s = min(decode() for _ in range(sizes.decode_repeats))
            rows.append(
                dict(
                    T=t,
                    ideal=(n_layers + (t - 1) * k) / n_layers,
                    prefill_seconds=prefill_s,
                    prefill_tok_s=sizes.prefill / prefill_s,
                    decode_seconds=decode_s,
                    decode_tok_s=sizes.decode_new / decode_s,
                )
            )
    for r in rows:
        r["prefill_ratio"] = r["prefill_seconds"] / rows[0]["prefill_seconds"]
        r["decode_ratio"] = r["decode_seconds"] / rows[0]["decode_seconds"]
        check.row(
            f"T={r['T']}",
            f"prefill {fmt_num(r['prefill_tok_s'])} tok/s (×{r['prefill_ratio']:.2f}) · "
            f"decode {fmt_num(r['decode_tok_s'])} tok/s (×{r['decode_ratio']:.2f})",
            f"ideal ×{r['ideal']:.2f}",
        )
    check.metrics.update(
        block=[layer, layer + 1],
        prefill_tokens=sizes.prefill,
        decode_prompt=sizes.decode_prompt,
        decode_tokens=sizes.decode_new,
        rows=rows,
    )


# ----------------------------------------------------------------------------- check 4: train step


def check_train(ctx: Context, check: Check) -> None:
    base = ctx.nf4
    if base is None:
        raise RuntimeError("needs the nf4 model of check 1, which was not loaded")
    sizes, device = ctx.sizes, ctx.device
    recipe = load_recipe(V6K)
    surgery = recipe.model.surgery.model_dump()
    if sizes.v6k_block is not None:
        surgery.update(block_start=sizes.v6k_block[0], block_end=sizes.v6k_block[1])
    seq_len = sizes.train_tokens
    gen = torch.Generator().manual_seed(4)
    steps = []
    with wrapped(base, **surgery) as model:
        expect_recurrence_on(model, device, check)
        trainable = select_trainable(model, recipe)
        model.train()
        objective = Objective(model, recipe.loss)
        optim = recipe.optim
        optimizer = torch.optim.AdamW(
            param_groups(model, trainable, optim.weight_decay), lr=optim.lr, betas=optim.betas, eps=optim.eps
        )
        curriculum = Curriculum(recipe.curriculum, recipe.seed)
        params = list(trainable.values())
        kl = recipe.loss.kl_anchor
        with peak_memory(device) as peak:
            for step in range(2):
                sample = torch.randint(0, ctx.config.vocab_size, (ctx.train_batch, seq_len + 1), generator=gen)
                ids, labels = sample[:, :-1].to(device), sample[:, 1:].to(device)
                depth = curriculum.sample(step, 0, ctx.train_batch)
                anchor = kl is not None and step % kl.every == 0
                sync(device)
                started = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    out = objective(ids, labels, depth, anchor)
                    out["loss"].backward()
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, optim.grad_clip or math.inf))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                sync(device)
                seconds = time.perf_counter() - started
                terms = {k: float(v.detach()) for k, v in out.items() if k not in ("seq_ce", "seq_loops")}
                steps.append(
                    dict(
                        step=step,
                        anchor=anchor,
                        n_loops=deepest(depth.n_loops),
                        checkpoint_loops=depth.checkpoint_loops,
                        seconds=seconds,
                        grad_norm=grad_norm,
                        **terms,
                    )  # fmt: skip
                )
        model.eval()
    del objective, optimizer
    check.metrics.update(
        recipe=str(V6K.relative_to(ROOT)),
        surgery=surgery,
        batch=ctx.train_batch,
        seq_len=seq_len,
        trainable_parameters=sum(p.numel() for p in params),
        peak_allocated_bytes=peak["peak"],
        allocated_before_bytes=peak["before"],
        steps=steps,
        loss=steps[0]["loss"],
        loss_finite=all(math.isfinite(s["loss"]) for s in steps),
    )
    block = f"{surgery['block_start']}:{surgery['block_end']}"
    for s in steps:
        terms = ", ".join(f"{k} {s[k]:.3f}" for k in ("ce_lo", "ce_hi", "margin", "kl_anchor") if k in s)
        check.row(
            f"step {s['step']}{' (KL anchor)' if s['anchor'] else ''}, T={s['n_loops']}, block {block}",
            f"loss {s['loss']:.4f} ({terms}); grad norm {s['grad_norm']:.3g}; {s['seconds']:.2f} s, "
            f"{ctx.train_batch * seq_len / s['seconds']:,.0f} tok/s",
            "loss, grad finite",
        )
        check.expect(math.isfinite(s["loss"]), f"step {s['step']}: loss is not finite")
        check.expect(math.isfinite(s["grad_norm"]), f"step {s['step']}: grad norm is not finite")
    before = "" if peak["before"] is None else f" (nf4 model and optimizer before: {fmt_bytes(peak['before'])})"
    check.row(
        f"peak allocated, {ctx.train_batch}×{seq_len} tokens",
        peak_text(peak["peak"]) + before,
        "",
    )
    ctx.nf4 = None
    free_memory(device)


# ----------------------------------------------------------------------------- check 5: MoE


def naive_moe_class() -> type[MoE]:
    """``NaiveMoE`` of benchmarks/openmythos_moe.py: the reference's masked loop over top-k × experts."""
    spec = importlib.util.spec_from_file_location("openmythos_moe_benchmark", ROOT / "benchmarks" / "openmythos_moe.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("cannot import benchmarks/openmythos_moe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.NaiveMoE


def check_moe(ctx: Context, check: Check) -> None:
    sizes, device = ctx.sizes, ctx.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    m = sizes.moe
    torch.manual_seed(5)
    with torch.device(device):
        moe = MoE(m["dim"], m["n_experts"], m["n_shared"], m["top_k"], m["expert_dim"])
        moe.reset_parameters(INIT_STD, INIT_STD)
    moe = moe.to(dtype)
    batch, length = sizes.moe_tokens
    x = torch.randn(batch, length, m["dim"], generator=torch.Generator().manual_seed(5)).to(device, dtype)
    grouped = grouped_mm_fits(x, m["expert_dim"])
    naive_class = naive_moe_class()

    def run(backend: str, grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        moe.__class__ = naive_class if backend == "naive" else MoE
        moe.backend = "auto" if backend in ("auto", "naive") else backend
        moe.zero_grad(set_to_none=True)
        if not grad:
            with torch.no_grad():
                return moe(x)[0], None
        y = moe(x)[0]
        y.float().square().mean().backward()
        return y.detach(), moe.w1.grad.detach().clone()

    outputs = {b: run(b, grad=True) for b in ("auto", "loop", "naive")}
    timings: dict[str, dict[str, float]] = {}
    for b in outputs:
        run(b, grad=True)  # warm-up
        timings[b] = {
            "forward_s": best_seconds(lambda b=b: run(b, grad=False), device, sizes.moe_repeats),
            "fwd_bwd_s": best_seconds(lambda b=b: run(b, grad=True), device, sizes.moe_repeats),
        }
    moe.__class__ = MoE
    tol = REL_TOL[dtype]
    agreement = {}
    for other in ("loop", "naive"):
        y, g = outputs[other]
        y0, g0 = outputs["auto"]
        assert g is not None and g0 is not None
        out_rel = float((y.float() - y0.float()).abs().max() / y0.float().abs().max().clamp(min=1e-30))
        grad_rel = float((g.float() - g0.float()).abs().max() / g0.float().abs().max().clamp(min=1e-30))
        agreement[other] = dict(
            output_max_abs_diff=float((y.float() - y0.float()).abs().max()), output_rel=out_rel, w1_grad_rel=grad_rel
        )
        check.expect(out_rel <= tol, f"auto vs {other}: output relative diff {out_rel:.2g} > {tol:g}")
        check.expect(grad_rel <= tol, f"auto vs {other}: w1 gradient relative diff {grad_rel:.2g} > {tol:g}")
    auto_path = "grouped_mm" if grouped else "loop (grouped_mm does not fit here)"
    speedups = {
        f"{other}_over_auto_{kind}": timings[other][f"{kind}_s"] / timings["auto"][f"{kind}_s"]
        for other in ("loop", "naive")
        for kind in ("forward", "fwd_bwd")
    }
    check.metrics.update(
        shape=m,
        tokens=batch * length,
        dtype=str(dtype),
        auto_path=auto_path,
        grouped_mm=grouped,
        timings=timings,
        agreement=agreement,
        **speedups,
    )
    shape = f"{m['dim']}→{m['n_experts']}×{m['expert_dim']} top-{m['top_k']}, {batch}×{length} tokens"
    check.row("shape", f"{shape}, {str(dtype).removeprefix('torch.')}; auto runs {auto_path}")
    for kind, label in (("forward", "forward"), ("fwd_bwd", "forward+backward")):
        t = {b: timings[b][f"{kind}_s"] * 1e3 for b in timings}
        check.row(
            label,
            f"auto {t['auto']:.3g} ms · loop {t['loop']:.3g} ms (×{speedups[f'loop_over_auto_{kind}']:.2f}) · "
            f"naive {t['naive']:.3g} ms (×{speedups[f'naive_over_auto_{kind}']:.2f})",
            "prior art ×6.7 vs naive (GPU)",
        )
    for other, a in agreement.items():
        check.row(
            f"auto vs {other}",
            f"output rel {a['output_rel']:.2g} (max |Δ| {a['output_max_abs_diff']:.3g}); "
            f"w1 grad rel {a['w1_grad_rel']:.2g}",
            f"rel ≤ {tol:g}",
        )


# ----------------------------------------------------------------------------- check 6: compile


def check_compile(ctx: Context, check: Check) -> None:
    sizes, device = ctx.sizes, ctx.device
    dtype = torch.bfloat16
    torch.manual_seed(6)
    cfg = MythosConfig(**sizes.mythos)
    with torch.device(device):  # initialised where it runs: a CPU init of the full-size block takes seconds
        model = OpenMythos(cfg)
    model = model.to(dtype=dtype).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, sizes.compile_tokens), generator=torch.Generator().manual_seed(6))
    ids = ids.to(device)
    loops = cfg.max_loop_iters

    def forward() -> torch.Tensor:
        return model(ids, loops)

    with torch.no_grad():
        eager = forward().float()
        eager_s = best_seconds(forward, device, sizes.compile_repeats)
        model.block.compile(backend=ctx.compile_backend)
        sync(device)
        started = time.perf_counter()
        try:
            compiled = forward().float()
            sync(device)
        except Exception as err:
            check.metrics.update(eager_seconds=eager_s, compile_error=one_line(err))
            raise
        first_s = time.perf_counter() - started
        compiled_s = best_seconds(forward, device, sizes.compile_repeats)
    diff = float((compiled - eager).abs().max())
    scale = float(eager.abs().max())
    rel = diff / max(scale, 1e-30)
    tol = REL_TOL[dtype]
    check.metrics.update(
        target="OpenMythos recurrent block (nn.Module.compile), model forward at T=4",
        backend=ctx.compile_backend,
        config=sizes.mythos,
        tokens=sizes.compile_tokens,
        first_call_seconds=first_s,
        eager_seconds=eager_s,
        compiled_seconds=compiled_s,
        eager_over_compiled=eager_s / compiled_s,
        max_abs_diff=diff,
        max_abs_logit=scale,
        relative=rel,
    )
    check.row(
        f"OpenMythos block compiled ({ctx.compile_backend}), T={loops}, 1×{sizes.compile_tokens} tokens, bf16",
        f"first call {first_s:.1f} s; eager {eager_s * 1e3:.3g} ms, compiled {compiled_s * 1e3:.3g} ms "
        f"(×{eager_s / compiled_s:.2f})",
    )
    check.row("compiled vs eager logits", f"max |Δ| {diff:.3g} (rel {rel:.2g})", f"rel ≤ {tol:g}")
    check.expect(rel <= tol, f"compiled vs eager: relative diff {rel:.2g} > {tol:g}")


# ----------------------------------------------------------------------------- the run


CHECKS: tuple[tuple[int, str, str, Callable[[Context, Check], None]], ...] = (
    (0, "build", "random bf16 model", check_build),
    (2, "wrap", "surgery --layer wrap: T=1 identity, cached == uncached", check_wrap),
    (3, "speed", "prefill / decode tok/s vs the FLOP ideal", check_speed),
    (1, "nf4_load", "phase-0 nf4 load", check_nf4),
    (4, "train_step", "v6K training step on the nf4 base", check_train),
    (5, "moe", "OpenMythos MoE: grouped vs loop vs naive", check_moe),
    (6, "compile", "torch.compile vs eager", check_compile),
)
"""In the order they run: the bf16 checks first, then the model goes to nf4 for good."""


CHECK_LIMITS_S = {
    "build": 180,
    "wrap": 120,
    "speed": 150,
    "nf4_load": 240,
    "train_step": 150,
    "moe": 120,
    "compile": 240,
}
"""Per-check wall-clock limits (full sizes); the whole run also stops starting checks when ``--budget`` is spent."""
NF4_FROM_DISK_LIMIT_S = 600


class CheckTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``CheckTimeout`` in the block after ``seconds`` (SIGALRM; no limit off the main thread or on Windows)."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise CheckTimeout(f"stopped at its {seconds:.3g} s time limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_check(check: Check, fn: Callable[[Context, Check], None], ctx: Context, limit: float) -> None:
    started = time.perf_counter()
    check.metrics["time_limit_s"] = round(limit)
    try:
        with time_limit(limit):
            fn(ctx, check)
        check.status = "ok" if not check.misses else "missed: " + "; ".join(check.misses)
    except Exception as err:
        check.status = f"failed: {one_line(err)}"
        print(f"check {check.number} ({check.name}) failed:", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
    finally:
        check.seconds = time.perf_counter() - started
        free_memory(ctx.device)


def table(checks: list[Check], title: str) -> Table:
    """One row group per check; cells are plain text (an error message's brackets are not rich markup)."""
    out = Table(title=title)
    out.add_column("#", justify="right")
    for col in ("check", "status", "what", "measured", "target"):
        out.add_column(col)
    out.add_column("s", justify="right")
    for check in checks:
        status = Text(check.status, style="" if check.status == "ok" else "bold red")
        for i, (what, measured, target) in enumerate(check.rows or [("", "", "")]):
            first = i == 0
            out.add_row(
                Text(str(check.number) if first else ""),
                Text(check.title if first else ""),
                status if first else Text(""),
                Text(what),
                Text(measured),
                Text(target),
                Text(f"{check.seconds:.1f}" if first else ""),
            )
    return out


def environment(device: torch.device) -> dict[str, Any]:
    import transformers

    info: dict[str, Any] = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import bitsandbytes

        info["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        info["bitsandbytes"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["capability"] = list(torch.cuda.get_device_capability(device))
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="every check at tiny sizes on the CPU")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--nf4-from-disk",
        action="store_true",
        help="check 1 through save_pretrained + mythic.quant.load_base (writes ~31 GB to --tmp-dir)",
    )
    parser.add_argument("--tmp-dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--train-batch", type=int, default=1, help="rows in check 4's batch, 2048 tokens each (v6K: 2)")
    parser.add_argument(
        "--compile-backend",
        help="torch.compile backend of check 6 (default: inductor; aot_eager with --tiny, where inductor's C++ "
        "build of a cold cache takes longer than every other check together)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: 1 with --tiny, else torch's)")
    parser.add_argument(
        "--budget", type=float, help="seconds for all checks: later checks are not started (default 420; 900 from disk)"
    )
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA device: run with --tiny for the CPU smoke run", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.tiny else torch.device("cuda", torch.cuda.current_device())
    if args.threads or args.tiny:
        torch.set_num_threads(args.threads or 1)  # tiny tensors: a second spinning thread only contends
    sizes = TINY if args.tiny else FULL
    ctx = Context(
        sizes=sizes,
        device=device,
        dtype=torch.bfloat16,
        nf4_from_disk=args.nf4_from_disk,
        tmp_dir=args.tmp_dir,
        train_batch=args.train_batch,
        compile_backend=args.compile_backend or ("aot_eager" if args.tiny else "inductor"),
    )
    budget = args.budget or (900.0 if args.nf4_from_disk else 420.0)
    started = time.perf_counter()
    checks = []
    for number, name, title, fn in CHECKS:
        check = Check(number, name, title)
        left = budget - (time.perf_counter() - started)
        if left < 10:
            check.status = f"failed: not started, the {budget:.0f} s budget is spent"
        else:
            limit = NF4_FROM_DISK_LIMIT_S if name == "nf4_load" and args.nf4_from_disk else CHECK_LIMITS_S[name]
            run_check(check, fn, ctx, min(limit, left))
        checks.append(check)
    checks.sort(key=lambda c: c.number)
    total = time.perf_counter() - started
    ok = all(c.status == "ok" for c in checks)

    what = "tiny DeepSeek-V2 shapes" if args.tiny else "DeepSeek-Coder-V2-Lite shapes"
    title = f"gpu_check: {what}, random weights, on {device} ({total:.0f} s)"
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped or captured: wide enough that rows stay one line each
    console.print(table(checks, title))
    if args.json:
        report = {
            "mode": "tiny" if args.tiny else "full",
            "device": str(device),
            "environment": environment(device),
            "model": {k: v for k, v in sizes.deepseek.items()},
            "seconds": total,
            "ok": ok,
            "checks": {
                c.name: {k: v for k, v in asdict(c).items() if k not in ("name", "misses")}
                | {"rows": [dict(zip(("what", "measured", "target"), r, strict=True)) for r in c.rows]}
                for c in checks
            },
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
