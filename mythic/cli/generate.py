"""``mythic generate``: completions of one prompt at several loop counts, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Column, Table

from mythic.cli.options import (
    COMPILE_HELP,
    EXIT_HELP,
    KV_SHARE_HELP,
    LOOPS_AUTO_HELP,
    apply_compile,
    apply_kv_share,
    parse_kv_share,
    parse_loops,
)
from mythic.recurrence.exit import DEFAULT_EXIT


def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt (a user message when --chat).")],
    ckpt: Annotated[Path, typer.Option(help="A mythic checkpoint or exported folder.")],
    loops: Annotated[str, typer.Option(help=f"Comma-separated loop counts, e.g. 1,2,4; {LOOPS_AUTO_HELP}")] = "1,2,4",
    exit_rule: Annotated[str, typer.Option("--exit", help=EXIT_HELP)] = DEFAULT_EXIT,
    kv_share: Annotated[str, typer.Option(help=KV_SHARE_HELP)] = "none",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per completion.")] = 64,
    chat: Annotated[bool, typer.Option(help="Wrap the prompt in the tokenizer's chat template.")] = True,
    base: Annotated[bool, typer.Option(help="Also show the base model (recurrence off).")] = True,
    compile_model: Annotated[bool, typer.Option("--compile", help=COMPILE_HELP)] = False,
) -> None:
    """Greedy completions of PROMPT at each loop count, printed next to each other."""
    from mythic.eval.generate import complete_at_loops
    from mythic.loading import load_any, load_tokenizer

    counts = parse_loops(loops, exit_rule)
    sharing = parse_kv_share(kv_share)
    console = Console()
    with console.status(f"loading {ckpt} …"):
        model = load_any(ckpt)
        tokenizer = load_tokenizer(ckpt)
    apply_kv_share(model, sharing)
    apply_compile(model, compile_model)
    rows = complete_at_loops(model, tokenizer, prompt, counts, max_new_tokens, chat=chat, with_base=base)
    columns = Column("loops", justify="right"), Column("mean loops", justify="right"), "completion"
    table = Table(*columns, title=prompt, show_lines=True)
    for label, used, text in rows:
        table.add_row(label, "-" if used is None else f"{used:.2f}", text)
    console.print(table)
