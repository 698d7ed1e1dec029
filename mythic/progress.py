"""The one progress callback of the library's long jobs (fetch, embedded build, sanity, export).

``progress(done, total, what)``: ``done`` of ``total`` units (bytes for a download, steps or
stages otherwise) are finished and ``what`` is under way. The CLI turns it into a rich bar or
status line; the library never prints.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int, str], None]
