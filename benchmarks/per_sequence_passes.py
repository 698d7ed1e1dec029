"""Training steps at per-sequence depths: every pass over the whole batch, or past the shallowest depth over
the rows still running (what ``mythic train`` does), side by side on a recipe's own batches.

A recipe whose curriculum draws a depth per sequence (``difficulty``: T_b = d_b + U{0..extra}, or per-sequence
Poisson-lognormal) runs each micro-batch max_b T_b passes. A sequence whose depth is reached keeps its state,
so the runner computes a pass for the rows with T_b > t alone once they are fewer than ``COMPACT_BELOW``
(``recurrence/exit.py``) of the batch, and writes them back (``recurrence/runner.py``). The share of row-passes
a batch needs is

    needed = Σ_b T_b / (B · max_b T_b)

Two paths on the same micro-batches (the recipe's stream and curriculum from ``--from-step``, by default the
step its extra loops and hold micro-batches begin), forward and backward of the recipe's loss, no optimizer
step (so both see the same weights), three untimed warm-up steps each, then alternating rounds (the machine
is noisy):

    masked      ``COMPACT_BELOW = 0``: every pass over every row, the finished rows masked
    compacted   what training runs

It prints each path's seconds a step (over all micro-batches, the held ones — ``hold``: run far past the
stop with truncated backprop — and the others), the ratio, and the largest difference between the two
paths' losses (the forward is the same computation on fewer rows). The same script run against another
checkout of the library (``PYTHONPATH=CHECKOUT``) times that library's steps on the same batches. Usage:

    python benchmarks/per_sequence_passes.py recipes/pointer-openmythos-cpu.yaml \
        --set data.sources.0.path=runs/lab/pointer-openmythos/data/train.jsonl --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from mythic.recurrence import exit as exiting
from mythic.train.curriculum import Curriculum
from mythic.train.data import TaskStream
from mythic.train.model import build_model, select_trainable
from mythic.train.objective import Objective
from mythic.train.recipe import DifficultyCurriculum, load_recipe

PATHS = {"masked": 0.0, "compacted": exiting.COMPACT_BELOW}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a task-file recipe whose curriculum draws per-sequence depths")
    parser.add_argument("--set", action="append", default=[], help="recipe override key=value (repeatable)")
    parser.add_argument("--from-step", type=int, default=None, help="first step drawn (default: extra_after)")
    parser.add_argument("--steps", type=int, default=20, help="micro-batches a round")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds of --steps each path")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    recipe = load_recipe(args.recipe, args.set)
    spec = recipe.curriculum
    first = args.from_step
    if first is None:
        first = spec.extra_after if isinstance(spec, DifficultyCurriculum) else 0
    model, tokenizer = build_model(recipe.model, torch.device("cpu"), recipe.data)
    select_trainable(model, recipe)
    model.train()
    objective = Objective(model, recipe.loss)
    stream = TaskStream(recipe.data, tokenizer, recipe.seed)
    curriculum = Curriculum(spec, recipe.seed)
    size = recipe.train.micro_batch
    batches, kinds = [], []
    for step in range(first, first + args.steps * args.rounds):
        batch = stream.next_batch(size, step=step)
        batches.append((batch, curriculum.sample(step, 0, size, 0, batch.difficulty)))
        known = None if batch.difficulty is None else batch.difficulty.numpy()
        kinds.append("other" if curriculum.hold(step, 0, size, known) is None else "held")
    depths = [depth.per_sequence(size) for _, depth in batches]
    needed = sum(sum(d) / (len(d) * max(d)) for d in depths) / len(depths)

    for share in PATHS.values():  # warm-up, untimed: the first steps of a process run slower
        exiting.COMPACT_BELOW = share
        for batch, depth in batches[:3]:
            objective(batch.input_ids, batch.labels, depth)["loss"].backward()
            model.zero_grad(set_to_none=True)
    seconds = {path: [0.0] * len(batches) for path in PATHS}
    loss = {path: [0.0] * len(batches) for path in PATHS}
    for round_ in range(args.rounds):
        order = list(PATHS) if round_ % 2 == 0 else list(reversed(PATHS))
        for path in order:
            exiting.COMPACT_BELOW = PATHS[path]
            for i in range(round_ * args.steps, (round_ + 1) * args.steps):
                batch, depth = batches[i]
                began = time.perf_counter()
                out = objective(batch.input_ids, batch.labels, depth)["loss"]
                out.backward()
                model.zero_grad(set_to_none=True)
                seconds[path][i] = time.perf_counter() - began
                loss[path][i] = float(out)
    exiting.COMPACT_BELOW = PATHS["compacted"]

    def mean(values: list[float], kind: str | None = None) -> float:
        picked = [v for v, k in zip(values, kinds, strict=True) if kind in (None, k)]
        return sum(picked) / len(picked) if picked else float("nan")

    rows = [
        {
            "path": path,
            "step_s": mean(seconds[path]),
            **{f"{kind}_s": mean(seconds[path], kind) for kind in ("held", "other")},
        }
        for path in PATHS
    ]
    ratio = rows[0]["step_s"] / rows[1]["step_s"]
    diff = max(abs(a - b) for a, b in zip(loss["masked"], loss["compacted"], strict=True))
    held = kinds.count("held")
    title = f"{args.recipe}: {len(batches)} micro-batches of {size} from step {first} ({held} held), each path"
    table = Table(title=title)
    for column in ("path", "step s", "held micro-batches s", "other micro-batches s"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["path"]), *(f"{row[key]:.4f}" for key in ("step_s", "held_s", "other_s")))
    console = Console(width=120)
    console.print(table)
    console.print(
        f"masked / compacted step time: {ratio:.2f}× with {torch.get_num_threads()} threads; row-passes a batch "
        f"needs: {needed:.0%} of its passes × rows; largest loss difference: {diff:.2e}"
    )
    if args.json:
        summary = {"rows": rows, "ratio": ratio, "needed": needed, "loss_max_abs_diff": diff}
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
