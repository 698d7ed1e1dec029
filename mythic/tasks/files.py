"""Task files: JSON lines of ``{"prompt": str, "answer": str, "difficulty": int}``.

``difficulty`` is optional (absent: the example counts in no per-difficulty table), and so is
``intermediate``: ``[[end, answer], …]``, answers due at the end of ``prompt[:end]`` (0 < end <
len(prompt)), trained on beside the final answer and ignored by evaluation. Other fields are kept in
``Task.extra``. Reading is strict: a line that is not a JSON object, a missing or non-string ``prompt`` /
``answer``, an empty answer, a non-integer difficulty, a malformed ``intermediate``, a line that is not
UTF-8, or a file without a single example is a one-line ``MythicError`` naming the file and line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mythic.errors import MythicError


@dataclass(frozen=True)
class Task:
    """One example: the model sees ``prompt`` and must produce ``answer``."""

    prompt: str
    answer: str
    difficulty: int | None = None
    intermediate: tuple[tuple[int, str], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def matches(self, prediction: str) -> bool:
        """Exact match after stripping surrounding whitespace from both sides."""
        return prediction.strip() == self.answer.strip()

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"prompt": self.prompt, "answer": self.answer}
        if self.difficulty is not None:
            row["difficulty"] = self.difficulty
        if self.intermediate:
            row["intermediate"] = [list(pair) for pair in self.intermediate]
        return row | self.extra


def parse_task(row: Any, where: str) -> Task:
    """A ``Task`` from one decoded JSON line; ``where`` names it in errors ("file line N")."""
    if not isinstance(row, dict):
        raise MythicError(f"{where}: expected a JSON object with prompt and answer")
    for key in ("prompt", "answer"):
        if key not in row:
            raise MythicError(f"{where}: missing {key!r}")
        if not isinstance(row[key], str):
            raise MythicError(f"{where}: {key!r} must be a string, got {type(row[key]).__name__}")
    if not row["answer"].strip():
        raise MythicError(f"{where}: 'answer' is empty")
    difficulty = row.get("difficulty")
    if difficulty is not None and (isinstance(difficulty, bool) or not isinstance(difficulty, int)):
        raise MythicError(f"{where}: 'difficulty' must be an integer, got {difficulty!r}")
    intermediate = parse_intermediate(row.get("intermediate", []), len(row["prompt"]), where)
    extra = {k: v for k, v in row.items() if k not in ("prompt", "answer", "difficulty", "intermediate")}
    return Task(row["prompt"], row["answer"], difficulty, intermediate, extra)


def parse_intermediate(value: Any, length: int, where: str) -> tuple[tuple[int, str], ...]:
    """``[[end, answer], …]`` → pairs; each end an integer in (0, length), each answer a non-empty string."""
    shape = f"{where}: 'intermediate' must be a list of [end, answer] pairs with 0 < end < len(prompt)"
    if not isinstance(value, list):
        raise MythicError(shape)
    for pair in value:
        end, answer = pair if isinstance(pair, list) and len(pair) == 2 else (None, None)
        good_end = isinstance(end, int) and not isinstance(end, bool) and 0 < end < length
        if not good_end or not isinstance(answer, str) or not answer.strip():
            raise MythicError(shape)
    return tuple((end, answer) for end, answer in value)


def read_tasks(path: str | os.PathLike[str]) -> list[Task]:
    """Every example of a task file (blank lines skipped); see the module docstring for the errors."""
    path = Path(path)
    if not path.is_file():
        raise MythicError(f"task file {path} not found")
    tasks = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        where = f"{path} line {number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise MythicError(f"{where}: not UTF-8 (byte {err.start + 1} of the line)") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise MythicError(f"{where}: not valid JSON") from None
        tasks.append(parse_task(row, where))
    if not tasks:
        raise MythicError(f"task file {path} holds no examples")
    return tasks


def write_tasks(path: str | os.PathLike[str], tasks: Iterable[Task]) -> int:
    """Write ``tasks`` as JSON lines; returns how many."""
    lines = [json.dumps(task.to_json()) + "\n" for task in tasks]
    Path(path).write_text("".join(lines), encoding="utf-8")
    return len(lines)


def write_predictions(path: str | os.PathLike[str], tasks: Iterable[Task], predictions: Iterable[str]) -> None:
    """One JSON line per example: prompt, answer, difficulty, prediction and whether it matched."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pairs = zip(tasks, predictions, strict=True)
    write_tasks(path, (replace(t, extra=t.extra | {"prediction": p, "correct": t.matches(p)}) for t, p in pairs))
