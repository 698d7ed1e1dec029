"""Shallow baselines: what a heuristic that does not do the task's steps scores on a task file.

Each generator's ``baselines(task, depth)`` gives, for one example, the expected accuracy of every
heuristic it knows (1 or 0 for a deterministic answer, 1/|candidates| or 0 for a uniform guess);
``depth`` is the deepest difficulty trained on, for heuristics that resolve that many steps and
guess the rest. ``score`` averages them per difficulty and over difficulty bands:

    baseline(band) = (1/|band|) Σ_{examples in band} E[correct]

so every report can put, beside a model's accuracy, the strongest heuristic the format allows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from mythic.tasks.files import Task

Baselines = Callable[[Task, int], dict[str, float]]


def guess(answer: str, candidates: set[str]) -> float:
    """Expected accuracy of a uniform guess among ``candidates`` (0 when there are none)."""
    return (answer in candidates) / len(candidates) if candidates else 0.0


def score(
    tasks: list[Task], baselines: Baselines, depth: int, bands: dict[str, tuple[int, int]] | None = None
) -> dict[str, Any]:
    """{heuristic: {"overall", "per_difficulty": {d: acc}, "bands": {name: acc}}} over ``tasks``."""
    rows = [(task.difficulty, baselines(task, depth)) for task in tasks]
    names = list(rows[0][1]) if rows else []
    result: dict[str, Any] = {}
    for name in names:
        per: dict[int, list[float]] = {}
        for difficulty, values in rows:
            if difficulty is not None:
                per.setdefault(difficulty, []).append(values[name])
        result[name] = {
            "overall": mean(values[name] for _, values in rows),
            "per_difficulty": {str(d): mean(per[d]) for d in sorted(per)},
            "bands": {
                band: mean(v for d, vs in per.items() if lo <= d <= hi for v in vs)
                for band, (lo, hi) in (bands or {}).items()
                if any(lo <= d <= hi for d in per)
            },
        }
    return result


def strongest(scores: dict[str, Any], band: str) -> tuple[str, float]:
    """The heuristic with the highest accuracy on ``band``, and that accuracy."""
    name = max(scores, key=lambda n: scores[n]["bands"].get(band, 0.0))
    return name, scores[name]["bands"].get(band, 0.0)


def mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else 0.0
