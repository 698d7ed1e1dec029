"""The depth-reasoning experiment: task files, every arm × seed trained and evaluated, one report.

An experiment file (YAML, validated before any work starts) names the task files to generate,
the seeds, the loop counts to evaluate, the difficulty bands, and the arms: a training recipe
plus ``--set`` overrides (the looped model and its controls). For every (arm, seed)::

    RUN = OUT/<arm>/seed-<s>
    train  <arm.recipe> --set seed=<s> out_dir=RUN data.sources.0.path=DATA/train.jsonl <arm.set …>
    eval   RUN/final on DATA/test.jsonl at the arm's loop counts    → RUN/eval.json
           (an ``auto:MAX`` entry is an adaptive row with the experiment's ``exit`` rule)
    state  ‖h_{t+1} − h_t‖ / ‖h_t‖ and ‖h_t‖/√dim per loop and difficulty (looped arms) → inside RUN/eval.json

A run that finished is skipped, an interrupted one resumes from its checkpoints; runs go to
``jobs`` worker processes, each with its share of the CPU threads. The test split is only ever
evaluated, never used for a choice: a recipe that wants learning curves reads the valid split.

What the records become is ``results.py``'s job.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError, model_validator

from mythic.errors import MythicError
from mythic.io import write_json
from mythic.recurrence.exit import DEFAULT_EXIT, AdaptiveDepth, parse_depth, parse_exit
from mythic.tasks.make import generator, make, parse_difficulty_range
from mythic.train.recipe import Recipe, Strict, format_validation_error, load_recipe

PositiveInt = Annotated[int, Field(ge=1)]


class TaskFiles(Strict):
    """``mythic tasks make`` settings for the experiment's train / valid / test files."""

    generator: str
    seed: int = 0
    train_difficulty: str = "1-4"
    test_difficulty: str = "1-8"
    train_size: PositiveInt = 20000
    valid_size: int = Field(600, ge=0)
    test_size: PositiveInt = 1200
    options: dict[str, Any] = Field(default_factory=dict)


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
    arms: list[Arm] = Field(min_length=1)
    eval_batch_size: PositiveInt = 64

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arms: every arm needs its own name")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: a seed is listed twice")
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

    def arm_loops(self, arm: Arm | None) -> list[int | AdaptiveDepth]:
        """The rows an arm is evaluated at: loop counts, and ``auto:MAX`` entries with the experiment's ``exit``."""
        entries = (arm.loops if arm is not None else None) or self.loops
        return [n if isinstance(n, int) else parse_depth(n, self.exit) for n in entries]


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file, its bands, generator and every arm's recipe (one-line errors)."""
    path = Path(path)
    if not path.is_file():
        raise MythicError(f"experiment {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise MythicError(f"experiment {path}: not valid YAML") from None
    if not isinstance(data, dict):
        raise MythicError(f"experiment {path}: expected a YAML mapping at the top level")
    try:
        experiment = Experiment.model_validate(data)
    except ValidationError as err:
        raise MythicError(format_validation_error(err, data).replace("recipe ", "experiment ", 1)) from None
    # a recipe path is relative to the experiment file, so the experiment runs from any folder
    arms = [arm.model_copy(update={"recipe": str(path.parent / arm.recipe)}) for arm in experiment.arms]
    experiment = experiment.model_copy(update={"arms": arms})
    generator(experiment.tasks.generator)
    parse_difficulty_range(experiment.tasks.train_difficulty, "tasks.train_difficulty")
    for name, band in experiment.bands.items():
        parse_difficulty_range(band, f"bands.{name}")
    for arm in experiment.arms:
        arm_recipe(experiment, arm, experiment.seeds[0])
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


def run_dir(experiment: Experiment, arm: Arm, seed: int) -> Path:
    return experiment.run_dir / arm.name / f"seed-{seed}"


def arm_recipe(experiment: Experiment, arm: Arm, seed: int) -> Recipe:
    """The arm's recipe for one seed: its own overrides, then the run's seed, folder and task files."""
    data = experiment.data_dir
    overrides = [
        *arm.set,
        f"seed={seed}",
        f"out_dir={run_dir(experiment, arm, seed)}",
        f"data.sources.0.path={data / 'train.jsonl'}",
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
    gen = generator(spec.generator)
    try:
        options = gen.options(**spec.options)
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


def run_job(experiment: Experiment, arm_name: str, seed: int, threads: int) -> dict[str, Any]:
    """Train (or resume) one arm × seed, then evaluate it on the test split; returns its eval record."""
    import torch

    from mythic.eval.tasks import evaluate_tasks, loop_dynamics
    from mythic.loading import load_any, load_tokenizer
    from mythic.tasks.files import read_tasks
    from mythic.train.trainer import train

    torch.set_num_threads(threads)
    arm = next(a for a in experiment.arms if a.name == arm_name)
    recipe = arm_recipe(experiment, arm, seed)
    folder = run_dir(experiment, arm, seed)
    record_path = folder / "eval.json"
    if record_path.is_file():
        return yaml.safe_load(record_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lab.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        if not (folder / "final").is_dir():
            train(recipe, resume=True)
        model = load_any(folder / "final").eval()
        tokenizer = load_tokenizer(folder / "final")
        tests = read_tasks(experiment.data_dir / "test.jsonl")
        loops = experiment.arm_loops(arm)
        results = evaluate_tasks(model, tokenizer, tests, loops=loops, batch_size=experiment.eval_batch_size)
        for row in results["rows"]:
            row.pop("predictions")
        record = {"arm": arm.name, "seed": seed, "trained_loops": recipe.curriculum.max_loops, "results": results}
        if experiment.convergence_loops and max(n if isinstance(n, int) else 2 for n in loops) > 1:
            record["dynamics"] = loop_dynamics(
                model, tokenizer, tests, experiment.convergence_loops, batch_size=experiment.eval_batch_size
            )
    write_json(record_path, record)
    return record


def run_experiment(
    experiment: Experiment, jobs: int = 1, on_done: Callable[[str, int], None] | None = None
) -> list[dict[str, Any]]:
    """Every arm × seed (parallel over ``jobs`` processes); returns their eval records."""
    write_task_files(experiment)
    work = [(arm.name, seed) for seed in experiment.seeds for arm in experiment.arms]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    records = []
    if jobs == 1:
        for arm_name, seed in work:
            records.append(run_job(experiment, arm_name, seed, threads))
            if on_done is not None:
                on_done(arm_name, seed)
        return records
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(run_job, experiment, a, s, threads): (a, s) for a, s in work}
        for future in as_completed(futures):
            records.append(future.result())
            if on_done is not None:
                on_done(*futures[future])
    return records
