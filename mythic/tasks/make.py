"""``make``: write a generator's train / valid / test task files, deterministic from a seed.

    DIR/train.jsonl   difficulties from the train range (e.g. 1–4), ``train_size`` examples
    DIR/valid.jsonl   difficulties from the test range, for design choices and learning curves
    DIR/test.jsonl    difficulties from the test range (e.g. 1–12), held out: never used for choices
    DIR/meta.json     generator, options, seed, ranges and sizes

Each split cycles through its difficulty range (equal counts per difficulty) and draws with
``numpy.random.default_rng([seed, split])``. Prompts are unique across the files: test is drawn first,
then valid without test's prompts, then train without either. Written through ``atomic_dir``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mythic.errors import MythicError
from mythic.io import atomic_dir, write_json
from mythic.tasks import hops, induction, pointer
from mythic.tasks.baselines import Baselines
from mythic.tasks.files import Task, write_tasks

SPLITS = ("test", "valid", "train")
SPLIT_SALT = {"test": 0x7E57, "valid": 0x7A11D, "train": 0x7EA1}
MAX_REJECTS = 100


@dataclass(frozen=True)
class Generator:
    """A task generator: its options type, one-example sampler, brute-force solver and shallow baselines."""

    options: type
    example: Callable[[np.random.Generator, int, Any], Task]
    solve: Callable[[str], tuple[str, int]]
    baselines: Baselines


GENERATORS = {
    "hops": Generator(hops.HopsOptions, hops.example, hops.solve, hops.baselines),
    "induction": Generator(induction.InductionOptions, induction.example, induction.solve, induction.baselines),
    "pointer": Generator(pointer.PointerOptions, pointer.example, pointer.solve, pointer.baselines),
}


def generator(name: str) -> Generator:
    if name not in GENERATORS:
        raise MythicError(f"unknown task generator {name!r}: choose one of {', '.join(GENERATORS)}")
    return GENERATORS[name]


def parse_difficulty_range(text: str, option: str) -> tuple[int, int]:
    """'1-4' → (1, 4), '3' → (3, 3); both ends ≥ 1 and in order."""
    low, sep, high = text.partition("-")
    try:
        lo, hi = int(low), int(high) if sep else int(low)
    except ValueError:
        raise MythicError(f"{option} takes LOW-HIGH (e.g. 1-4), got {text!r}") from None
    if lo < 1 or hi < lo:
        raise MythicError(f"{option} takes LOW-HIGH with 1 <= LOW <= HIGH, got {text!r}")
    return lo, hi


def draw_split(
    gen: Generator, options: Any, difficulties: range, size: int, rng: np.random.Generator, taken: set[str]
) -> list[Task]:
    """``size`` examples cycling through ``difficulties``, none of whose prompts is in ``taken`` (updated)."""
    tasks = []
    for i in range(size):
        difficulty = difficulties[i % len(difficulties)]
        for _ in range(MAX_REJECTS):
            task = gen.example(rng, difficulty, options)
            if task.prompt not in taken:
                break
        else:
            raise MythicError(f"could not draw {size} distinct prompts at difficulty {difficulty}: lower the sizes")
        taken.add(task.prompt)
        tasks.append(task)
    return tasks


def make(
    name: str,
    out: Path,
    *,
    seed: int,
    train_difficulty: tuple[int, int],
    test_difficulty: tuple[int, int],
    sizes: dict[str, int],
    options: Any = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write the three splits of generator ``name`` into ``out``; returns the meta record."""
    gen = generator(name)
    options = options if options is not None else gen.options()
    options.check(max(train_difficulty[1], test_difficulty[1]))
    for split in SPLITS:
        if sizes[split] < 0 or (split != "valid" and sizes[split] < 1):
            raise MythicError(f"--{split}-size must be at least {0 if split == 'valid' else 1}, got {sizes[split]}")
    ranges = {"train": train_difficulty, "valid": test_difficulty, "test": test_difficulty}
    taken: set[str] = set()
    with atomic_dir(out, force=force) as tmp:
        for split in SPLITS:
            lo, hi = ranges[split]
            rng = np.random.default_rng([seed, SPLIT_SALT[split]])
            tasks = draw_split(gen, options, range(lo, hi + 1), sizes[split], rng, taken)
            write_tasks(tmp / f"{split}.jsonl", tasks)
        meta = {
            "generator": name,
            "options": asdict(options),
            "seed": seed,
            "difficulty": {split: list(ranges[split]) for split in SPLITS},
            "sizes": {split: sizes[split] for split in SPLITS},
        }
        write_json(tmp / "meta.json", meta)
    return meta
