"""Phase 0, before any training (``mythic sanity``): can this base be loaded, does it talk, which block loops best?

The memory estimate, the 4-bit load and its CPU fix are ``mythic.quant``'s (shared with ``mythic train``).
The report:

1. generation: the greedy completion of a prompt through the chat template;
2. identity: for each candidate block a fresh wrapper (surgery defaults, Depth-LoRA off: its B = 0 start adds
   exactly 0, and leaving it out keeps hooks off the base's modules) at ``n_loops=1`` against the base on
   ``identity_probe`` tokens: max |Δlogit|, which must be 0;
3. probe: the mean next-token cross-entropy on a held-out sample (standard-library source files) with the
   block looped T ∈ {1, 2, 4} times untrained, as a plain repeat h₀ = e, h_{t+1} = block(h_t) (the residual
   rule with m_t = 1, s = 0), and the norm growth ‖h_T‖ / ‖e‖ (mean per-token L2 norm of the block's output
   over its input); the recommended block has the lowest loss at T = 4 (then at T = 2);
4. the load time and the peak memory (CUDA: peak allocation; CPU: peak resident set of the process).
"""

from __future__ import annotations

import contextlib
import math
import resource
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mythic.errors import MythicError
from mythic.eval.generate import encode_prompt
from mythic.io import quiet_transformers, write_json
from mythic.loading import DTYPES, default_device, load_base_config, load_tokenizer, parse_dtype
from mythic.models.families import check_block, decoder_layers, family_of
from mythic.models.retrofit import RetrofitForCausalLM
from mythic.progress import Progress
from mythic.quant import (
    MemoryEstimate,
    check_fits,
    count_quantized,
    estimate_memory,
    load_base,
    unquantized_parameters,
)
from mythic.surgery import identity_probe

SAMPLE_FILES = ("textwrap.py", "heapq.py", "fractions.py", "shlex.py", "statistics.py")
PROBE_LOOPS = (1, 2, 4)
REPEAT = dict(rule="residual", gate_bias_init=30.0, layerscale_init=1.0, layerscale_max=1.0, inject_scale=0.0)
"""The residual rule turned into a plain repeat: g = sigmoid(30) = 1.0 in float32, ls = 1, so m_t = 1; s = 0."""
PROMPT = "Write a Python function that checks whether a number is prime."


@dataclass
class Candidate:
    """One block's results: identity at T = 1, loss and norm growth looped untrained."""

    block: tuple[int, int]
    identity_max_abs_diff: float
    loss: dict[int, float]
    norm_growth: dict[int, float]


@dataclass
class SanityReport:
    base: str
    device: str
    quantization: str
    estimate: dict[str, Any]
    load_seconds: float
    peak_memory: int
    peak_memory_kind: str
    quantized_modules: int
    generic_cpu_path: list[str]
    unquantized: list[dict[str, Any]]
    generation: dict[str, Any]
    sample: dict[str, Any]
    base_loss: float
    candidates: list[Candidate]
    recommended: tuple[int, int] | None
    recommendation: str
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- candidates


def default_candidates(n_layers: int) -> list[tuple[int, int]]:
    """Four single layers spread over the middle of the stack (30 %, 40 %, 50 %, 60 % of the depth)."""
    layers = sorted({min(n_layers - 1, round(n_layers * f)) for f in (0.3, 0.4, 0.5, 0.6)})
    return [(i, i + 1) for i in layers]


def parse_candidates(text: str) -> list[tuple[int, int]]:
    """'8,10,4:23' → [(8, 9), (10, 11), (4, 23)]: single layers or half-open blocks."""
    blocks = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            start, end = (int(x) for x in part.split(":")) if ":" in part else (int(part), int(part) + 1)
        except ValueError:
            raise MythicError(f"--layers takes layers and START:END blocks separated by commas, got {text!r}") from None
        blocks.append((start, end))
    if not blocks:
        raise MythicError(f"--layers takes layers and START:END blocks separated by commas, got {text!r}")
    return blocks


