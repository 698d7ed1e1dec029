"""Training throughput and memory of the looped model, side by side with plain fine-tuning of the base.

For T = 1, 2, 4, 8 and three modes — full backprop through depth, truncated backprop (the last k
loops with gradient), truncated + per-loop activation checkpointing — one training step
(forward, backward, AdamW on the recurrence parameters) is timed over a few steps, and the
peak memory is measured: ``torch.cuda.max_memory_allocated`` on a GPU, on CPU the bytes of
activations saved for backward (an exact count through ``saved_tensors_hooks``).

The baseline is plain fine-tuning of the base at the same batch: the block's own layers
trainable, no loops. The ideal step-time ratio counts FLOPs per token (2 per weight and
multiply-accumulate, attention scores 4·s·d per layer; backward ≈ 1× forward for frozen
layers that only pass gradients on, 2× for layers with trainable weights; checkpointing adds a
recompute of the k gradient loops):

    fwd(T)          = head + prelude + T·block + coda
    bwd(T, k)       = head + coda + min(T, k)·block          (input gradients only)
    base fine-tune  = head + prelude + block + coda  +  head + coda + 2·block

Targets: peak memory with k backprop loops independent of T (within 10 %), and step time
within 1.15× of the ideal FLOP ratio. Usage:

    python benchmarks/train_throughput.py --base base/smollm2-135m --block 12:16 --batch 2 --seq-len 256
    python benchmarks/train_throughput.py            # a random 8-layer Llama if no base is given

``--recipe RECIPE`` (retrofit rows): the recipe's own training step on its own task data, at the loop
counts its curriculum draws, two ways side by side in alternating rounds (the machine is noisy):

    before   the path before the retrofit speed-up: logits and loss at every position, batches in
             the stream's order (right-padded to the longest row of each)
    now      what ``mythic train`` runs: logits at the labelled positions only (``Objective``) and
             batches made by length (``data.bucket``, 8 when the recipe sets none)

Each row counts real tokens apart from padding and prints the achieved model FLOP/s over the fp32
matmul peak measured in the same run with the same threads (a 1024² matmul). Model FLOPs of a step
are what its real tokens need, padding and the unread logits left out:

    fwd  = Σ_real (prelude + T·block + coda) + labels·head
    bwd  = Σ_real (coda + T·block) + labels·head             (input gradients; the few trained weights left out)

with each layer 2 FLOPs per weight and 4·s·d for attention scores (s the row's length).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoModelForCausalLM, PreTrainedModel

from mythic.models.retrofit import RetrofitForCausalLM
from mythic.train import losses

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny import tiny_base  # noqa: E402  (the tests' model factory: one definition of every tiny layout)

LOOPS = (1, 2, 4, 8)


@dataclass
class Row:
    label: str
    seconds: float
    memory: int
    ideal: float


def load_base(path: str | None) -> PreTrainedModel:
    """The base at ``path``, else the tests' llama scaled to hidden 256, 8 layers, vocab 8192."""
    if path:
        return AutoModelForCausalLM.from_pretrained(path)
    return tiny_base(
        "llama",
        vocab_size=8192,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
    )


def layer_flops(model: torch.nn.Module, layers: range, seq_len: int) -> float:
    """Forward FLOPs per token of ``layers``: 2 per weight plus 4·s·d for attention scores."""
    decoder = model.model.layers
    hidden = model.config.hidden_size
    return sum(2 * sum(p.numel() for p in decoder[i].parameters()) + 4 * seq_len * hidden for i in layers)


def measure(step: Callable[[], None], device: torch.device, steps: int) -> tuple[float, int]:
    """(seconds per step, peak memory bytes) over ``steps`` steps after one warm-up step."""
    step()
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    for _ in range(steps):
        if device.type == "cuda":
            step()
        else:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return (time.perf_counter() - began) / steps, torch.cuda.max_memory_allocated()
    return (time.perf_counter() - began) / steps, saved // steps


