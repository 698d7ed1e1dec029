"""KV sharing across loops (``--kv-share last``): cache memory and what it costs in answers.

Within one forward nothing is shared, so a prompt prefilled in one call answers exactly as
without sharing; the cost shows when tokens arrive one by one (streamed prompts, long
generations): each new token's loops then see the earlier tokens' last-loop keys only. This
script feeds every prompt of a task file token by token through the KV cache at each T, with and
without sharing, and measures

    accuracy   greedy answer (first answer token, then decoding to EOS) exact match
    answer CE  cross-entropy of the answer tokens (teacher-forced, streamed)
    cache      bytes of keys and values held after the prompt, and the ratio to T = 1

    python benchmarks/kv_share.py MODEL TASKS.jsonl [--limit 100] [--loops 1,4,8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from mythic.cli.options import parse_counts
from mythic.eval.stats import metric
from mythic.loading import load_any, load_tokenizer
from mythic.tasks.files import Task, read_tasks


def cache_bytes(cache: Any) -> int:
    """Bytes of every key and value tensor the cache holds."""
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


@torch.no_grad()
def streamed(model: Any, tokenizer: Any, task: Task, n_loops: int) -> tuple[bool, float, int]:
    """(answer correct, answer CE, cache bytes after the prompt) with every token fed alone."""
    prompt = tokenizer(task.prompt).input_ids
    answer = tokenizer(task.answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    cache = model.new_cache() if hasattr(model, "new_cache") else model.model.new_cache()

    def step(token: int) -> torch.Tensor:
        out = model(input_ids=torch.tensor([[token]]), cache=cache, n_loops=n_loops, use_cache=True)
        return out.logits[0, -1]

    logits = None
    for token in prompt:
        logits = step(token)
    held = cache_bytes(cache)
    losses, greedy, forced = [], [], logits
    for token in answer:
        losses.append(float(F.cross_entropy(forced.float().unsqueeze(0), torch.tensor([token]))))
        greedy.append(int(forced.argmax()))
        forced = step(token)
    text = tokenizer.decode(
        greedy[: greedy.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in greedy else greedy
    )
    return task.matches(text), sum(losses) / len(losses), held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("tasks", type=Path)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--loops", default="1,4,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("kv_share.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_any(args.model).eval()
    tokenizer = load_tokenizer(args.model)
    tasks = read_tasks(args.tasks)[: args.limit]
    rows = []
    for n_loops in parse_counts(args.loops):
        for share in (None, "last"):
            model.config.kv_share = share
            results = [streamed(model, tokenizer, task, n_loops) for task in tasks]
            rows.append(
                {
                    "n_loops": n_loops,
                    "kv_share": share,
                    "accuracy": metric([float(ok) for ok, _, _ in results]),
                    "answer_ce": sum(ce for _, ce, _ in results) / len(results),
                    "cache_bytes": sum(b for _, _, b in results) / len(results),
                }
            )
    model.config.kv_share = None
    one = next(r["cache_bytes"] for r in rows if r["n_loops"] == min(r["n_loops"] for r in rows))
    table = Table(title=f"{args.tasks.name}: {len(tasks)} prompts streamed token by token")
    for name in ("T", "kv share", "accuracy", "answer CE", "cache KiB", "cache vs T=1"):
        table.add_column(name, justify="right")
    for r in rows:
        acc = r["accuracy"]
        table.add_row(
            str(r["n_loops"]),
            r["kv_share"] or "none",
            f"{acc['value'] * 100:.1f} ± {acc['stderr'] * 100:.1f}",
            f"{r['answer_ce']:.3f}",
            f"{r['cache_bytes'] / 1024:.1f}",
            f"{r['cache_bytes'] / one:.2f}×",
        )
    Console(width=140).print(table)
    args.json.write_text(json.dumps({"model": str(args.model), "tasks": str(args.tasks), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