def choose_candidates(config: Any, layers: str | None, scan: bool) -> tuple[list[tuple[int, int]], list[str]]:
    """The blocks to probe and, for ``scan``, the layers skipped with the reason (e.g. KV-sharing)."""
    if layers is not None and scan:
        raise MythicError("give either --layers or --scan, not both")
    n = config.get_text_config(decoder=True).num_hidden_layers
    if not scan:
        blocks = parse_candidates(layers) if layers is not None else default_candidates(n)
        for start, end in blocks:
            check_block(config, start, end, None)
        return blocks, []
    blocks, skipped = [], []
    for i in range(n):
        try:
            check_block(config, i, i + 1, None)
            blocks.append((i, i + 1))
        except MythicError as err:
            skipped.append(f"layer {i}: {err}")
    return blocks, skipped


# ----------------------------------------------------------------------------- probes


def heldout_sample(tokenizer: PreTrainedTokenizerBase, rows: int, seq_len: int) -> tuple[torch.Tensor, list[str]]:
    """``rows × seq_len`` token ids from the standard library's SAMPLE_FILES, in order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    ids: list[int] = []
    used = []
    for name in SAMPLE_FILES:
        ids += tokenizer(root.joinpath(name).read_text(), add_special_tokens=False).input_ids
        used.append(name)
        if len(ids) >= rows * seq_len:
            break
    if len(ids) < rows * seq_len:
        raise MythicError(f"the held-out sample has {len(ids)} tokens, fewer than {rows} × {seq_len}")
    return torch.tensor(ids[: rows * seq_len]).view(rows, seq_len), used


@contextlib.contextmanager
def looped(base: PreTrainedModel, block: tuple[int, int], **settings: Any) -> Iterator[RetrofitForCausalLM]:
    """A fresh wrapper around ``base`` (Depth-LoRA off); the base's layer list is restored afterwards."""
    layers = decoder_layers(base)
    original = list(layers)
    try:
        model = RetrofitForCausalLM.from_base(
            base, block_start=block[0], block_end=block[1], lora_rank=0, max_loops=max(PROBE_LOOPS), **settings
        )
        yield model.eval()
    finally:
        for i, layer in enumerate(original):
            layers[i] = layer


def probe_block(
    base: PreTrainedModel, block: tuple[int, int], sample: torch.Tensor, probe: torch.Tensor, expected: torch.Tensor
) -> Candidate:
    """Identity at T = 1 and the untrained repeat's loss / norm growth at each of PROBE_LOOPS."""
    with looped(base, block) as model, torch.no_grad():
        diff = float((model(probe, n_loops=1).logits.float() - expected).abs().max())
    loss: dict[int, float] = {}
    growth: dict[int, float] = {}
    with looped(base, block, **REPEAT) as model, torch.no_grad():
        norms: list[tuple[float, float]] = []

        def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            e = args[0] if args else kwargs["hidden_states"]
            h = out[0] if isinstance(out, tuple) else out
            norms.append((float(e.float().norm(dim=-1).mean()), float(h.float().norm(dim=-1).mean())))

        last = decoder_layers(model.base)[model.block_range[1] - 1]
        handle = last.register_forward_hook(record, with_kwargs=True)
        try:
            for t in PROBE_LOOPS:
                norms.clear()
                loss[t] = float(model(sample.to(base.device), labels=sample.to(base.device), n_loops=t).loss)
                growth[t] = norms[0][1] / norms[0][0]
        finally:
            handle.remove()
    return Candidate(block=block, identity_max_abs_diff=diff, loss=loss, norm_growth=growth)


def recommend(candidates: list[Candidate]) -> tuple[tuple[int, int] | None, str]:
    """The block with the lowest loss looped 4× untrained (then 2×), among those with an exact identity."""
    usable = [c for c in candidates if c.identity_max_abs_diff == 0.0 and math.isfinite(c.loss[4])]
    if not usable:
        return None, "no candidate kept the T=1 identity with a finite loss"
    best = min(usable, key=lambda c: (c.loss[4], c.loss[2]))
    return best.block, (
        f"block {best.block[0]}:{best.block[1]} has the lowest held-out loss looped 4× untrained "
        f"({best.loss[4]:.4f} vs {best.loss[1]:.4f} at T=1)"
    )


