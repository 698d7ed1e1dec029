"""The depth-reasoning experiment: every arm tuned on valid, then every arm × seed trained and evaluated.

An experiment file (YAML, validated before any work starts; its fields: README, "The depth-reasoning
lab") names task files, seeds, loop counts, difficulty bands, an optional tuning grid and the arms
(a recipe plus ``--set`` overrides each). A run is one (arm, grid point, seed)::

    RUN = OUT/<arm>[/<point>]/seed-<s>
    train  <arm.recipe> --set seed=<s> out_dir=RUN data.sources.0.path=DATA/train.jsonl <arm.set …> <point …>
    eval   RUN/final on DATA/valid.jsonl (and, for the chosen point, DATA/test.jsonl) at the arm's loop counts
           (an ``auto:MAX`` entry is an adaptive row with the experiment's ``exit`` rule)
    state  ‖h_{t+1} − h_t‖ / ‖h_t‖ and ‖h_t‖/√dim per loop and difficulty (test, looped arms)

Tuning (``tune.grid``): every arm trains every grid point at the first seed, scored on valid (its best
fixed row's accuracy over ``tune.band``, or over every valid example); the best point is the arm's
setting for every seed, its first-seed run reused. Test is evaluated once per final run, never for a choice.

Records: each run's evaluation is a small JSON (``valid.json``, ``test.json``, no weights; ``curve``: the
training loss curve, ``learning_curve``) in its run folder, or under ``records`` (same relative path).
A record keeps its run's resolved recipe and the task files' settings, and is reused (the run not trained again)
only where they are this run's (``check_record``); an interrupted training resumes from its last checkpoint,
and a finished one is evaluated only if its folder's recipe.yaml is the run's recipe.

Runs go to ``jobs`` worker processes with cores/jobs torch threads each (``cpu_threads``);
``on_steps(phase, done, total)`` hears the call's training steps as they advance. What the records
become is ``results.py``'s job.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, model_validator

from mythic.errors import MythicError
from mythic.io import read_jsonl, write_json
from mythic.recurrence.exit import DEFAULT_EXIT, AdaptiveDepth, parse_depth, parse_exit
from mythic.tasks.make import generator, make, parse_difficulty_range
from mythic.train.recipe import PositiveInt, Recipe, Strict, differing_setting, load_recipe, read_yaml, validate

SPLITS = ("valid", "test")
POLL_SECONDS = 2.0
OnSteps = Callable[[str, int, int], None]
"""Hears training progress as ``on_steps(phase, done, total)``: the call's training steps done of ``total``."""


class TaskFiles(Strict):
    """``mythic tasks make`` settings for the experiment's train / valid / test files."""

    generator: str
    seed: int = 0
    train_difficulty: str = "1-4"
    test_difficulty: str = "1-8"
    train_size: PositiveInt = 20000
    valid_size: PositiveInt = 600
    test_size: PositiveInt = 1200
    options: dict[str, Any] = Field(default_factory=dict)


class Tune(Strict):
    """A grid of ``--set`` overrides (key → values) every arm is trained on at the first seed; the point with
    the best valid accuracy (its best fixed row, over ``band`` or every valid example) is kept."""

    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(min_length=1)
    band: str | None = None


