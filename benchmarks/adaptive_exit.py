"""Adaptive depth against fixed loop counts: accuracy, loops used and decode speed, side by side.

On a task file (the hops model is where loops matter), for fixed T in --loops and for each
adaptive row (--auto, with --exit): greedy answers at every batch size in --batch-sizes, timed in
alternating rounds after an untimed warm-up (the median of --rounds), so every ratio compares rows measured next to each
other. Prints one table per batch size (accuracy, mean loops per generated token, tokens/s and
tokens/s relative to the best fixed T), the adaptive rows' mean loops per difficulty, and writes
JSON and a PNG of mean loops against difficulty. With --masked every adaptive row is timed twice
more, with every pass computed for the whole batch (exited tokens masked, never gathered), which
measures what gathering the running rows and tokens saves.

    python benchmarks/adaptive_exit.py MODEL TASKS.jsonl [--limit 400] [--loops 1,2,4,8]
        [--auto auto:32] [--exit kl:0.0001] [--batch-sizes 1,8] [--rounds 3] [--masked]
        [--json out.json] [--png out.png]

Tokens/s counts each prompt's generated tokens up to its EOS over the wall-clock time of the
whole row (prompt prefill included): on a task whose answers are a few tokens, the prefill of
the prompt is most of the work. Forward hooks split the time: prefill seconds (the calls over a
whole prompt batch) and decode tokens/s (rows × single-token calls over their seconds; rows that
already ended still count, as they are still computed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from mythic.cli.options import parse_counts, parse_loops
from mythic.eval.exact_match import predict, score
from mythic.eval.rows import loop_rows, row_fields
from mythic.loading import load_any, load_tokenizer
from mythic.recurrence import exit as exiting
from mythic.tasks.files import read_tasks


class PhaseClock:
    """Forward hooks that time every model call: a call over more than one new token is a prefill,
    one over a single token is a decode step (``rows`` tokens)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.prefill = self.decode = 0.0
        self.decoded = 0
        self._started = 0.0
        self._tokens = 0
        model.register_forward_pre_hook(self._begin, with_kwargs=True)
        model.register_forward_hook(self._end)

    def reset(self) -> None:
        self.prefill = self.decode = 0.0
        self.decoded = 0

    def _begin(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = args[0] if args else kwargs["input_ids"]
        self._tokens = ids.shape[1]
        self._started = time.perf_counter()

    def _end(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        elapsed = time.perf_counter() - self._started
        if self._tokens > 1:
            self.prefill += elapsed
        else:
            self.decode += elapsed
            self.decoded += output.logits.shape[0]


@contextlib.contextmanager
def gathering(on: bool) -> Iterator[None]:
    """Passes computed for the running tokens only (mythic's behaviour), or, ``on=False``, always for
    the whole batch with the exited tokens masked."""
    kept = exiting.COMPACT_BELOW
    exiting.COMPACT_BELOW = kept if on else 0.0
    try:
        yield
    finally:
        exiting.COMPACT_BELOW = kept


def measure(model, tokenizer, tasks, rows_spec, batch_sizes: list[int], rounds: int) -> dict[str, Any]:
    """{batch size: [row result]} for ``rows_spec`` [(depth, gathered)]; the rows are timed in
    alternating order, round after round."""
    clock = PhaseClock(model)
    results: dict[str, Any] = {}
    for batch_size in batch_sizes:
        timings: dict[int, list[tuple[float, float, float, int]]] = {i: [] for i in range(len(rows_spec))}
        outputs: dict[int, Any] = {}
        for depth, gather in rows_spec:  # warm-up, untimed
            with gathering(gather):
                predict(model, tokenizer, tasks[:batch_size], depth, batch_size=batch_size)
        for r in range(rounds):
            order = list(range(len(rows_spec)))
            if r % 2:
                order.reverse()
            for i in order:
                depth, gather = rows_spec[i]
                clock.reset()
                started = time.perf_counter()
                with gathering(gather):
                    outputs[i] = predict(model, tokenizer, tasks, depth, batch_size=batch_size)
                timings[i].append((time.perf_counter() - started, clock.prefill, clock.decode, clock.decoded))
        rows = []
        for i, (depth, gather) in enumerate(rows_spec):
            prediction = outputs[i]
            total, prefill, decode, decoded = (statistics.median(t[j] for t in timings[i]) for j in range(4))
            rows.append(
                {
                    **row_fields(depth),
                    "gathered": gather,
                    **score(tasks, prediction.answers, prediction),
                    "seconds": round(total, 3),
                    "tokens_per_second": round(prediction.tokens / total, 2),
                    "prefill_seconds": round(prefill, 3),
                    "decode_tokens_per_second": round(decoded / decode, 2) if decode else None,
                }
            )
        results[str(batch_size)] = rows
    return results


def table(rows: list[dict[str, Any]], batch_size: int) -> Table:
    fixed = [r for r in rows if isinstance(r["n_loops"], int)]
    best = max(fixed, key=lambda r: (r["metrics"]["accuracy"]["value"], r["tokens_per_second"]))
    out = Table(title=f"batch {batch_size} (best fixed row: {best['label']})")
    names = ("row", "accuracy", "mean loops", "tokens/s", "vs best", "prefill s", "vs best", "decode tok/s", "vs best")
    for name in names:
        out.add_column(name, justify="right")
    for r in rows:
        acc = r["metrics"]["accuracy"]
        label = f"{r['label']} {r['exit']}" if "exit" in r else r["label"]
        label += "" if r["gathered"] else " masked"
        decode, best_decode = r["decode_tokens_per_second"], best["decode_tokens_per_second"]
        out.add_row(
            label,
            f"{acc['value'] * 100:.1f} ± {acc['stderr'] * 100:.1f}",
            f"{r['mean_loops']:.2f}",
            f"{r['tokens_per_second']:.1f}",
            f"{r['tokens_per_second'] / best['tokens_per_second']:.2f}×",
            f"{r['prefill_seconds']:.2f}",
            f"{r['prefill_seconds'] / best['prefill_seconds']:.2f}×",
            "-" if decode is None else f"{decode:.1f}",
            "-" if decode is None or not best_decode else f"{decode / best_decode:.2f}×",
        )
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for r in rows:
        if r["n_loops"] != "auto" or not r["gathered"]:
            continue
        ds = sorted(r["per_difficulty"], key=int)
        ax.plot([int(d) for d in ds], [r["per_difficulty"][d]["mean_loops"] for d in ds], marker="o", label=r["label"])
    ax.set_xlabel("difficulty (lookups)")
    ax.set_ylabel("mean loops per generated token")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("tasks", type=Path)
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--loops", default="1,2,4,8")
    parser.add_argument("--auto", default="auto:32")
    parser.add_argument("--exit", dest="exit_rule", default="kl:0.0001")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--masked", action="store_true", help="also time the adaptive rows without gathering")
    parser.add_argument("--json", type=Path, default=Path("adaptive_exit.json"))
    parser.add_argument("--png", type=Path, default=Path("adaptive_exit.png"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_any(args.model).eval()
    tokenizer = load_tokenizer(args.model)
    tasks = read_tasks(args.tasks)[: args.limit]
    depths = loop_rows(model, [*parse_counts(args.loops), *parse_loops(args.auto, args.exit_rule)])
    rows_spec = [(depth, True) for depth in depths]
    if args.masked:
        rows_spec += [(depth, False) for depth in depths if not isinstance(depth, int)]
    results = measure(model, tokenizer, tasks, rows_spec, parse_counts(args.batch_sizes), args.rounds)
    console = Console(width=140)
    for batch_size, rows in results.items():
        console.print(table(rows, int(batch_size)))
    first = next(iter(results.values()))
    per_difficulty = Table(title="adaptive rows: mean loops (accuracy %) per difficulty")
    per_difficulty.add_column("difficulty", justify="right")
    adaptive = [r for r in first if r["n_loops"] == "auto" and r["gathered"]]
    for r in adaptive:
        per_difficulty.add_column(f"{r['label']} {r['exit']}", justify="right")
    for d in sorted(first[0]["per_difficulty"], key=int):
        cells = [
            f"{r['per_difficulty'][d]['mean_loops']:.2f} ({r['per_difficulty'][d]['accuracy']['value'] * 100:.0f})"
            for r in adaptive
        ]
        per_difficulty.add_row(d, *cells)
    console.print(per_difficulty)
    record = {"model": str(args.model), "tasks": str(args.tasks), "examples": len(tasks), "results": results}
    args.json.write_text(json.dumps(record, indent=2))
    plot(first, args.png)
    console.print(f"wrote {args.json} and {args.png}")


if __name__ == "__main__":
    main()
