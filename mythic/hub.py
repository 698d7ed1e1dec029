"""Download a base model from the Hugging Face Hub into a plain, verified local folder.

Contract of ``download_repo`` (``mythic.fetch.fetch_base`` picks the folder and records it):

1. ``name`` is an alias (``ALIASES``) or a hub repo id (``resolve_model``); the folder defaults to
   ``base/<alias or repo name>``. The alias ``smollm2-135m`` is built offline instead (``mythic.embedded``).
2. The repo's files, sizes and checksums come from ``model_info(files_metadata=True)`` at the
   requested revision, pinned to the commit sha it resolves to. The fetch is refused before any
   byte is written when ``Σ sizes − bytes already downloaded > free disk``.
3. Each file is fetched with huggingface_hub's HTTP client (``get_hf_file_metadata`` + ``http_get``)
   into ``<file>.incomplete`` inside a staging folder ``.<dir>.<commit>.partial`` that survives a
   crash: the client's own retries and the next run both resume it with an HTTP Range request.
   (``hf_hub_download(local_dir=…)`` would not do: it drops a failed run's partial file and checks no sha256.)
   A finished file must match the hub's sha256 (LFS) or git blob id before it is kept.
4. Safetensors shards are checked against ``model.safetensors.index.json``: every shard the index
   names exists, its header parses, and it holds exactly the tensors the index assigns to it.
5. ``mythic-manifest.json`` (repo id, revision, commit, every file's size and sha256) is written,
   the folder is moved into place atomically and recorded in ``base/LATEST`` as the default base.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get
from huggingface_hub.hf_api import RepoSibling
from huggingface_hub.utils import build_hf_headers, validate_repo_id
from huggingface_hub.utils.sha import git_hash
from safetensors import SafetensorError, safe_open

from mythic.errors import MythicError
from mythic.io import atomic_dir, check_free_space, sha256_file, write_json
from mythic.progress import Progress

DEFAULT_MODEL = "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct"
EMBEDDED_ALIAS = "smollm2-135m"
ALIASES = {
    "deepseek-coder-v2-lite": DEFAULT_MODEL,
    "gemma4-98e": "ManniX-ITA/gemma-4-A4B-98e-v3-it",
    EMBEDDED_ALIAS: "HuggingFaceTB/SmolLM2-135M-Instruct",
}
MANIFEST = "mythic-manifest.json"
INDEX = "model.safetensors.index.json"
LATEST = Path("base") / "LATEST"


def resolve_model(name: str) -> tuple[str, str]:
    """``(repo id, default folder name)`` for an alias or a hub repo id."""
    if name in ALIASES:
        return ALIASES[name], name
    try:
        validate_repo_id(name)
    except HFValidationError as err:
        raise MythicError(f"{name!r} is neither an alias ({', '.join(ALIASES)}) nor a hub repo id") from err
    return name, name.rsplit("/", 1)[-1]


def hub_endpoint() -> str:
    """The hub URL: ``$HF_ENDPOINT`` as set now, else huggingface_hub's default."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def download_repo(
    repo_id: str,
    folder: Path,
    *,
    revision: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Download every file of ``repo_id`` at ``revision`` into ``folder``, verified; returns the manifest."""
    endpoint = hub_endpoint()
    with _hub_errors(repo_id, revision, endpoint):
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, files_metadata=True)
    if info.sha is None or info.siblings is None:
        raise MythicError(f"the hub answered for {repo_id} without a commit or a file list")
    commit, files = info.sha, info.siblings
    staging = folder.parent / f".{folder.name}.{commit[:12]}.partial"
    total, done = sum(f.size or 0 for f in files), 0
    check_free_space(total - sum(_bytes_on_disk(staging, f.rfilename) for f in files), folder, "download")

    def on_bytes(n: int, what: str) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total, what)

    sha256: dict[str, str] = {}
    with _hub_errors(repo_id, revision, endpoint):
        for f in sorted(files, key=lambda f: (f.size or 0, f.rfilename)):
            sha256[f.rfilename] = _download_file(
                repo_id, commit, f, staging, endpoint, functools.partial(on_bytes, what=f.rfilename)
            )
    try:
        verify_safetensors(staging)
    except MythicError:
        shutil.rmtree(staging)
        raise
    manifest = write_manifest(
        staging, sha256, repo_id=repo_id, revision=revision or "main", commit=commit, source={"hub": endpoint}
    )
    with atomic_dir(folder, force=force) as out:
        for entry in staging.iterdir():
            os.replace(entry, out / entry.name)
    staging.rmdir()
    return manifest


def _download_file(
    repo_id: str,
    commit: str,
    remote: RepoSibling,
    staging: Path,
    endpoint: str,
    on_bytes: Callable[[int], None],
) -> str:
    """Fetch one file into ``staging`` (resuming ``<file>.incomplete``), check it; returns its sha256."""
    target, size = staging / remote.rfilename, remote.size or 0
    if target.is_file():
        on_bytes(size)
        return sha256_file(target)
    partial = target.with_name(target.name + ".incomplete")
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.touch()
    resume = partial.stat().st_size
    if resume > size:
        partial.write_bytes(b"")
        resume = 0
    if resume < size:
        url = hf_hub_url(repo_id, remote.rfilename, revision=commit, endpoint=endpoint)
        location = get_hf_file_metadata(url, endpoint=endpoint).location
        headers = build_hf_headers()
        if urlsplit(location).netloc != urlsplit(url).netloc:
            headers.pop("authorization", None)
        with partial.open("ab", buffering=0) as out:
            bar = functools.partial(_ByteCounter, on_bytes)
            http_get(location, out, resume_size=resume, headers=headers, expected_size=size, tqdm_class=bar)
    else:
        on_bytes(resume)
    digest = sha256_file(partial)
    expected = remote.lfs.sha256 if remote.lfs else remote.blob_id
    if expected is not None and expected != (digest if remote.lfs else git_hash(partial.read_bytes())):
        partial.unlink()
        raise MythicError(
            f"{remote.rfilename} from {repo_id} does not match the hub's checksum; run again to re-download it"
        )
    os.replace(partial, target)
    return digest


class _ByteCounter:
    """The tqdm-shaped object ``http_get`` drives: forwards byte counts to a callback."""

    def __init__(self, on_bytes: Callable[[int], None], initial: int = 0, **_: Any) -> None:
        self.on_bytes = on_bytes
        on_bytes(initial)

    def update(self, n: float | None = 1) -> None:
        self.on_bytes(int(n or 0))

    def __enter__(self) -> _ByteCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _bytes_on_disk(staging: Path, path: str) -> int:
    """Bytes of ``path`` a previous run already left in ``staging`` (finished or ``.incomplete``)."""
    for candidate in (staging / path, staging / f"{path}.incomplete"):
        if candidate.is_file():
            return candidate.stat().st_size
    return 0


@contextlib.contextmanager
def _hub_errors(repo_id: str, revision: str | None, endpoint: str) -> Iterator[None]:
    """Turn the hub client's errors into one-line ``MythicError``s."""
    try:
        yield
    except RevisionNotFoundError as err:
        raise MythicError(f"revision {revision!r} not found in {repo_id} at {endpoint}") from err
    except GatedRepoError as err:
        raise MythicError(f"{repo_id} is gated: accept its terms on the hub, then `hf auth login`") from err
    except RepositoryNotFoundError as err:
        raise MythicError(
            f"model repo {repo_id!r} not found at {endpoint} (private repos need `hf auth login`)"
        ) from err
    except (HfHubHTTPError, httpx2.TransportError) as err:
        message = " ".join(str(err).split())
        raise MythicError(f"request to {endpoint} failed ({message}); run again to retry (downloads resume)") from err


