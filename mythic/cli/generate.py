"""``mythic generate``: completions of one prompt at several loop counts, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mythic.cli.options import parse_loops


def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt (a user message when --chat).")],
    ckpt: Annotated[Path, typer.Option(help="A mythic checkpoint or exported folder.")],
    loops: Annotated[str, typer.Option(help="Comma-separated loop counts, e.g. 1,2,4.")] = "1,2,4",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per completion.")] = 64,
    chat: Annotated[bool, typer.Option(help="Wrap the prompt in the tokenizer's chat template.")] = True,
    base: Annotated[bool, typer.Option(help="Also show the base model (recurrence off).")] = True,
) -> None:
    """Greedy completions of PROMPT at each loop count, printed next to each other."""
    from mythic.generation import complete_at_loops
    from mythic.surgery import load_any, load_tokenizer

    counts = parse_loops(loops)
    console = Console()
    with console.status(f"loading {ckpt} …"):
        model = load_any(ckpt)
        tokenizer = load_tokenizer(ckpt)
    rows = complete_at_loops(model, tokenizer, prompt, counts, max_new_tokens, chat=chat, with_base=base)
    table = Table(title=prompt, show_lines=True)
    table.add_column("loops", justify="right")
    table.add_column("completion")
    for label, text in rows:
        table.add_row(label, text)
    console.print(table)