class Arm(Strict):
    """One model of the comparison: a recipe (its path relative to the experiment file), its ``--set``
    overrides, and the loop counts it is evaluated at (default: the experiment's)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    recipe: str
    set: list[str] = Field(default_factory=list)
    loops: list[PositiveInt | str] | None = None
    description: str = ""


class Experiment(Strict):
    name: str = Field(min_length=1)
    out_dir: str | None = None
    tasks: TaskFiles
    seeds: list[int] = Field(min_length=1)
    loops: list[PositiveInt | str] = Field(min_length=1)
    exit: str = DEFAULT_EXIT
    bands: dict[str, str] = Field(min_length=1)
    convergence_loops: PositiveInt | None = None
    tune: Tune | None = None
    arms: list[Arm] = Field(min_length=1)
    eval_batch_size: PositiveInt = 64

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arms: every arm needs its own name")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: a seed is listed twice")
        if self.tune is not None and self.tune.band is not None and self.tune.band not in self.bands:
            raise ValueError(f"tune.band: {self.tune.band!r} is not one of the bands ({', '.join(self.bands)})")
        try:
            parse_exit(self.exit)
            for arm in [None, *self.arms]:
                self.arm_loops(arm)
        except MythicError as err:
            raise ValueError(f"loops: {err}") from None
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / "lab" / self.name

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    def arm_loops(self, arm: Arm | None) -> list[int | AdaptiveDepth | str]:
        """The rows an arm is evaluated at: loop counts, ``auto:MAX`` entries with the experiment's ``exit``, and
        ``d`` (each example at its difficulty)."""
        entries = (arm.loops if arm is not None else None) or self.loops
        return [n if isinstance(n, int) else parse_depth(n, self.exit) for n in entries]

    def band_ranges(self) -> dict[str, tuple[int, int]]:
        """The difficulty bands as (lo, hi)."""
        return {name: parse_difficulty_range(text, f"bands.{name}") for name, text in self.bands.items()}

    def points(self) -> list[dict[str, Any]]:
        """The tuning grid's points ({key: value}, keys in the file's order); one empty point without a grid."""
        grid = self.tune.grid if self.tune is not None else {}
        return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def point_label(point: dict[str, Any]) -> str:
    """A grid point as a folder name: ``{"optim.lr": 0.003, "model.config.init_std": 0.125}`` →
    ``lr=0.003,init_std=0.125`` (the last part of each key); "" for the empty point."""
    parts = [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in point.items()]
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", ",".join(parts))


def band_accuracy(row: dict[str, Any], band: tuple[int, int]) -> float | None:
    """A row's accuracy over the examples whose difficulty lies in ``band`` (None if there are none)."""
    inside = [entry["accuracy"] for d, entry in row["per_difficulty"].items() if band[0] <= int(d) <= band[1]]
    total = sum(m["n"] for m in inside)
    return sum(m["value"] * m["n"] for m in inside) / total if total else None


@dataclass(frozen=True)
class Run:
    """One (arm, grid point, seed) and the splits it is evaluated on."""

    arm: str
    point: dict[str, Any] = field(hash=False)
    seed: int
    splits: tuple[str, ...]

    @property
    def path(self) -> Path:
        """The run's place below the experiment folder (and below ``records``)."""
        return Path(self.arm, point_label(self.point), f"seed-{self.seed}")  # no point: no folder for it


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file, its bands, generator and every arm's recipe (one-line errors)."""
    path = Path(path)
    experiment = validate(Experiment, read_yaml(path, "experiment"), "experiment")
    # a recipe path is relative to the experiment file, so the experiment runs from any folder
    arms = [arm.model_copy(update={"recipe": str(path.parent / arm.recipe)}) for arm in experiment.arms]
    experiment = experiment.model_copy(update={"arms": arms})
    generator(experiment.tasks.generator)
    parse_difficulty_range(experiment.tasks.train_difficulty, "tasks.train_difficulty")
    experiment.band_ranges()
    for arm in experiment.arms:
        for point in experiment.points():
            arm_recipe(experiment, Run(arm.name, point, experiment.seeds[0], ()))
    return experiment


def select(experiment: Experiment, arms: list[str] | None = None, seeds: list[int] | None = None) -> Experiment:
    """The experiment restricted to some arms (kept in the file's order, so the first stays the main arm)
    and to the given seeds; the runs keep their folders, so a later full call reuses them."""
    if arms is not None:
        known = [arm.name for arm in experiment.arms]
        unknown = [name for name in arms if name not in known]
        if unknown:
            raise MythicError(f"--arms: {experiment.name} has no arm {unknown[0]!r} (it has {', '.join(known)})")
        experiment = experiment.model_copy(update={"arms": [a for a in experiment.arms if a.name in arms]})
    if seeds is not None:
        experiment = experiment.model_copy(update={"seeds": list(dict.fromkeys(seeds))})
    return experiment


