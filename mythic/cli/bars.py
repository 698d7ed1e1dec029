"""The rich progress bar of the subcommands that count steps: what runs, the bar, done/total, elapsed, extras.

(``mythic fetch`` counts bytes and shows a percentage instead of done/total: its own columns.)
"""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn


def progress_bar(*extra: str | ProgressColumn, **kwargs: Any) -> Progress:
    """A ``Progress`` with the shared columns, then ``extra`` ones (a string is a ``TextColumn`` format);
    ``kwargs`` go to ``Progress`` (console, transient, disable)."""
    columns = [TextColumn(c) if isinstance(c, str) else c for c in extra]
    shared = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*shared, *columns, **kwargs)
