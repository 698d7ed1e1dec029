"""``mythic lab EXPERIMENT.yaml … [--jobs N] [--report docs/results.md]``: run the depth-reasoning experiment.

Generates the experiment's task files, trains and evaluates every arm × seed (resuming what an
earlier call left), and writes the report: one section per experiment, figures beside it.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mythic.cli.options import parse_ints, require_positive


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def lab(
    experiments: Annotated[list[Path], typer.Argument(help="Experiment files, e.g. recipes/lab/hops-openmythos.yaml.")],
    jobs: Annotated[int, typer.Option(help="Runs trained at once, each with its share of the CPU threads.")] = 1,
    report: Annotated[
        Path | None,
        typer.Option(help="Also write the report here (a .md file; its figures go to a folder beside it)."),
    ] = None,
    arms: Annotated[
        str | None,
        typer.Option(help="Only these arms, comma-separated (e.g. looped,single); default: every arm of the file."),
    ] = None,
    seeds: Annotated[
        str | None, typer.Option(help="Only these seeds, comma-separated (e.g. 0); default: the file's seeds.")
    ] = None,
) -> None:
    """Train and evaluate every arm × seed of each experiment; report accuracy against loops with controls."""
    from mythic.lab.experiment import load_experiment, run_experiment, select
    from mythic.lab.results import accuracy_table, aggregate, compare, overlap_text, points, write_report

    require_positive(jobs=jobs)
    chosen_arms = [name.strip() for name in arms.split(",") if name.strip()] if arms is not None else None
    chosen_seeds = parse_ints(seeds, "--seeds", minimum=0) if seeds is not None else None
    # every file is checked before any work starts
    loaded = [select(load_experiment(path), chosen_arms, chosen_seeds) for path in experiments]
    console = Console()
    sections = []
    command = shlex.join(["mythic", "lab", *map(str, sys.argv[2:])]) if len(sys.argv) > 2 else "mythic lab"
    for path, experiment in zip(experiments, loaded, strict=True):
        total = len(experiment.arms) * len(experiment.seeds)
        started = time.perf_counter()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            task = progress.add_task(f"{experiment.name}: runs", total=total)

            def advance(arm: str, seed: int, task: int = task) -> None:
                progress.advance(task)

            records = run_experiment(experiment, jobs, on_done=advance)
        summary = aggregate(experiment, records)
        claims = compare(summary)
        preamble = (
            f"Measured {datetime.date.today().isoformat()} on {platform.machine()} with {os.cpu_count()} CPU threads "
            f"(commit {_commit()}), {len(experiment.seeds)} seeds, {experiment.tasks.test_size} test examples; "
            f"`{command}` ({time.perf_counter() - started:.0f} s for this call; finished runs are reused). "
            f"Experiment file: `{path}`."
        )
        folder = experiment.run_dir / "report"
        sections.append((experiment, summary, claims, preamble))
        md = write_report(experiment, summary, claims, folder, preamble)
        header, rows = accuracy_table(summary)
        seeds = len(experiment.seeds)
        title = f"{experiment.name}: test accuracy (%, mean ± SE over {seeds} seed{'s' if seeds > 1 else ''})"
        accuracy = Table(*header, title=title)
        for row in rows:
            accuracy.add_row(*row)
        console.print(accuracy)
        table = Table(title=f"{experiment.name}: claims (points, mean ± SE over seeds)")
        for column in ("claim", "band", "difference", "overlap"):
            table.add_column(column)
        for claim in claims:
            table.add_row(claim["claim"], claim["band"], points(claim), overlap_text(claim))
        console.print(table)
        console.print(f"report: {md}")
    if report is not None:
        from mythic.lab.results import write_combined_report

        write_combined_report(sections, report)
        console.print(f"wrote {report}")
