"""``mythic lab EXPERIMENT.yaml … [--jobs N] [--records DIR] [--report docs/results.md]``: run an experiment.

Runs ``mythic.lab.experiment`` (task files, tuning on valid, every arm × seed, recorded runs reused)
and writes the report: one section per experiment, figures beside it.
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
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import TaskID
from rich.table import Table

from mythic.cli.bars import progress_bar
from mythic.cli.options import parse_ints, require_positive

if TYPE_CHECKING:
    from mythic.lab.experiment import Experiment, Outcome


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def _table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(*header, title=title)
    for row in rows:
        table.add_row(*row)
    return table


def run_with_progress(console: Console, experiment: Experiment, jobs: int, records: Path | None) -> Outcome:
    """``run_experiment`` with a bar per phase over its training steps and the time they have left."""
    from mythic.lab.experiment import run_experiment, time_left

    with progress_bar("left ≈ {task.fields[left]}", console=console) as progress:
        bars: dict[str, tuple[TaskID, int, float]] = {}  # phase → (bar, steps done at its start, start time)

        def on_steps(phase: str, done: int, total: int) -> None:
            if phase not in bars:
                bar = progress.add_task(f"{experiment.name} {phase}: training steps", total=total, left="…")
                bars[phase] = (bar, done, time.perf_counter())
            bar, first, began = bars[phase]
            left = time_left(time.perf_counter() - began, done - first, total - done)
            shown = "…" if left is None else f"{left / 60:.0f} min" if left >= 60 else f"{left:.0f} s"
            progress.update(bar, completed=done, left=shown)

        folder = records / experiment.name if records is not None else None
        return run_experiment(experiment, jobs, folder, on_steps)


def lab(
    experiments: Annotated[list[Path], typer.Argument(help="Experiment files, e.g. recipes/lab/hops-openmythos.yaml.")],
    jobs: Annotated[
        int,
        typer.Option(help="Runs trained at once; each gets cores/N torch threads (N above the core count is refused)."),
    ] = 1,
    records: Annotated[
        Path | None,
        typer.Option(
            help="Folder of the runs' evaluation records (small JSON, no weights; one subfolder per experiment): "
            "recorded runs are not trained again, so committed records rebuild the report anywhere. "
            "Default: beside each run's weights."
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            help="Also write the report into this Markdown page (its figures go to a folder beside it); the "
            "experiments' sections are replaced, other experiments' sections on the page are kept."
        ),
    ] = None,
    arms: Annotated[
        str | None,
        typer.Option(help="Only these arms, comma-separated (e.g. looped,single); default: every arm of the file."),
    ] = None,
    seeds: Annotated[
        str | None, typer.Option(help="Only these seeds, comma-separated (e.g. 0); default: the file's seeds.")
    ] = None,
) -> None:
    """Tune, train and evaluate every arm × seed of each experiment; report accuracy against loops beside its
    controls and baselines."""
    from mythic.lab import results
    from mythic.lab.experiment import cpu_threads, load_experiment, select

    require_positive(jobs=jobs)
    cpu_threads(jobs)
    chosen_arms = [name.strip() for name in arms.split(",") if name.strip()] if arms is not None else None
    chosen_seeds = parse_ints(seeds, "--seeds", minimum=0) if seeds is not None else None
    # every file is checked before any work starts
    loaded = [select(load_experiment(path), chosen_arms, chosen_seeds) for path in experiments]
    console = Console()
    sections = []
    command = shlex.join(["mythic", "lab", *map(str, sys.argv[2:])]) if len(sys.argv) > 2 else "mythic lab"
    for path, experiment in zip(experiments, loaded, strict=True):
        outcome = run_with_progress(console, experiment, jobs, records)
        summary = results.aggregate(experiment, outcome, results.experiment_baselines(experiment))
        claims = results.compare(summary)
        preamble = (
            f"Measured {datetime.date.today().isoformat()} on {platform.machine()} with {os.cpu_count()} CPU threads "
            f"(commit {_commit()}), {len(experiment.seeds)} seeds, {experiment.tasks.test_size} test examples; "
            f"`{command}` ({outcome.seconds:.0f} s for this call; recorded runs are reused). "
            f"Experiment file: `{path}`."
        )
        sections.append((experiment, summary, claims, preamble))
        md = results.write_report(experiment, summary, claims, experiment.run_dir / "report", preamble)
        n = len(experiment.seeds)
        title = f"{experiment.name}: test accuracy (%, mean ± SE over {n} seed{'s' if n > 1 else ''})"
        console.print(_table(title, *results.accuracy_table(summary)))
        title = f"{experiment.name}: claims on test (points, mean ± SE over seeds; best rows on valid)"
        console.print(_table(title, *results.claims_table(claims)))
        console.print(f"report: {md}")
    if report is not None:
        results.write_combined_report(sections, report)
        console.print(f"wrote {report}")