def arm_of(experiment: Experiment, name: str) -> Arm:
    return next(a for a in experiment.arms if a.name == name)


def arm_recipe(experiment: Experiment, run: Run) -> Recipe:
    """A run's recipe: the arm's overrides, its grid point's, then the run's seed, folder and task file."""
    arm = arm_of(experiment, run.arm)
    overrides = [
        *arm.set,
        *(f"{key}={json.dumps(value)}" for key, value in run.point.items()),
        f"seed={run.seed}",
        f"out_dir={experiment.run_dir / run.path}",
        f"data.sources.0.path={experiment.data_dir / 'train.jsonl'}",
    ]
    try:
        recipe = load_recipe(arm.recipe, overrides)
    except MythicError as err:
        raise MythicError(f"arm {arm.name}: {err}") from None
    if len(recipe.data.sources) != 1 or recipe.data.sources[0].kind != "tasks":
        raise MythicError(f"arm {arm.name}: the recipe must train on one task file (data.sources: [kind: tasks])")
    return recipe


def write_task_files(experiment: Experiment) -> None:
    """Generate the experiment's task files once (kept across reruns)."""
    if (experiment.data_dir / "meta.json").is_file():
        return
    spec = experiment.tasks
    try:
        options = generator(spec.generator).options(**spec.options)
    except TypeError as err:
        raise MythicError(f"experiment tasks.options: {err}") from None
    make(
        spec.generator,
        experiment.data_dir,
        seed=spec.seed,
        train_difficulty=parse_difficulty_range(spec.train_difficulty, "tasks.train_difficulty"),
        test_difficulty=parse_difficulty_range(spec.test_difficulty, "tasks.test_difficulty"),
        sizes={"train": spec.train_size, "valid": spec.valid_size, "test": spec.test_size},
        options=options,
    )


