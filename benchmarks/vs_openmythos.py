"""mythic's OpenMythos against the public OpenMythos reference: training and decoding speed, memory.

The reference (github.com/kyegomez/OpenMythos, ``open_mythos/main.py``; a copy lives in
``../shared/reference/openmythos/main.py``) is loaded by path with importlib, only as a
measuring stick. Both models get the same configuration, the seeds' pattern 1: dim 512,
8 heads / 2 KV heads, 2 prelude + 2 coda dense layers, one looped MoE block with 16 routed
experts top-2 and 2 shared experts, expert_dim 256, Depth-LoRA rank 16, vocab 32000,
max_loop_iters 8, run at T = 4 loops. The MLA rows use the seeds' pattern-2 MLA sizes
(kv_lora_rank 64, q_lora_rank 128, qk_rope_head_dim 32, qk_nope_head_dim 32, v_head_dim 32)
in both. ACT is off in both: mythic ``act=False``; the reference's halting head has its
bias filled with −20, so no position halts and every loop runs.

The two configuration classes share every field name used here. Widths agree: each shared
expert is expert_dim · n_experts_per_tok wide in both (mythic fuses the two shared experts
into one SwiGLU of the summed width: same parameters, same FLOPs), the dense FFN is dim·4//3,
so embedding, prelude, looped attention + MoE, coda and final norm have equal parameter counts.
What differs is the recurrence machinery: the reference's ``lora_rank`` is one shared
dim → r → dim delta on the block output with a per-loop r-wide scale (+ an ACT head, LTI
A/B), mythic's is a per-loop rank-r delta on the looped attention's query and output
projections (+ LTI Ā/B̄, loop-embedding γ, the injection norm): about 0.25 M more parameters
at this size (< 1 %). Both counts are printed.

Rows (tokens/s, higher is better; memory in MB = 2^20 bytes, lower is better):
  forward + backward   batch 2 × 256: forward, cross-entropy over the full logits, backward
                       and one AdamW step (the optimizer step is included in both), timed
                       over ``--steps`` steps after one warm-up step
  cached generate      batch 1, a 32-token prompt, 64 new tokens with each model's own
                       ``generate`` (KV cache, temperature 1, top-k 50); tokens/s counts the
                       new tokens only (the prompt's prefill is inside the timed call), after
                       a warm-up generate of 8 tokens
  peak RSS             ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the GQA training
                       process, and the part of it that training added (the peak minus the
                       resident size once the model, optimizer and batch were built)

Every measurement runs in a fresh subprocess (this script with the hidden ``--one KIND IMPL``
mode, which prints one JSON line), reference and mythic alternate (the order is swapped
on every other repeat), and the table shows the median of ``--repeats`` runs and the ratio
mythic / reference. The mythic subprocess imports ``mythic.models.openmythos.model``, as a user
of the bare network does (the package's transformers wrapper loads on first use only).

Each run also records the 1-minute load average and its CPU-time / wall-time ratio: on a machine
where other work runs, two threads per process stall at every parallel region and the numbers
swing several-fold between runs; ``--threads 1`` is then far steadier.

Targets (the OpenMythos issue): forward + backward ≥ 2× the reference's tokens/s, cached
generate ≥ 3×, peak training memory ≤ the reference's.

``--compile`` runs mythic's model through ``torch.compile`` (inductor; dynamic shapes when
generating, so the growing cache is one graph); the compiling happens in the untimed warm-up, and
the reference stays eager. ``--kinds`` measures a subset of the rows (e.g. the generate rows).

    python benchmarks/vs_openmythos.py [--reference PATH] [--repeats 3] [--threads 2] [--json out.json]
        [--compile] [--kinds generate_gqa,generate_mla]
    python benchmarks/vs_openmythos.py --small --repeats 1     # tiny config, seconds (the test)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference" / "openmythos" / "main.py"
IMPLS = ("reference", "mythic")
KINDS = ("train_gqa", "train_mla", "generate_gqa", "generate_mla")
LOOPS = 4

# Field names are the same in both MythosConfig classes; the meanings that differ are noted.
FULL: dict[str, Any] = dict(
    vocab_size=32000, dim=512, n_heads=8, n_kv_heads=2, max_seq_len=2048, max_loop_iters=8,
    prelude_layers=2, coda_layers=2, n_experts=16, n_shared_experts=2, n_experts_per_tok=2,
    expert_dim=256,  # both: routed experts of width 256; shared experts of width 256·top_k = 512 each
    lora_rank=16,  # reference: one shared dim→16→dim delta on the block output, per-loop 16-wide scale;
    # mythic: per-loop rank-16 deltas A_t, B_t on the looped attention's query and output projections
    kv_lora_rank=64, q_lora_rank=128, qk_rope_head_dim=32, qk_nope_head_dim=32, v_head_dim=32,
    rope_theta=500000.0, dropout=0.0,
)  # fmt: skip
SMALL: dict[str, Any] = {
    **FULL,
    **dict(vocab_size=512, dim=64, max_seq_len=128, expert_dim=32, kv_lora_rank=16, q_lora_rank=32),
    **dict(qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8),
}
# batch, training length, prompt length, new tokens, warm-up tokens
SIZES = {"full": (2, 256, 32, 64, 8), "small": (2, 32, 8, 8, 2)}
TOP_K = 50


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"vs_openmythos: {message}", file=sys.stderr)
    raise SystemExit(code)


# ----------------------------------------------------------------------------- one measurement


def current_rss_mb() -> float:
    """Resident set size now (MB), from /proc; falls back to the peak where /proc is absent."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """``ru_maxrss`` in MB (kilobytes on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_reference(path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("openmythos_reference", path)
    if spec is None or spec.loader is None:
        fail(f"cannot load the reference from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_mythic() -> types.ModuleType:
    """``mythic.models.openmythos.model``: the bare network (the package loads its transformers wrapper
    only on first use)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import mythic.models.openmythos.model as model

    return model


def build(impl: str, attn_type: str, config: dict[str, Any], reference: Path) -> tuple[Any, dict[str, int]]:
    """The model (seed 0) and its parameter counts: total, the body shared by both designs, the rest."""
    import torch

    torch.manual_seed(0)
    kw = {**config, "attn_type": attn_type}
    if impl == "reference":
        ref = load_reference(reference)
        model = ref.OpenMythos(ref.MythosConfig(**kw))
        with torch.no_grad():
            model.recurrent.act.halt.bias.fill_(-20.0)  # ACT off: p ≈ 2e-9, nothing halts
    else:
        mythic = load_mythic()
        model = mythic.OpenMythos(mythic.MythosConfig(**kw, act=False))

    def count(*modules: Any) -> int:
        seen = {id(p): p.numel() for m in modules for p in m.parameters()}
        return sum(seen.values())

    total = count(model)
    looped = model.block if impl == "mythic" else model.recurrent.block  # the reference keeps it in .recurrent
    body = count(model.embed, *model.prelude, looped, *model.coda, model.norm)
    return model, {"total": total, "body": body, "recurrence_extras": total - body}


def measure(kind: str, impl: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    config = SMALL if args.small else FULL
    batch, length, prompt_len, new_tokens, warm_tokens = SIZES["small" if args.small else "full"]
    task, attn_type = kind.split("_")
    model, params = build(impl, attn_type, config, Path(args.reference))
    if impl == "mythic" and args.compile:
        model.compile(dynamic=task == "generate")
    gen = torch.Generator().manual_seed(1)
    result: dict[str, Any] = {"kind": kind, "impl": impl, "params": params, "threads": torch.get_num_threads()}
    result["load_1m"] = os.getloadavg()[0]  # other work on the machine makes every number here noisy

    if task == "train":
        model.train()
        ids = torch.randint(0, config["vocab_size"], (batch, length + 1), generator=gen)
        inputs, targets = ids[:, :-1], ids[:, 1:]
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)

        def step() -> float:
            opt.zero_grad(set_to_none=True)
            logits = model(inputs, n_loops=LOOPS)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
            loss.backward()
            opt.step()
            return loss.item()

        rss_before = current_rss_mb()
        step()  # warm-up (allocates AdamW's state)
        start, cpu = time.perf_counter(), cpu_seconds()
        for _ in range(args.steps):
            loss = step()
        seconds = time.perf_counter() - start
        result["cpu_per_wall"] = (cpu_seconds() - cpu) / seconds
        peak = peak_rss_mb()
        result.update(
            tok_s=args.steps * batch * length / seconds,
            seconds_per_step=seconds / args.steps,
            loss=loss,
            rss_before_mb=rss_before,
            peak_rss_mb=peak,
            train_added_mb=peak - rss_before,
        )
    else:
        model.eval()
        prompt = torch.randint(0, config["vocab_size"], (1, prompt_len), generator=gen)
        torch.manual_seed(2)

        def generate(n: int) -> torch.Tensor:
            if impl == "reference":
                return model.generate(prompt, max_new_tokens=n, n_loops=LOOPS, temperature=1.0, top_k=TOP_K)
            return model.generate(prompt, n, n_loops=LOOPS, temperature=1.0, top_k=TOP_K)

        with torch.no_grad():
            generate(warm_tokens)
            start, cpu = time.perf_counter(), cpu_seconds()
            out = generate(new_tokens)
            seconds = time.perf_counter() - start
            result["cpu_per_wall"] = (cpu_seconds() - cpu) / seconds
        made = out.shape[1] - prompt_len
        result.update(tok_s=made / seconds, new_tokens=made, seconds=seconds, peak_rss_mb=peak_rss_mb())
    return result


# ----------------------------------------------------------------------------- driver

ROWS = (  # key, label, kind, field, unit, target (ratio mythic/reference), higher is better
    ("train_gqa", "GQA forward + backward, T=4", "train_gqa", "tok_s", "tok/s", 2.0, True),
    ("train_mla", "MLA forward + backward, T=4", "train_mla", "tok_s", "tok/s", 2.0, True),
    ("generate_gqa", "GQA cached generate, {new} tokens, T=4, batch 1", "generate_gqa", "tok_s", "tok/s", 3.0, True),
    ("generate_mla", "MLA cached generate, {new} tokens, T=4, batch 1", "generate_mla", "tok_s", "tok/s", 3.0, True),
    ("peak_rss", "peak RSS during training (GQA)", "train_gqa", "peak_rss_mb", "MB", 1.0, False),
    ("train_rss", "RSS added by training (GQA)", "train_gqa", "train_added_mb", "MB", 1.0, False),
)


def run_one(kind: str, impl: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--one", kind, impl]
    command += ["--reference", str(args.reference), "--threads", str(args.threads), "--steps", str(args.steps)]
    if args.small:
        command.append("--small")
    if args.compile:
        command.append("--compile")
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        print(tail, file=sys.stderr)
        fail(f"the {impl} {kind} subprocess failed (exit {proc.returncode})", code=1)
    return json.loads(lines[-1])


def summarise(runs: dict[str, dict[str, list[dict[str, Any]]]], new_tokens: int) -> list[dict[str, Any]]:
    rows = []
    for key, label, kind, field, unit, target, higher in ROWS:
        if kind not in runs:
            continue
        values = {impl: [r[field] for r in runs[kind][impl]] for impl in IMPLS}
        medians = {impl: statistics.median(values[impl]) for impl in IMPLS}
        ratio = medians["mythic"] / medians["reference"] if medians["reference"] else math.inf
        met = ratio >= target if higher else ratio <= target
        rows.append(
            dict(
                key=key,
                label=label.format(new=new_tokens),
                unit=unit,
                reference=medians["reference"],
                mythic=medians["mythic"],
                ratio=ratio,
                target=f"{'≥' if higher else '≤'} {target:g}×",
                met=met,
                runs=values,
            )
        )
    return rows


def print_report(rows: list[dict[str, Any]], params: dict[str, dict[str, dict[str, int]]], args: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=130)
    table = Table(title=f"mythic vs the OpenMythos reference (median of {args.repeats}, {args.threads} threads)")
    for name, justify in (("", "left"), ("reference", "right"), ("mythic", "right"), ("mythic/ref", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_column("target")
    for row in rows:
        digits = 0 if row["unit"] == "MB" else 1
        mark = "[green]met[/]" if row["met"] else "[red]not met[/]"
        table.add_row(
            row["label"],
            f"{row['reference']:,.{digits}f} {row['unit']}",
            f"{row['mythic']:,.{digits}f} {row['unit']}",
            f"{row['ratio']:.2f}×",
            f"{row['target']} {mark}",
        )
    console.print(table)
    counts = Table(title="parameters (tied head counted once)")
    counts.add_column("")
    attns = sorted(params["mythic"], key=("gqa", "mla").index)
    for impl in IMPLS:
        for attn in attns:
            counts.add_column(f"{impl} {attn.upper()}", justify="right")
    labels = {
        "total": "total",
        "body": "embedding, prelude, looped block (attention + MoE), coda, norm",
        "recurrence_extras": "recurrence extras (injection, LoRA, loop embedding, ACT head, norms)",
    }
    for group, label in labels.items():
        counts.add_row(label, *(f"{params[impl][attn][group]:,}" for impl in IMPLS for attn in attns))
    console.print(counts)


def drive(args: argparse.Namespace) -> None:
    reference = Path(args.reference)
    if not reference.is_file():
        fail(f"reference not found: {reference} (pass --reference PATH to OpenMythos's open_mythos/main.py)")
    args.reference = reference.resolve()
    kinds = [kind for kind in KINDS if kind in args.kinds.split(",")]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {kind: {impl: [] for impl in IMPLS} for kind in kinds}
    for repeat in range(args.repeats):
        order = IMPLS if repeat % 2 == 0 else IMPLS[::-1]
        for kind in kinds:
            for impl in order:
                result = run_one(kind, impl, args)
                runs[kind][impl].append(result)
                print(f"[{repeat + 1}/{args.repeats}] {kind:<13} {impl:<9} {result['tok_s']:10.1f} tok/s", flush=True)
    new_tokens = SIZES["small" if args.small else "full"][3]
    rows = summarise(runs, new_tokens)
    params = {impl: {kind.split("_")[1]: runs[kind][impl][0]["params"] for kind in kinds} for impl in IMPLS}
    print_report(rows, params, args)
    if args.json:
        config = SMALL if args.small else FULL
        batch, length, prompt_len, new, _ = SIZES["small" if args.small else "full"]
        report = dict(
            reference=str(args.reference),
            small=args.small,
            repeats=args.repeats,
            threads=args.threads,
            steps=args.steps,
            compile=args.compile,
            loops=LOOPS,
            config=config,
            sizes=dict(batch=batch, length=length, prompt=prompt_len, new_tokens=new),
            params=params,
            rows=rows,
            runs=runs,
        )
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", default=str(DEFAULT_REFERENCE), help="the reference's open_mythos/main.py")
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs per cell (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every subprocess")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per run (after one warm-up)")
    parser.add_argument("--small", action="store_true", help="tiny config (dim 64, vocab 512, 2×32, 8 new tokens)")
    parser.add_argument("--json", help="write medians, ratios and every run here")
    parser.add_argument("--compile", action="store_true", help="torch.compile mythic's model (warm-up untimed)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated rows to measure, of {KINDS}")
    parser.add_argument("--one", nargs=2, metavar=("KIND", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1 or args.steps < 1:
        fail("--repeats, --threads and --steps must be >= 1")
    unknown = set(args.kinds.split(",")) - set(KINDS)
    if unknown or not args.kinds:
        fail(f"--kinds takes a comma-separated subset of {', '.join(KINDS)}, got {args.kinds!r}")
    if args.one:
        kind, impl = args.one
        if kind not in KINDS or impl not in IMPLS:
            fail(f"--one takes KIND in {KINDS} and IMPL in {IMPLS}")
        print(json.dumps(measure(kind, impl, args)), flush=True)
        return
    drive(args)


if __name__ == "__main__":
    main()
