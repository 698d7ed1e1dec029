"""``hops``: variable chains with distractors; the answer needs exactly ``difficulty`` lookups.

A prompt is a program of single-letter assignments, then a query written as one more statement
whose left side is ``?``::

    f=3;x=7;k=f;b=k;m=x;q=b;w=q;?=q          answer "3", difficulty 4 (q → b → k → f → 3)

Each statement is ``lhs=rhs;`` with ``lhs`` a variable assigned exactly once and ``rhs`` a digit or a
variable assigned earlier: the chains are interleaved in a uniformly random order that keeps every
definition before its uses. Program order is what lets a causal model resolve values forward: each
right-side variable can read the already resolved value of the statement that assigns it, one level per
layer or loop.

The variables form ``roots`` chains, each rooted in a different digit (v_1 = digit, v_2 = v_1, …). The
query names the d-th variable of one chain, so resolving it takes exactly d lookups. Chain lengths do
not depend on d: the queried chain has U[d, chain] statements (it continues past the query), every
other chain U[1, chain]; so the prompt's shape does not give d away, and a digit seen in the prompt is
right about 1/roots of the time at every difficulty.

``intermediate`` (default 0 = off): every right-side variable whose value takes at most that many
lookups gets its value as an intermediate answer at its position (``b=k`` above: "3" right after the
``k``, 2 lookups). Set it to the train split's largest difficulty.

``baselines`` (``tasks/baselines.py``): ``chance`` (uniform over the roots' digits), ``first_digit`` (the
queried chain, drawn at least as long as its difficulty, is listed first more often than 1/roots),
``longest_chain`` (its root, ties split), ``resolve_then_guess`` (resolve every variable within
``depth`` lookups, else guess uniformly among the roots whose chains still hold unresolved variables)
and ``resolve_then_guess_weighted`` (that guess weighted by each root's unresolved variables).

``solve`` parses the prompt and follows the chain, returning (answer, lookups); the tests check
lookups == difficulty for every generated example, and every intermediate answer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from mythic.errors import MythicError
from mythic.tasks.baselines import guess
from mythic.tasks.files import Task

VARIABLES = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
QUERY = "?"


@dataclass(frozen=True)
class HopsOptions:
    """``roots``: chains per prompt (one per digit, the query's among them); ``chain``: the longest chain;
    ``intermediate``: supervise right-side variables needing at most this many lookups (0: none)."""

    roots: int = 3
    chain: int = 8
    intermediate: int = 0

    def check(self, max_difficulty: int) -> None:
        if not 2 <= self.roots <= len(DIGITS):
            raise MythicError(f"--roots must be in [2, {len(DIGITS)}], got {self.roots}")
        if self.chain < 1 or self.roots * self.chain > len(VARIABLES):
            raise MythicError(f"--roots × --chain must be at most {len(VARIABLES)} (one letter per variable)")
        if max_difficulty > self.chain:
            raise MythicError(f"hops of difficulty {max_difficulty} need --chain >= {max_difficulty}")
        if not 0 <= self.intermediate <= self.chain:
            raise MythicError(f"--intermediate must be in [0, --chain], got {self.intermediate}")


def example(rng: np.random.Generator, difficulty: int, options: HopsOptions) -> Task:
    """One program whose query needs exactly ``difficulty`` lookups."""
    lengths = [int(rng.integers(difficulty, options.chain + 1))]
    lengths += [int(rng.integers(1, options.chain + 1)) for _ in range(options.roots - 1)]
    names = [VARIABLES[i] for i in rng.permutation(len(VARIABLES))[: sum(lengths)]]
    digits = [DIGITS[i] for i in rng.permutation(len(DIGITS))[: options.roots]]
    chains, start = [], 0
    for length, digit in zip(lengths, digits, strict=True):
        chain = names[start : start + length]
        chains.append([(chain[0], digit)] + [(chain[i], chain[i - 1]) for i in range(1, length)])
        start += length
    turns = rng.permutation([c for c, chain in enumerate(chains) for _ in chain])
    cursors = [0] * len(chains)
    body, intermediate = "", []
    for c in turns:
        lhs, rhs = chains[c][cursors[c]]
        if rhs in VARIABLES and cursors[c] <= options.intermediate:  # rhs = chain[k − 1]: k = cursors[c] lookups
            intermediate.append((len(body) + 3, digits[c]))
        cursors[c] += 1
        body += f"{lhs}={rhs};"
    return Task(f"{body}{QUERY}={names[difficulty - 1]}", digits[0], difficulty, tuple(intermediate))


def parse(prompt: str) -> tuple[dict[str, str], str]:
    """(assignment table in program order, query variable); a malformed prompt is a MythicError."""
    body, sep, query = prompt.rpartition(f"{QUERY}=")
    if not sep or query not in VARIABLES or not query:
        raise MythicError(f"not a hops prompt (no '{QUERY}=variable' query): {prompt!r}")
    table: dict[str, str] = {}
    for statement in filter(None, body.split(";")):
        lhs, eq, rhs = statement.partition("=")
        if not eq or lhs in table:
            raise MythicError(f"bad or repeated statement {statement!r} in {prompt!r}")
        table[lhs] = rhs
    return table, query


def resolve(table: dict[str, str], variable: str, prompt: str) -> tuple[str, int]:
    """(root digit, lookups) of ``variable``; an undefined or cyclic one is a MythicError."""
    current, lookups = variable, 0
    while current not in DIGITS:
        if current not in table or lookups > len(table):
            raise MythicError(f"{current!r} is undefined or cyclic in {prompt!r}")
        current, lookups = table[current], lookups + 1
    return current, lookups


def solve(prompt: str) -> tuple[str, int]:
    """(answer, lookups) by following the query's chain; a malformed or cyclic prompt is a MythicError."""
    table, query = parse(prompt)
    return resolve(table, query, prompt)


def baselines(task: Task, depth: int) -> dict[str, float]:
    """Expected accuracy of each shallow heuristic on ``task``, ``depth`` the deepest lookup trained on
    (see the module docstring)."""
    table, query = parse(task.prompt)
    resolved = {lhs: resolve(table, lhs, task.prompt) for lhs in table}
    roots = [rhs for rhs in table.values() if rhs in DIGITS]
    chain = Counter(root for root, _ in resolved.values())
    longest = [root for root, size in chain.items() if size == max(chain.values())]
    unresolved = Counter(root for root, lookups in resolved.values() if lookups > depth)
    solved = resolved[query][1] <= depth
    return {
        "chance": 1.0 / len(roots),
        "first_digit": float(roots[0] == task.answer),
        "longest_chain": guess(task.answer, set(longest)),
        "resolve_then_guess": 1.0 if solved else guess(task.answer, set(unresolved)),
        "resolve_then_guess_weighted": 1.0 if solved else unresolved[task.answer] / sum(unresolved.values()),
    }