def cpu_threads(jobs: int) -> int:
    """Torch threads per job: the cores this process may use, shared evenly; more jobs than cores is refused."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if jobs > cores:
        raise MythicError(f"--jobs {jobs} is more than the {cores} cores here: runs would share cores and crawl")
    return cores // jobs


def record_path(experiment: Experiment, run: Run, split: str, records: Path | None) -> Path:
    return (records if records is not None else experiment.run_dir) / run.path / f"{split}.json"


def logged_steps(folder: Path) -> list[dict[str, Any]]:
    """The training steps a run folder logged (its metrics.jsonl), none before the first."""
    metrics = folder / "metrics.jsonl"
    return read_jsonl(metrics) if metrics.is_file() else []


CURVE_POINTS = 40


def learning_curve(folder: Path) -> list[list[float]]:
    """The run's training cross-entropy against step ([[step, ce], …]; the whole loss where no plain CE is
    logged), each point the mean of an equal share of its logged steps (at most ``CURVE_POINTS`` points):
    small enough to keep in every record."""
    logged = logged_steps(folder)
    size = max(1, -(-len(logged) // CURVE_POINTS))
    chunks = [logged[i : i + size] for i in range(0, len(logged), size)]
    return [[c[-1]["step"], sum(r.get("ce", r["loss"]) for r in c) / len(c)] for c in chunks]


RECORD_IGNORES = ("name", "out_dir", "data.sources.*.path", "log.*", "checkpoint.*")
"""Settings a record is reused across: the recipe's name (kept as ``-vN`` copies are renamed), where the run
and its task file live, how it logs and checkpoints."""


def check_record(path: Path, record: dict[str, Any], recipe: Recipe, tasks: TaskFiles) -> None:
    """A record is reused only for the run that made it: the same recipe but for ``RECORD_IGNORES``, and the
    same task files; otherwise one line (a changed experiment needs a new name, or its records deleted). A
    record written before records kept their recipe is taken as it is."""
    if "recipe" not in record:
        return
    advice = "give the experiment a new name to keep the record, or delete it to rerun"
    try:
        made = validate(Recipe, record["recipe"], "its recipe")
        made_tasks = validate(TaskFiles, record["tasks"], "its task files")
    except MythicError as err:
        raise MythicError(f"record {path}: {err}; {advice}") from None
    key = differing_setting(made, recipe, RECORD_IGNORES)
    differs = f"its recipe's {key} differs" if key else "its task files differ" if made_tasks != tasks else None
    if differs is not None:
        raise MythicError(f"record {path}: {differs} from this run's; {advice}")


def run_job(experiment: Experiment, run: Run, threads: int, records: Path | None) -> dict[str, dict[str, Any]]:
    """Train (or resume) one run, then evaluate it on each of its splits not yet recorded; {split: record}."""
    import torch

    from mythic.eval.exact_match import evaluate_tasks, loop_dynamics
    from mythic.loading import load_any, load_tokenizer
    from mythic.tasks.files import read_tasks
    from mythic.train.trainer import check_same_recipe, train

    torch.set_num_threads(threads)
    recipe = arm_recipe(experiment, run)
    paths = {split: record_path(experiment, run, split, records) for split in run.splits}
    done = {split: json.loads(path.read_text()) for split, path in paths.items() if path.is_file()}
    for split, record in done.items():
        check_record(paths[split], record, recipe, experiment.tasks)
    if len(done) == len(paths):
        return done
    loops = experiment.arm_loops(arm_of(experiment, run.arm))
    dynamics = experiment.convergence_loops is not None and max(n if isinstance(n, int) else 2 for n in loops) > 1
    folder = experiment.run_dir / run.path
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lab.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        if (folder / "final").is_dir():  # a finished run is evaluated only under the recipe it was trained with
            check_same_recipe(folder / "recipe.yaml", recipe, f"lab run {run.path}")
        else:
            train(recipe, resume=True)
        model = load_any(folder / "final").eval()
        tokenizer = load_tokenizer(folder / "final")
        curve = learning_curve(folder)
        for split in [split for split in paths if split not in done]:
            tasks = read_tasks(experiment.data_dir / f"{split}.jsonl")
            results = evaluate_tasks(model, tokenizer, tasks, loops=loops, batch_size=experiment.eval_batch_size)
            for row in results["rows"]:
                row.pop("predictions")
            record = {
                "arm": run.arm,
                "seed": run.seed,
                "point": run.point,
                "split": split,
                "trained_loops": recipe.curriculum.max_loops,
                "train_steps": recipe.train.steps,
                "recipe": recipe.model_dump(mode="json"),
                "tasks": experiment.tasks.model_dump(mode="json"),
                "curve": curve,
                "results": results,
            }
            if split == "test" and dynamics:  # some row loops more than once
                record["dynamics"] = loop_dynamics(
                    model, tokenizer, tasks, experiment.convergence_loops, batch_size=experiment.eval_batch_size
                )
            paths[split].parent.mkdir(parents=True, exist_ok=True)
            write_json(paths[split], record)
            done[split] = record
    return done


def execute(
    experiment: Experiment, runs: list[Run], jobs: int, records: Path | None, on_steps: OnSteps | None, phase: str
) -> dict[Run, dict[str, dict[str, Any]]]:
    """Every run on ``jobs`` worker processes; ``on_steps(phase, done, total)`` every few seconds while they train."""
    threads = cpu_threads(jobs)
    total = sum(arm_recipe(experiment, run).train.steps for run in runs)
    results: dict[Run, dict[str, dict[str, Any]]] = {}
    context = multiprocessing.get_context("spawn")
    watch = {"initializer": exit_with_parent, "initargs": (os.getpid(),)}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, **watch) as pool:
        pending: dict[Future[Any], Run] = {pool.submit(run_job, experiment, run, threads, records): run for run in runs}
        while pending:
            finished, _ = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
            for future in finished:
                results[pending.pop(future)] = future.result()
            if on_steps is not None:
                on_steps(phase, sum(progress(experiment, run, results, records) for run in runs), total)
    return results


def exit_with_parent(parent: int) -> None:
    """A worker's initializer: end the worker as soon as ``parent`` (the lab process) is gone, so a lab that is
    killed leaves no worker training on (a killed pool does not stop its workers; its run resumes later)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def progress(experiment: Experiment, run: Run, results: dict[Run, Any], records: Path | None) -> int:
    """Training steps a run has behind it: all of them once it is evaluated or recorded, else its log's."""
    steps = arm_recipe(experiment, run).train.steps
    if run in results or all(record_path(experiment, run, s, records).is_file() for s in run.splits):
        return steps
    logged = logged_steps(experiment.run_dir / run.path)
    return min(int(logged[-1]["step"]) if logged else 0, steps)


