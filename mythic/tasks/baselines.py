"""Shallow baselines: what a heuristic that does not do the task's steps scores on a task file.

Each generator's ``baselines(task, depth)`` gives, for one example, the expected accuracy of every
heuristic it knows (1 or 0 for a deterministic answer, 1/|candidates| or 0 for a uniform guess);
``depth`` is how many steps a heuristic may take before it guesses (``resolve_then_guess``). A heuristic
is shallow for questions when it takes fewer steps than any of them needs, so ``score`` lets it take
d − 1 steps at difficulty d and lo − 1 on a band [lo, hi] (on 5–8: the 4 steps trained on; on 1–4: none):

    baseline(band) = (1/|band|) Σ_{examples in band} E[correct | depth = lo − 1]
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import fmean
from typing import Any

from mythic.tasks.files import Task

Baselines = Callable[[Task, int], dict[str, float]]


def guess(answer: str, candidates: set[str]) -> float:
    """Expected accuracy of a uniform guess among ``candidates`` (0 when there are none)."""
    return (answer in candidates) / len(candidates) if candidates else 0.0


def score(tasks: list[Task], baselines: Baselines, bands: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """{heuristic: {"per_difficulty": {d: acc}, "bands": {name: acc}}} over ``tasks`` (see the module docstring)."""
    by_difficulty: dict[int, list[Task]] = {}
    for task in tasks:
        if task.difficulty is not None:
            by_difficulty.setdefault(task.difficulty, []).append(task)

    def scored(group: list[Task], depth: int) -> dict[str, float]:
        rows = [baselines(task, depth) for task in group]
        return {name: fmean(row[name] for row in rows) for name in rows[0]}

    per = {d: scored(group, d - 1) for d, group in sorted(by_difficulty.items())}
    banded = {
        band: scored([t for d, group in by_difficulty.items() if lo <= d <= hi for t in group], lo - 1)
        for band, (lo, hi) in (bands or {}).items()
        if any(lo <= d <= hi for d in by_difficulty)
    }
    names = next(iter(per.values())).keys() if per else []
    return {
        name: {
            "per_difficulty": {str(d): values[name] for d, values in per.items()},
            "bands": {band: values[name] for band, values in banded.items()},
        }
        for name in names
    }


def strongest(scores: dict[str, Any], band: str) -> tuple[str, float]:
    """The heuristic with the highest accuracy on ``band``, and that accuracy."""
    name = max(scores, key=lambda n: scores[n]["bands"].get(band, 0.0))
    return name, scores[name]["bands"].get(band, 0.0)