def matmul_peak(size: int = 1024, seconds: float = 1.0) -> float:
    """fp32 matmul FLOP/s with this process's torch threads (best of repeated 1024² products)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best, began = 0.0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def model_flops(
    weights: list[int],
    block: tuple[int, int],
    hidden: int,
    vocab: int,
    lengths: list[int],
    loops: list[float],
    labels: torch.Tensor,
) -> float:
    """A step's model FLOPs (module docstring): ``weights`` 2 × each layer's weights, one row per length/loops."""
    start, end = block
    total = 4.0 * int(labels) * hidden * vocab  # the head at the labelled positions, forward and backward
    for length, t in zip(lengths, loops, strict=True):
        per_token = [w + 4 * length * hidden for w in weights]
        prelude, looped, coda = sum(per_token[:start]), sum(per_token[start:end]), sum(per_token[end:])
        total += length * (prelude + 2 * t * looped + 2 * coda)
    return total


def recipe_rows(recipe_path: str, overrides: list[str], steps: int, rounds: int) -> list[dict[str, float | str]]:
    """The recipe's training step, before and now, in ``rounds`` alternating rounds of ``steps`` steps each."""
    from mythic.train.curriculum import Curriculum
    from mythic.train.data import TaskStream
    from mythic.train.model import build_model, select_trainable
    from mythic.train.objective import Objective, logits_of
    from mythic.train.recipe import load_recipe

    recipe = load_recipe(recipe_path, overrides)
    model, tokenizer = build_model(recipe.model, torch.device("cpu"), recipe.data)
    trainable = select_trainable(model, recipe)
    model.train()
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=recipe.optim.lr, fused=True)
    objective = Objective(model, recipe.loss)
    curriculum = Curriculum(recipe.curriculum, recipe.seed)
    cfg = model.config
    start, end = cfg.block_start, cfg.block_end
    hidden, vocab = cfg.text_config.hidden_size, cfg.text_config.vocab_size
    weights = [2 * sum(p.numel() for p in layer.parameters()) for layer in model.base.model.layers]
    bucket = recipe.data.bucket if recipe.data.bucket > 1 else 8
    streams = {
        "before": TaskStream(recipe.data.model_copy(update={"bucket": 0}), tokenizer, recipe.seed),
        "now": TaskStream(recipe.data.model_copy(update={"bucket": bucket}), tokenizer, recipe.seed),
    }

    def full_logits_loss(ids: torch.Tensor, labels: torch.Tensor, depth: object) -> torch.Tensor:
        out = model(ids, n_loops=depth.n_loops, grad_loops=depth.grad_loops)
        return losses.cross_entropy(logits_of(out), labels)

    def step(path: str, number: int) -> tuple[float, int, int, float]:
        batch = streams[path].next_batch(recipe.train.micro_batch, step=number)
        depth = curriculum.sample(number, 0, recipe.train.micro_batch, 0, batch.difficulty)
        loops = torch.as_tensor(depth.per_sequence(batch.input_ids.shape[0]), dtype=torch.float64)
        began = time.perf_counter()
        if path == "now":
            loss = objective(batch.input_ids, batch.labels, depth)["loss"]
        else:
            loss = full_logits_loss(batch.input_ids, batch.labels, depth)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - began
        labelled = batch.labels != losses.IGNORE_INDEX
        last = torch.arange(labelled.shape[1]).expand_as(labelled).masked_fill(~labelled, -1).max(1).values
        flops = model_flops(weights, (start, end), hidden, vocab, (last + 1).tolist(), loops.tolist(), labelled.sum())
        return seconds, batch.input_ids.numel(), batch.real_tokens, flops

    totals = {path: [0.0, 0, 0, 0.0] for path in streams}
    for round_ in range(rounds):
        for path in ("before", "now") if round_ % 2 == 0 else ("now", "before"):
            for i in range(steps):
                got = step(path, round_ * steps + i)
                totals[path] = [a + b for a, b in zip(totals[path], got, strict=True)]
    peak = matmul_peak()
    rows = []
    for path, (seconds, positions, real, flops) in totals.items():
        rows.append(
            {
                "path": path,
                "step_s": seconds / (steps * rounds),
                "tokens_per_s": positions / seconds,
                "real_tokens_per_s": real / seconds,
                "padding": 1 - real / positions,
                "model_flops_per_s": flops / seconds,
                "peak_flops_per_s": peak,
                "of_peak": flops / seconds / peak,
            }
        )
    rows[1]["speedup"] = rows[1]["real_tokens_per_s"] / rows[0]["real_tokens_per_s"]
    return rows


