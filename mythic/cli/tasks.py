"""``mythic tasks make NAME --out DIR --seed S [options]``: write a generator's task files."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mythic.errors import MythicError

app = typer.Typer(help="Depth-reasoning task files: generate them (train/valid/test JSON lines).", no_args_is_help=True)


@app.command("make")
def make(
    context: typer.Context,
    name: Annotated[
        str,
        typer.Argument(
            help="Generator: hops (variable chains in program order), induction (p-hop induction) or pointer "
            "(k steps on a functional graph listed in shuffled order, final answer only)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Folder to write train.jsonl, valid.jsonl, test.jsonl and meta.json into.")],
    seed: Annotated[int, typer.Option(help="Seed: the same seed and options write the same files.")] = 0,
    train_difficulty: Annotated[str, typer.Option(help="Difficulties of the train split, LOW-HIGH.")] = "1-4",
    test_difficulty: Annotated[str, typer.Option(help="Difficulties of the valid and test splits, LOW-HIGH.")] = "1-8",
    train_size: Annotated[int, typer.Option(help="Train examples (cycling through the train difficulties).")] = 20000,
    valid_size: Annotated[int, typer.Option(help="Valid examples, for design choices and learning curves.")] = 1200,
    test_size: Annotated[int, typer.Option(help="Test examples, held out: never used for choices.")] = 1200,
    roots: Annotated[int, typer.Option(help="hops: chains per prompt, each from its own digit (chance 1/roots).")] = 3,
    chain: Annotated[int, typer.Option(help="hops: statements in the longest chain (>= the largest difficulty).")] = 8,
    intermediate: Annotated[
        int,
        typer.Option(
            help="hops: also supervise, at each right-side variable, its value when it takes at most this many "
            "lookups (dense steps for training; set it to the largest train difficulty; 0: off)."
        ),
    ] = 0,
    length: Annotated[int, typer.Option(help="induction: letters per sequence.")] = 48,
    symbols: Annotated[int, typer.Option(help="induction: alphabet size.")] = 4,
    nodes: Annotated[int, typer.Option(help="pointer: nodes of the graph (chance is 1/nodes).")] = 12,
    force: Annotated[bool, typer.Option(help="Replace the output folder.")] = False,
) -> None:
    """Write NAME's train / valid / test task files into --out (deterministic from --seed; no prompt in two splits)."""
    from mythic.tasks.make import GENERATORS, generator, make, parse_difficulty_range

    own = [f.name for f in fields(generator(name).options)]
    others = [f.name for gen in GENERATORS.values() for f in fields(gen.options) if f.name not in own]
    given = [n for n in others if context.get_parameter_source(n).name != "DEFAULT"]
    if given:
        raise MythicError(f"--{given[0]} does not apply to the {name} generator")
    options = generator(name).options(**{n: context.params[n] for n in own})
    meta = make(
        name,
        out,
        seed=seed,
        train_difficulty=parse_difficulty_range(train_difficulty, "--train-difficulty"),
        test_difficulty=parse_difficulty_range(test_difficulty, "--test-difficulty"),
        sizes={"train": train_size, "valid": valid_size, "test": test_size},
        options=options,
        force=force,
    )
    table = Table("split", "examples", "difficulty", title=f"{name} (seed {seed}) → {out}")
    for split in ("train", "valid", "test"):
        low, high = meta["difficulty"][split]
        table.add_row(f"{split}.jsonl", str(meta["sizes"][split]), f"{low}-{high}")
    Console().print(table)