def time_left(elapsed: float, trained: int, remaining: int) -> float | None:
    """Seconds the ``remaining`` training steps take at this call's rate so far (``trained`` steps in
    ``elapsed`` seconds; None before the first step): what the lab shows once the first steps are done."""
    return elapsed / trained * remaining if trained > 0 else None


def tuning_score(experiment: Experiment, record: dict[str, Any]) -> float:
    """A valid record's score: its best fixed row's accuracy over ``tune.band`` (or every example)."""
    band = experiment.tune.band if experiment.tune is not None else None
    fixed = [row for row in record["results"]["rows"] if isinstance(row["n_loops"], int)]
    if band is None:
        return max(row["metrics"]["accuracy"]["value"] for row in fixed)
    scores = [band_accuracy(row, experiment.band_ranges()[band]) for row in fixed]
    if None in scores:
        raise MythicError(f"tune.band {band!r}: the valid split has no example of that difficulty")
    return max(scores)


@dataclass
class Outcome:
    """What an experiment produced: the final runs' records per split, and the tuning table
    (arm → [(point, valid score)], the chosen point first)."""

    records: dict[str, list[dict[str, Any]]]
    tuning: dict[str, list[tuple[dict[str, Any], float]]]
    seconds: float


def run_experiment(
    experiment: Experiment, jobs: int = 1, records: Path | None = None, on_steps: OnSteps | None = None
) -> Outcome:
    """Tune every arm on valid (with a grid), then every arm × seed at its chosen point; see the module docstring.
    ``on_steps(phase, done, total)`` reports training progress per phase ("tuning", "runs")."""
    started = time.perf_counter()
    write_task_files(experiment)
    first = experiment.seeds[0]
    chosen = {arm.name: {} for arm in experiment.arms}
    tuning: dict[str, list[tuple[dict[str, Any], float]]] = {}
    if experiment.tune is not None:
        grid = [Run(arm.name, point, first, ("valid",)) for arm in experiment.arms for point in experiment.points()]
        done = execute(experiment, grid, jobs, records, on_steps, "tuning")
        for arm in experiment.arms:
            scored = [(run.point, tuning_score(experiment, done[run]["valid"])) for run in grid if run.arm == arm.name]
            tuning[arm.name] = sorted(scored, key=lambda item: -item[1])  # stable: the grid's first point wins a tie
            chosen[arm.name] = tuning[arm.name][0][0]
    # arm by arm: the main arm, as a rule the costliest, starts first, so the last worker to finish waits less
    final = [Run(arm.name, chosen[arm.name], seed, SPLITS) for arm in experiment.arms for seed in experiment.seeds]
    done = execute(experiment, final, jobs, records, on_steps, "runs")
    by_split = {split: [done[run][split] for run in final] for split in SPLITS}
    return Outcome(by_split, tuning, time.perf_counter() - started)
