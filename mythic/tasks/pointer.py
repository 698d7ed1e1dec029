"""``pointer``: pointer chasing on a random functional graph listed in shuffled order.

A prompt lists every node's one outgoing edge, ``u>v;``, in a uniformly random order, then ``?``, k step
marks ``+`` (unary: a larger k is the same instruction repeated) and the start node; the answer is the
node reached after k steps (difficulty = k)::

    c>a;a>d;b>c;d>b;?++a          answer "b": a → d → b, two steps

The graph is a uniformly random function on ``nodes`` letters, conditioned on the k-step walk from the
start visiting k + 1 distinct nodes (no cycle shortens it, the answer is never the start): the walk is
drawn first, every other node's successor uniformly among all nodes (itself included). The edge order
carries nothing about the walk (unlike ``hops``' program order) and there are no intermediate answers:
the steps are learned from the final answer alone. Chance is 1/nodes.

``solve`` parses the edges and walks k steps, returning (answer, k); the tests check it against every
generated example and that the walk's nodes are distinct.

``baselines`` (``tasks/baselines.py``): ``chance``, ``successor`` (right at k = 1 only),
``frequent_target`` (the node most edges point to, ties split), ``any_target`` (uniform over the nodes
some edge points to, the start excluded) and ``resolve_then_guess`` (walk at most ``depth`` steps, then
guess uniformly among the targets not yet visited: the walk never revisits).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from mythic.errors import MythicError
from mythic.tasks.baselines import guess
from mythic.tasks.files import Task

LETTERS = "abcdefghijklmnopqrstuvwxyz"
ARROW, END, QUERY, STEP = ">", ";", "?", "+"


@dataclass(frozen=True)
class PointerOptions:
    """``nodes``: letters in the graph (chance is 1/nodes)."""

    nodes: int = 12

    def check(self, max_difficulty: int) -> None:
        if not 2 <= self.nodes <= len(LETTERS):
            raise MythicError(f"--nodes must be in [2, {len(LETTERS)}], got {self.nodes}")
        if max_difficulty + 1 > self.nodes:
            raise MythicError(f"walks of {max_difficulty} steps need --nodes >= {max_difficulty + 1}")


def example(rng: np.random.Generator, difficulty: int, options: PointerOptions) -> Task:
    """One question whose answer takes exactly ``difficulty`` steps from the start."""
    names = [LETTERS[i] for i in rng.permutation(len(LETTERS))[: options.nodes]]
    walk = [names[i] for i in rng.permutation(options.nodes)[: difficulty + 1]]
    successor = {u: v for u, v in zip(walk, walk[1:], strict=False)}
    for node in names:
        successor.setdefault(node, names[int(rng.integers(options.nodes))])
    edges = "".join(f"{names[i]}{ARROW}{successor[names[i]]}{END}" for i in rng.permutation(options.nodes))
    return Task(f"{edges}{QUERY}{STEP * difficulty}{walk[0]}", walk[-1], difficulty)


def parse(prompt: str) -> tuple[dict[str, str], str, int]:
    """(successor table, start, steps) of a prompt; a malformed one is a MythicError."""
    edges, sep, question = prompt.rpartition(QUERY)
    steps = len(question) - len(question.lstrip(STEP))
    start = question[steps:]
    if not sep or len(start) != 1 or start not in LETTERS:
        raise MythicError(f"not a pointer prompt (no '{QUERY}{STEP}…node' question): {prompt!r}")
    table: dict[str, str] = {}
    for statement in filter(None, edges.split(END)):
        u, arrow, v = statement.partition(ARROW)
        if not arrow or len(u) != 1 or len(v) != 1 or u in table:
            raise MythicError(f"bad or repeated edge {statement!r} in {prompt!r}")
        table[u] = v
    return table, start, steps


def walk(table: dict[str, str], start: str, steps: int, prompt: str) -> list[str]:
    """The nodes visited from ``start`` in ``steps`` steps (a node without an edge is a MythicError)."""
    path = [start]
    for _ in range(steps):
        if path[-1] not in table:
            raise MythicError(f"node {path[-1]!r} has no edge in {prompt!r}")
        path.append(table[path[-1]])
    return path


def solve(prompt: str) -> tuple[str, int]:
    """(answer, steps) by walking the edges."""
    table, start, steps = parse(prompt)
    return walk(table, start, steps, prompt)[-1], steps


def baselines(task: Task, depth: int) -> dict[str, float]:
    """Expected accuracy of each shallow heuristic on ``task``, ``depth`` the deepest walk trained on
    (see the module docstring)."""
    table, start, steps = parse(task.prompt)
    counts = Counter(table.values())
    top = max(counts.values())
    frequent = [node for node, count in counts.items() if count == top]
    unvisited = set(counts) - set(walk(table, start, min(steps, depth), task.prompt))
    return {
        "chance": 1.0 / len(table),
        "successor": float(table.get(start) == task.answer),
        "frequent_target": (task.answer in frequent) / len(frequent),
        "any_target": guess(task.answer, set(counts) - {start}),
        "resolve_then_guess": 1.0 if steps <= depth else guess(task.answer, unvisited),
    }