def smoke_test(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int
) -> dict[str, Any]:
    """Greedy chat-template completion of ``prompt``."""
    ids = encode_prompt(tokenizer, prompt, chat=True).to(model.device)
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    seconds = time.perf_counter() - started
    new = out[0, ids.shape[1] :]
    return {
        "prompt": prompt,
        "completion": tokenizer.decode(new, skip_special_tokens=True).strip(),
        "new_tokens": int(new.numel()),
        "seconds": round(seconds, 2),
    }


def _peak_memory(device: str) -> tuple[int, str]:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(torch.device(device))), "CUDA peak allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak resident set of the process"


# ----------------------------------------------------------------------------- the run


def sanity(
    base_dir: Path,
    *,
    quantize: bool = False,
    layers: str | None = None,
    scan: bool = False,
    dtype: str = "float32",
    device: str | None = None,
    rows: int = 4,
    seq_len: int = 256,
    prompt: str = PROMPT,
    max_new_tokens: int = 48,
    out: Path | None = None,
    on_estimate: Callable[[MemoryEstimate], None] | None = None,
    progress: Progress | None = None,
) -> SanityReport:
    """Phase 0 on the base in ``base_dir``; see the module docstring. Writes the report as JSON to ``out``."""
    started = time.perf_counter()
    base_dir = Path(base_dir)
    config = load_base_config(base_dir)
    dtype = parse_dtype(dtype)
    if rows < 1 or seq_len < 2:
        raise MythicError("the held-out sample needs at least 1 row of at least 2 tokens")
    device = device or default_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MythicError(f"--device {device}: no CUDA device is available")
    family_of(config)
    blocks, skipped = choose_candidates(config, layers, scan)
    tokenizer = load_tokenizer(base_dir)
    estimate = estimate_memory(
        config, quantize=quantize, dtype=DTYPES[dtype], device=device, rows=rows, seq_len=seq_len
    )
    if on_estimate is not None:
        on_estimate(estimate)
    check_fits(estimate)

    total = 3 + len(blocks)
    step = progress or (lambda done, total, what: None)
    step(0, total, "loading the base")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(device))
    loaded = time.perf_counter()
    with quiet_transformers():
        model, generic, cubes = load_base(base_dir, quantize=quantize, dtype=DTYPES[dtype], device=device)
    load_seconds = time.perf_counter() - loaded
    step(1, total, "generation smoke test")
    generation = smoke_test(model, tokenizer, prompt, max_new_tokens)
    step(2, total, "base loss on the held-out sample")
    sample, files = heldout_sample(tokenizer, rows, seq_len)
    probe = identity_probe(config.get_text_config(decoder=True).vocab_size).to(model.device)
    with torch.no_grad():
        expected = model(probe).logits.float()
        base_loss = float(model(sample.to(model.device), labels=sample.to(model.device)).loss)
    candidates = []
    for i, block in enumerate(blocks):
        step(3 + i, total, f"block {block[0]}:{block[1]}")
        candidates.append(probe_block(model, block, sample, probe, expected))
    step(total, total, "done")
    recommended, why = recommend(candidates)
    peak, peak_kind = _peak_memory(device)
    report = SanityReport(
        base=str(base_dir.resolve()),
        device=device,
        quantization="nf4 double-quant, bf16 compute (bitsandbytes)" if quantize else dtype,
        estimate={**asdict(estimate), "need": estimate.need},
        load_seconds=round(load_seconds, 2),
        peak_memory=peak,
        peak_memory_kind=peak_kind,
        quantized_modules=count_quantized(model) + cubes if quantize else 0,
        generic_cpu_path=generic,
        unquantized=unquantized_parameters(model) if quantize else [],
        generation=generation,
        sample={"files": files, "rows": rows, "seq_len": seq_len},
        base_loss=base_loss,
        candidates=candidates,
        recommended=recommended,
        recommendation=why,
        seconds=round(time.perf_counter() - started, 2),
        skipped=skipped,
    )
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json(out, asdict(report))
    return report