def print_recipe_rows(rows: list[dict[str, float | str]], title: str) -> None:
    table = Table(title=title)
    columns = ("path", "step s", "real tokens/s", "tokens/s (padding in)", "padding", "model GFLOP/s", "of fp32 peak")
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row["path"]),
            f"{row['step_s']:.3f}",
            f"{row['real_tokens_per_s']:,.0f}",
            f"{row['tokens_per_s']:,.0f}",
            f"{row['padding']:.1%}",
            f"{row['model_flops_per_s'] / 1e9:.1f}",
            f"{row['of_peak']:.1%}",
        )
    console = Console(width=160)
    console.print(table)
    console.print(
        f"fp32 matmul peak here: {rows[0]['peak_flops_per_s'] / 1e9:.1f} GFLOP/s with {torch.get_num_threads()} "
        f"threads; now / before in real tokens/s: {rows[1]['speedup']:.2f}× (target ≥ 1.5×)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=None, help="HF base folder (default: a random 8-layer Llama)")
    parser.add_argument("--block", default=None, help="looped block start:end (default: the middle half)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--grad-loops", type=int, default=2, help="k, the loops with gradient")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--recipe", default=None, help="retrofit rows: a task-file retrofit recipe (see above)")
    parser.add_argument("--set", action="append", default=[], help="recipe override key=value (repeatable)")
    parser.add_argument("--rounds", type=int, default=4, help="--recipe: alternating rounds of --steps steps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None, help="--recipe: also write the rows here")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.recipe is not None:
        rows = recipe_rows(args.recipe, args.set, args.steps, args.rounds)
        print_recipe_rows(rows, f"{args.recipe}: {args.rounds} × {args.steps} steps a path, alternating")
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": rows}, indent=2))
        return

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    base = load_base(args.base).to(device=device, dtype=dtype)
    n = base.config.num_hidden_layers
    start, end = map(int, args.block.split(":")) if args.block else (n // 4, n - n // 4)
    ids = torch.randint(0, base.config.vocab_size, (args.batch, args.seq_len), device=device)
    labels = torch.roll(ids, -1, dims=1)
    head = 2 * base.config.hidden_size * base.config.vocab_size
    prelude, block, coda = (
        layer_flops(base, r, args.seq_len) for r in (range(start), range(start, end), range(end, n))
    )

    # Plain fine-tuning of the base: the block's layers trainable, no loops.
    for p in base.parameters():
        p.requires_grad_(False)
    tuned = [p for i in range(start, end) for p in base.model.layers[i].parameters()]
    for p in tuned:
        p.requires_grad_(True)
    base_opt = torch.optim.AdamW(tuned, lr=1e-5)

    def base_step() -> None:
        losses.cross_entropy(base(ids).logits, labels).backward()
        base_opt.step()
        base_opt.zero_grad(set_to_none=True)

    base_flops = head + prelude + block + coda + head + coda + 2 * block
    seconds, memory = measure(base_step, device, args.steps)
    rows = [Row("base fine-tune", seconds, memory, 1.0)]
    for p in tuned:
        p.requires_grad_(False)

    model = RetrofitForCausalLM.from_base(base, block_start=start, block_end=end, max_loops=max(LOOPS)).to(device)
    params = [p for _, p in model.recurrence_parameters()]
    for p in params:
        p.requires_grad_(True)
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-4)
    k = args.grad_loops
    modes = {"full": (None, False), f"trunc k={k}": (k, False), f"trunc k={k} + ckpt": (k, True)}
    for name, (grad_loops, ckpt) in modes.items():
        for t in LOOPS:

            def loop_step(t: int = t, grad_loops: int | None = grad_loops, ckpt: bool = ckpt) -> None:
                out = model(ids, n_loops=t, grad_loops=grad_loops, checkpoint_loops=ckpt)
                losses.cross_entropy(out.logits, labels).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            g = t if grad_loops is None else min(t, grad_loops)
            flops = head + prelude + t * block + coda + head + coda + g * block + (g * block if ckpt else 0)
            seconds, memory = measure(loop_step, device, args.steps)
            rows.append(Row(f"{name}, T={t}", seconds, memory, flops / base_flops))

    tokens = args.batch * args.seq_len
    reference = rows[0]
    memory_kind = "peak CUDA memory" if device.type == "cuda" else "saved activations"
    table = Table(title=f"training step, batch {args.batch}×{args.seq_len}, block {start}:{end} of {n}, {device}")
    for column in ("config", "tokens/s", "step s", "measured ×base", "ideal ×base", "measured/ideal", memory_kind):
        table.add_column(column, justify="right")
    for row in rows:
        measured = row.seconds / reference.seconds
        table.add_row(
            row.label,
            f"{tokens / row.seconds:,.0f}",
            f"{row.seconds:.3f}",
            f"{measured:.2f}",
            f"{row.ideal:.2f}",
            f"{measured / row.ideal:.2f}",
            f"{row.memory / 2**20:,.1f} MiB",
        )
    console = Console(width=160)
    console.print(table)
    for name in list(modes)[1:]:
        mems = [
            r.memory
            for r, t in zip(rows[1:], [t for _ in modes for t in LOOPS], strict=True)
            if t >= k and r.label.startswith(name + ",")
        ]
        spread = max(mems) / min(mems) - 1
        verdict = "ok" if spread <= 0.10 else "ABOVE TARGET"
        console.print(f"{name}: memory spread over T ≥ k = {spread:.1%} (target ≤ 10 %) {verdict}")
    worst = max(r.seconds / reference.seconds / r.ideal for r in rows[1:])
    console.print(f"worst measured/ideal step-time ratio: {worst:.2f} (target ≤ 1.15)")


if __name__ == "__main__":
    main()
