"""One sandbox-running test at a time, across xdist workers and pytest sessions on this machine.

Sandbox processes are told apart by uid only (one uid per slot), so a check for processes left
behind must not see another test's live sandbox. ``exclusive()`` holds an exclusive ``flock``
on a file in the temp folder; ``pytestmark = pytest.mark.usefixtures("sandbox_exclusive")`` puts
every test of a module under it. (xdist_group does not group tests under pytest 9 with
pytest-xdist 3.8: the worker's group suffix on the node id no longer reaches the scheduler.)
"""

from __future__ import annotations

import contextlib
import fcntl
import tempfile
from collections.abc import Iterator
from pathlib import Path

LOCK = Path(tempfile.gettempdir()) / "mythic-tests-sandbox.lock"


@contextlib.contextmanager
def exclusive() -> Iterator[None]:
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
