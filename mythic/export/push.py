"""Push an export folder to the hub: ``HfApi.create_repo(exist_ok=True)``, then one ``upload_folder`` commit
to ``$HF_ENDPOINT``; every failure becomes a one-line ``MythicError``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from mythic.errors import MythicError
from mythic.hub import hub_endpoint
from mythic.io import quiet_transformers


@dataclass
class PushReport:
    repo_id: str
    url: str
    commit: str
    files: int


def push_to_hub(folder: Path, repo_id: str, *, private: bool | None = None) -> PushReport:
    """Create ``repo_id`` if needed and upload ``folder`` as one commit; errors become one-line MythicErrors."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise MythicError(f"--push-to-hub takes a repo id (owner/name), got {repo_id!r}") from err
    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint)
    try:
        with quiet_transformers():
            url = api.create_repo(repo_id, exist_ok=True, repo_type="model", private=private)
            info = api.upload_folder(
                repo_id=repo_id, folder_path=folder, commit_message=f"mythic export ({folder.name})"
            )
    except (HfHubHTTPError, httpx2.TransportError, ValueError, RuntimeError) as err:
        message = " ".join(str(err).split())
        raise MythicError(f"push of {folder} to {repo_id} at {endpoint} failed ({message})") from err
    return PushReport(repo_id, str(url), str(info.oid), sum(1 for p in folder.rglob("*") if p.is_file()))