def verify_safetensors(folder: Path) -> None:
    """Check the safetensors weights of ``folder`` against their index (see the module contract)."""
    index = folder / INDEX
    if not index.is_file():
        single = folder / "model.safetensors"
        if not single.is_file():
            raise MythicError(f"{folder} has no safetensors weights (model.safetensors or {INDEX})")
        _tensor_names(single)
        return
    assigned: dict[str, set[str]] = {}
    for tensor, shard in json.loads(index.read_text())["weight_map"].items():
        assigned.setdefault(shard, set()).add(tensor)
    unindexed = sorted(p.name for p in folder.glob("*-of-*.safetensors") if p.name not in assigned)
    if unindexed:
        raise MythicError(f"shard {unindexed[0]} is not named in {INDEX}")
    for shard, expected in sorted(assigned.items()):
        path = folder / shard
        if not path.is_file():
            raise MythicError(f"shard {shard} named in {INDEX} is missing")
        found = _tensor_names(path)
        if found != expected:
            missing, extra = sorted(expected - found), sorted(found - expected)
            raise MythicError(
                f"shard {shard} does not hold the tensors {INDEX} assigns to it: "
                f"{len(missing)} missing {missing[:2]}, {len(extra)} unexpected {extra[:2]}"
            )


def _tensor_names(path: Path) -> set[str]:
    try:
        with safe_open(path, framework="pt") as f:
            return set(f.keys())
    except SafetensorError as err:
        raise MythicError(f"{path.name} is not a valid safetensors file: {err}") from err


def write_manifest(folder: Path, sha256: dict[str, str] | None = None, **fields: Any) -> dict[str, Any]:
    """Write ``mythic-manifest.json``: ``fields`` plus each file's path, size and sha256."""
    known = sha256 or {}
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(folder).as_posix()
        files.append({"path": rel, "size": path.stat().st_size, "sha256": known.get(rel) or sha256_file(path)})
    manifest = {**fields, "files": files}
    write_json(folder / MANIFEST, manifest)
    return manifest


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of a fetched folder, or None when it has none."""
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def record_default_base(folder: Path) -> None:
    """Remember ``folder`` in ``base/LATEST`` as the base later commands use by default."""
    LATEST.parent.mkdir(parents=True, exist_ok=True)
    LATEST.write_text(f"{folder.resolve()}\n")


def default_base_dir() -> Path:
    """The folder the last ``mythic fetch base`` recorded in ``base/LATEST``."""
    if not LATEST.is_file():
        raise MythicError(f"no base model fetched yet ({LATEST} is missing): run `mythic fetch base` first")
    folder = Path(LATEST.read_text().strip())
    if not folder.is_dir():
        raise MythicError(f"the default base {folder} (recorded in {LATEST}) is gone: run `mythic fetch base` again")
    return folder
