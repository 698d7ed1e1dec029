"""Filesystem helpers shared by every command that writes results.

``atomic_dir`` gives a temporary sibling folder to write into and renames it onto the
target only when the block finishes without an exception, so an interrupted or failed
command never leaves a half-written output folder behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mythic.errors import MythicError


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Yield a temp folder next to ``target``; on success it replaces ``target`` atomically."""
    target = Path(target)
    if target.exists() and not force:
        raise MythicError(f"output folder {target} already exists (pass --force to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def check_free_space(needed: int, folder: str | os.PathLike[str], what: str) -> None:
    """Refuse (one line) when ``what`` needs more bytes than are free where ``folder`` (or its nearest existing
    parent) will be written."""
    probe = Path(folder)
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise MythicError(
            f"not enough disk space for {folder}: the {what} needs {needed} bytes ({needed / 1e9:.2f} GB), "
            f"only {free} bytes ({free / 1e9:.2f} GB) are free"
        )


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON through a temp file and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file (blank lines skipped); a bad line is a one-line error naming it."""
    path = Path(path)
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise MythicError(f"{path.name} line {i + 1}: not JSON") from None
        if not isinstance(row, dict):
            raise MythicError(f"{path.name} line {i + 1}: not a JSON object")
        rows.append(row)
    return rows


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence the progress bars of transformers and of huggingface_hub (which transformers' switch also turns
    off); the library reports through its own callbacks. The GGUF de-quantisation bar uses plain tqdm and still shows.
    """
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
