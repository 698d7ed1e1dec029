"""``induction``: p-hop induction (Saunshi et al. 2025); the answer needs exactly p = ``difficulty`` hops.

A prompt is p hop marks (unary: a larger p is the same instruction repeated), a bar, and a sequence
x_0 … x_{n−1} over ``symbols`` letters with no letter repeated back to back::

    >>|abcabdbca        answer "c": from the last position (x_8 = a), hop twice (to x_4 = b, then x_2 = c)

One hop from position i: find the previous occurrence of x_i (the largest j < i with x_j = x_i) and
move to j + 1; the answer is the letter reached after p hops from the last position. With no
back-to-back repeats every hop moves strictly left (j + 1 < i) and is one induction-head lookup, so a
p-hop question needs p sequential lookups. Sequences whose p hops would run off the start are redrawn.

``baselines`` (expected accuracy on one example, see ``tasks/baselines.py``): ``chance`` (uniform over the
alphabet), ``one_hop`` (a single hop: right at p = 1), ``frequent_letter`` (the sequence's most frequent
letter, ties split) and ``resolve_then_guess`` (at most ``depth`` hops; a longer question is then guessed
uniformly among the letters other than the one reached, since a hop never lands on the letter it starts
from).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mythic.errors import MythicError
from mythic.tasks.baselines import guess
from mythic.tasks.files import Task

LETTERS = "abcdefghijklmnopqrstuvwxyz"
MARK, BAR = ">", "|"
MAX_DRAWS = 1000


@dataclass(frozen=True)
class InductionOptions:
    """``length``: letters per sequence; ``symbols``: alphabet size (≥ 3)."""

    length: int = 48
    symbols: int = 4

    def check(self, max_difficulty: int) -> None:
        if not 3 <= self.symbols <= len(LETTERS):
            raise MythicError(f"--symbols must be in [3, {len(LETTERS)}], got {self.symbols}")
        if self.length < 2 * max_difficulty + 2:
            raise MythicError(f"{max_difficulty} hops need --length >= {2 * max_difficulty + 2}, got {self.length}")


def hop_path(sequence: str, hops: int) -> list[int] | None:
    """Positions visited by ``hops`` hops from the last letter (None when a hop has no previous occurrence)."""
    path = [len(sequence) - 1]
    for _ in range(hops):
        i = path[-1]
        j = sequence.rfind(sequence[i], 0, i)
        if j < 0:
            return None
        path.append(j + 1)
    return path


def example(rng: np.random.Generator, difficulty: int, options: InductionOptions) -> Task:
    """One p-hop question with p = ``difficulty``."""
    alphabet = LETTERS[: options.symbols]
    for _ in range(MAX_DRAWS):
        letters = [alphabet[rng.integers(options.symbols)]]
        while len(letters) < options.length:
            shift = 1 + int(rng.integers(options.symbols - 1))
            letters.append(alphabet[(alphabet.index(letters[-1]) + shift) % options.symbols])
        sequence = "".join(letters)
        path = hop_path(sequence, difficulty)
        if path is not None:
            return Task(f"{MARK * difficulty}{BAR}{sequence}", sequence[path[-1]], difficulty)
    raise MythicError(f"could not draw a {difficulty}-hop sequence of length {options.length}: raise --length")


def parse(prompt: str) -> tuple[int, str]:
    """(hops, sequence) of a prompt; a malformed one is a MythicError."""
    marks, sep, sequence = prompt.partition(BAR)
    if not sep or set(marks) - {MARK} or not sequence:
        raise MythicError(f"not an induction prompt ('>'*p + '|' + letters): {prompt!r}")
    return len(marks), sequence


def solve(prompt: str) -> tuple[str, int]:
    """(answer, hops) by walking the hops; a malformed prompt is a MythicError."""
    hops, sequence = parse(prompt)
    path = hop_path(sequence, hops)
    if path is None:
        raise MythicError(f"{hops} hops run off the start of {prompt!r}")
    return sequence[path[-1]], len(path) - 1


def baselines(task: Task, depth: int) -> dict[str, float]:
    """Expected accuracy of each shallow heuristic on ``task``, ``depth`` the most hops trained on
    (see the module docstring)."""
    hops, sequence = parse(task.prompt)
    letters = set(sequence)
    counts = {letter: sequence.count(letter) for letter in letters}
    frequent = {letter for letter, count in counts.items() if count == max(counts.values())}
    one = hop_path(sequence, 1)
    reached = hop_path(sequence, min(hops, depth))
    return {
        "chance": 1.0 / len(letters),
        "one_hop": float(one is not None and sequence[one[-1]] == task.answer),
        "frequent_letter": guess(task.answer, frequent),
        "resolve_then_guess": (
            1.0 if hops <= depth else guess(task.answer, letters - {sequence[reached[-1]]}) if reached else 0.0
        ),
    }
