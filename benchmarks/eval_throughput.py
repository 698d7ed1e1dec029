"""HumanEval generation throughput: problems/min at T = 1 and 8, batch 1 and 8, side by side.

A fresh surgery checkpoint on SmolLM2-135M (block ``--block``, default 10:20) generates greedy
completions (``--max-new-tokens``; prompts through the chat template, as for any instruct
model, or plain completion with stop sequences under ``--plain``) for the first ``--problems``
HumanEval problems at each (T, batch size); the script prints problems/min, the batched/batch-1 ratio per T
(target ≥ 3× on CPU) and the T=8/T=1 slowdown per batch size. Scoring is not timed.

    python benchmarks/eval_throughput.py [--smollm DIR] [--problems 16] [--threads 2] [--plain] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from mythic.eval.completions import GenerationSettings, generate_samples
from mythic.eval.humaneval import load_problems
from mythic.loading import load_any, load_tokenizer
from mythic.surgery import surgery

LOOPS = (1, 8)
BATCHES = (1, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm", type=Path, help="SmolLM2-135M folder (default: the embedded cached one)")
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--block", default="10:20")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--plain",
        action="store_true",
        help="plain-completion prompts instead of the chat template (SmolLM2-Instruct then stops after ~2 tokens "
        "on most problems, so there is little left for batching to speed up)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.smollm is None:
        from mythic.embedded import cached_smollm2

        args.smollm = cached_smollm2()
    start, end = (int(x) for x in args.block.split(":"))
    problems = load_problems(limit=args.problems)
    rate: dict[tuple[int, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        surgery(args.smollm, Path(tmp) / "ckpt", block=(start, end), max_loops=8)
        model = load_any(Path(tmp) / "ckpt")
        tokenizer = load_tokenizer(Path(tmp) / "ckpt")
        for n_loops in LOOPS:
            for batch in BATCHES:
                began = time.perf_counter()
                generate_samples(
                    model,
                    tokenizer,
                    problems,
                    Path(tmp) / f"T{n_loops}-b{batch}.jsonl",
                    GenerationSettings(chat=not args.plain, max_new_tokens=args.max_new_tokens, batch_size=batch),
                    n_loops=n_loops,
                )
                rate[n_loops, batch] = len(problems) / (time.perf_counter() - began) * 60

    table = Table(title=f"HumanEval generation, SmolLM2-135M, {args.problems} problems, {args.threads} threads")
    table.add_column("T", justify="right")
    for batch in BATCHES:
        table.add_column(f"batch {batch} (problems/min)", justify="right")
    table.add_column(f"batch {BATCHES[-1]} / batch {BATCHES[0]} (target ≥ 3×)", justify="right")
    for n_loops in LOOPS:
        ratio = rate[n_loops, BATCHES[-1]] / rate[n_loops, BATCHES[0]]
        table.add_row(str(n_loops), *(f"{rate[n_loops, b]:.1f}" for b in BATCHES), f"{ratio:.2f}×")
    console = Console()
    console.print(table)
    for batch in BATCHES:
        console.print(f"batch {batch}: T=8 runs at {rate[8, batch] / rate[1, batch]:.2f}× the rate of T=1")
    if args.json:
        args.json.write_text(json.dumps({f"T{t}_b{b}": r for (t, b), r in rate.items()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
