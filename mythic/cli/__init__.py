"""The ``mythic`` command line: one thin Typer module per subcommand over the library.

Every subcommand parses its options, calls the library and prints; a ``MythicError``
becomes a one-line message on stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from mythic.cli import eval as eval_cmd
from mythic.cli import export, fetch, generate, lab, sanity, surgery, tasks, train
from mythic.errors import MythicError

app = typer.Typer(
    name="mythic",
    help="Retrofit recurrent depth into pretrained LMs: fetch → sanity → surgery → train → eval → export; "
    "tasks writes depth-reasoning task files.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.add_typer(fetch.app, name="fetch")
app.add_typer(tasks.app, name="tasks")
app.command("sanity")(sanity.sanity)
app.command("surgery")(surgery.surgery)
app.command("generate")(generate.generate)
app.command("train")(train.train)
app.add_typer(eval_cmd.app, name="eval")
app.command("export")(export.export)
app.command("lab")(lab.lab)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except MythicError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
