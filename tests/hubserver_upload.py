"""Upload endpoints for the stand-in hub of ``hubserver.py``: what ``HfApi.create_repo`` and ``upload_folder`` call.

- ``POST /api/repos/create`` ``{name, organization, type}``: 200 ``{"url"}``, or 409 (still with ``url``) when the
  repo exists, as the hub answers;
- ``POST /api/validate-yaml`` ``{content, repoType}``: the README's front matter must parse as a YAML mapping;
- ``POST /api/models/{repo}/preupload/{rev}`` ``{files: [{path, sample, size}]}``: ``uploadMode`` "lfs" for the
  suffixes the download side serves as LFS (``LFS_SUFFIXES``), else "regular"; ``oid`` of the file already at
  that path (sha256 for LFS, git blob id otherwise), so the client skips unchanged files;
- ``POST /{repo}.git/info/lfs/objects/batch`` (git-lfs batch API, basic transfer): an upload action
  (``PUT /_lfs/{oid}``) and a verify action (``POST /_lfs/{oid}/verify``) for each object not stored yet;
- ``PUT /_lfs/{oid}``: the object, refused unless sha256(body) = oid;
- ``POST /_lfs/{oid}/verify`` ``{oid, size}``: 200 when that object is stored with that size;
- ``POST /api/models/{repo}/commit/{rev}`` (NDJSON: ``header``, ``file`` base64, ``lfsFile`` by oid,
  ``deletedFile``): a new revision on top of the current one; ``{"commitUrl", "commitOid"}``.

Not stood in: Xet storage (the client's upload path whenever ``hf_xet`` is installed; tests switch it off with
``huggingface_hub.constants.HF_HUB_DISABLE_XET``), multipart LFS (the batch answer never sets ``chunk_size``),
pull requests, and authentication (any token, or none, is accepted).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer

import yaml
from hubserver import LFS_SUFFIXES, StandInHub, _Handler, git_blob_id


class _UploadHandler(_Handler):
    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def body(self) -> bytes:
        """The request body, sent with Content-Length or chunked."""
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))
        data = b""
        while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
            data += self.rfile.read(size)
            self.rfile.readline()
        self.rfile.readline()
        return data

    def send_json(self, status: int, body: object) -> None:
        self.send_bytes(status, json.dumps(body).encode(), {"Content-Type": "application/json"})


@dataclass
class UploadHub(StandInHub):
    """``StandInHub`` plus the upload endpoints; uploaded LFS objects are kept in ``lfs`` by sha256."""

    lfs: dict[str, bytes] = field(default_factory=dict)

    def start(self) -> str:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _UploadHandler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.url

    def puts(self) -> int:
        """How many LFS objects were PUT."""
        return sum(1 for r in self.requests if r.method == "PUT")

    @property
    def routes(self) -> list[tuple[str, re.Pattern[str], Callable[..., None]]]:
        repo = r"(?P<repo>[^/]+/[^/]+?)"
        return [
            *super().routes,
            ("POST", re.compile(r"^/api/repos/create$"), self._create),
            ("POST", re.compile(r"^/api/validate-yaml$"), self._validate_yaml),
            ("POST", re.compile(rf"^/api/models/{repo}/preupload/(?P<rev>[^/]+)$"), self._preupload),
            ("POST", re.compile(rf"^/{repo}\.git/info/lfs/objects/batch$"), self._lfs_batch),
            ("PUT", re.compile(r"^/_lfs/(?P<oid>[0-9a-f]{64})$"), self._lfs_put),
            ("POST", re.compile(r"^/_lfs/(?P<oid>[0-9a-f]{64})/verify$"), self._lfs_verify),
            ("POST", re.compile(rf"^/api/models/{repo}/commit/(?P<rev>[^/]+)$"), self._commit),
        ]

    def _create(self, handler: _UploadHandler, query: dict[str, list[str]]) -> None:
        request = json.loads(handler.body())
        repo = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
        url = f"{self.url}/{repo}"
        if repo in self.repos:
            handler.send_json(409, {"error": "You already created this model repo", "url": url})
            return
        self.add_repo(repo, {})
        handler.send_json(200, {"url": url, "name": repo})

    def _validate_yaml(self, handler: _UploadHandler, query: dict[str, list[str]]) -> None:
        content = json.loads(handler.body())["content"]
        front = re.match(r"^---\n(.*?)\n---\n", content, flags=re.DOTALL)
        if front is not None and not isinstance(yaml.safe_load(front[1]), dict):
            handler.send_json(400, {"errors": [{"message": "metadata is not a YAML mapping"}], "warnings": []})
            return
        handler.send_json(200, {"errors": [], "warnings": []})

    def _preupload(self, handler: _UploadHandler, repo: str, rev: str, query: dict[str, list[str]]) -> None:
        revision = self._revision(handler, repo, rev)
        if revision is None:
            return
        files = []
        for entry in json.loads(handler.body())["files"]:
            lfs = entry["path"].endswith(LFS_SUFFIXES)
            old = revision.files.get(entry["path"])
            oid = None if old is None else hashlib.sha256(old).hexdigest() if lfs else git_blob_id(old)
            files.append(
                {"path": entry["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        handler.send_json(200, {"files": files, "commitOid": revision.commit})

    def _lfs_batch(self, handler: _UploadHandler, repo: str, query: dict[str, list[str]]) -> None:
        if repo not in self.repos:
            handler.send_error_json(404, "RepoNotFound", f"Repository {repo} not found")
            return
        objects = []
        for obj in json.loads(handler.body())["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs:
                answer["actions"] = {
                    "upload": {"href": f"{self.url}/_lfs/{obj['oid']}"},
                    "verify": {"href": f"{self.url}/_lfs/{obj['oid']}/verify"},
                }
            objects.append(answer)
        body = json.dumps({"transfer": "basic", "objects": objects}).encode()
        handler.send_bytes(200, body, {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, handler: _UploadHandler, oid: str, query: dict[str, list[str]]) -> None:
        data = handler.body()
        if hashlib.sha256(data).hexdigest() != oid:
            handler.send_error_json(400, "BadRequest", "content does not match its oid")
            return
        self.lfs[oid] = data
        handler.send_bytes(200, b"", {})

    def _lfs_verify(self, handler: _UploadHandler, oid: str, query: dict[str, list[str]]) -> None:
        request = json.loads(handler.body())
        if oid not in self.lfs or len(self.lfs[oid]) != request["size"]:
            handler.send_error_json(404, "EntryNotFound", f"LFS object {oid} not found")
            return
        handler.send_json(200, {"success": True})

    def _commit(self, handler: _UploadHandler, repo: str, rev: str, query: dict[str, list[str]]) -> None:
        revision = self._revision(handler, repo, rev)
        if revision is None:
            return
        files = dict(revision.files)
        for line in handler.body().splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.lfs:
                    handler.send_error_json(422, "BadRequest", f"LFS object {value['oid']} was never uploaded")
                    return
                files[value["path"]] = self.lfs[value["oid"]]
            elif item["key"] == "deletedFile":
                files.pop(value["path"], None)
        commit = self.add_repo(repo, files, ref=rev)
        handler.send_json(200, {"commitUrl": f"{self.url}/{repo}/commit/{commit}", "commitOid": commit})
