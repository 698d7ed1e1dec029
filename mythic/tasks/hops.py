"""``hops``: variable chains with distractors; the answer needs exactly ``difficulty`` lookups.

A prompt is a program of ``n_vars`` single-letter assignments, then a query::

    f=3;x=7;k=f;b=k;m=x;q=b;?q          answer "3", difficulty 4 (q → b → k → f → 3)

Each statement is ``lhs=rhs;`` with ``lhs`` a variable assigned exactly once and ``rhs`` a digit
or a variable assigned on an earlier line, as in real code: the chains are interleaved in a
uniformly random order that keeps every definition before its uses. (Program order is what lets
a causal model resolve values forward: each line can read the already-resolved value of the line
it refers to, one level per layer or loop.) The variables form ``roots`` chains, each rooted in a
different digit:
the queried chain v_d = v_{d−1}, …, v_2 = v_1, v_1 = digit has d statements, so resolving
``?v_d`` takes exactly d lookups (find the statement of the current variable, read its right
side; stop at a digit). The other n_vars − d variables are split at random into the other
roots − 1 chains (each at least one statement): distractors that share no variable with the
query's chain. Every prompt has the same length (4·n_vars + 2 characters) and the same number
of digits (``roots``, all different) whatever its difficulty, so a harder question is neither
a longer input nor an easier guess: answering with a digit seen in the prompt is right 1/roots
of the time at every difficulty.

``solve`` is the brute-force check: it parses the prompt and follows the chain, returning
(answer, lookups); the tests check lookups == difficulty for every generated example.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mythic.errors import MythicError
from mythic.tasks.files import Task

VARIABLES = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"


@dataclass(frozen=True)
class HopsOptions:
    """``n_vars``: statements per prompt; ``roots``: chains per prompt (one per digit, the query's among them)."""

    n_vars: int = 16
    roots: int = 4

    def check(self, max_difficulty: int) -> None:
        if not 2 <= self.roots <= len(DIGITS):
            raise MythicError(f"--roots must be in [2, {len(DIGITS)}], got {self.roots}")
        if not self.roots <= self.n_vars <= len(VARIABLES):
            raise MythicError(f"--vars must be in [{self.roots}, {len(VARIABLES)}], got {self.n_vars}")
        if max_difficulty > self.n_vars - self.roots + 1:
            need = max_difficulty + self.roots - 1
            raise MythicError(f"hops of difficulty {max_difficulty} with {self.roots} roots need --vars >= {need}")


def example(rng: np.random.Generator, difficulty: int, options: HopsOptions) -> Task:
    """One prompt whose query needs exactly ``difficulty`` lookups."""
    names = [VARIABLES[i] for i in rng.permutation(len(VARIABLES))[: options.n_vars]]
    digits = [DIGITS[i] for i in rng.permutation(len(DIGITS))[: options.roots]]
    others = options.n_vars - difficulty
    cuts = np.sort(rng.choice(np.arange(1, others), size=options.roots - 2, replace=False)) if others > 1 else []
    lengths = [difficulty, *np.diff([0, *cuts, others]).tolist()]
    chains, start = [], 0
    for length, digit in zip(lengths, digits, strict=True):
        chain = names[start : start + length]
        chains.append([(chain[0], digit)] + [(chain[i], chain[i - 1]) for i in range(1, length)])
        start += length
    turns = rng.permutation([c for c, chain in enumerate(chains) for _ in chain])
    cursors = [0] * len(chains)
    body = ""
    for c in turns:
        lhs, rhs = chains[c][cursors[c]]
        cursors[c] += 1
        body += f"{lhs}={rhs};"
    return Task(f"{body}?{names[difficulty - 1]}", digits[0], difficulty)


def solve(prompt: str) -> tuple[str, int]:
    """(answer, lookups) by following the query's chain; a malformed or cyclic prompt is a MythicError."""
    body, sep, query = prompt.rpartition("?")
    if not sep or query not in VARIABLES or not query:
        raise MythicError(f"not a hops prompt (no '?variable' query): {prompt!r}")
    table: dict[str, str] = {}
    for statement in filter(None, body.split(";")):
        lhs, eq, rhs = statement.partition("=")
        if not eq or lhs in table:
            raise MythicError(f"bad or repeated statement {statement!r} in {prompt!r}")
        table[lhs] = rhs
    current, lookups = query, 0
    while current not in DIGITS:
        if current not in table or lookups > len(table):
            raise MythicError(f"{current!r} is undefined or cyclic in {prompt!r}")
        current, lookups = table[current], lookups + 1
    return current, lookups
