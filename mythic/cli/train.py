"""``mythic train RECIPE.yaml [--set key=value …] [--resume]``: run a training recipe.

Runs ``mythic.train.trainer.train`` under a rich progress bar (loss, T, tokens/s, ETA) and prints the
run folder, the final checkpoint and the last step's loss terms.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import TimeRemainingColumn
from rich.table import Column, Table

from mythic.cli.bars import progress_bar
from mythic.train.recipe import load_recipe

SHOWN = ("loss", "ce", "ce_lo", "ce_hi", "margin", "kl_anchor", "self_distill")


def train(
    recipe: Annotated[Path, typer.Argument(help="YAML recipe, e.g. recipes/cpu-quickstart.yaml")],
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a recipe value: key.path=value (repeatable)")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its newest checkpoint")] = False,
) -> None:
    """Train the recurrence (and optional LoRA) of a model from a YAML recipe."""
    from mythic.train.trainer import train as run_training

    spec = load_recipe(recipe, overrides or [])
    console = Console()
    is_main = int(os.environ.get("RANK", "0")) == 0
    fields = "loss {task.fields[loss]}  T {task.fields[T]}  {task.fields[tps]} tok/s"
    with progress_bar(fields, TimeRemainingColumn(), console=console, disable=not is_main) as bar:
        task = bar.add_task(spec.name, total=spec.train.steps, loss="-", T="-", tps="-")

        def on_step(done: int, total: int, record: dict[str, float]) -> None:
            bar.update(
                task,
                completed=done,
                loss=f"{record['loss']:.4f}",
                T=f"{record['T']:.2g}",
                tps=f"{record['tokens_per_s']:.0f}",
            )

        result = run_training(spec, resume=resume, on_step=on_step)
    if not is_main:
        return
    table = Table("term", Column("value", justify="right"), title=f"{spec.name}: step {result.steps}")
    for key in (*SHOWN, *sorted(k for k in result.metrics if k.startswith("ce_T"))):
        if key in result.metrics:
            table.add_row(key, f"{result.metrics[key]:.4f}")
    table.add_row("skipped steps", str(result.skipped_steps))
    console.print(table)
    console.print(f"run folder: {result.run_dir}")
    console.print(f"final checkpoint: {result.final_dir}")
    if result.plot is not None:
        console.print(f"plot: {result.plot}")
