"""A stand-in Hugging Face Hub on 127.0.0.1 for tests (the real hub is never contacted).

It speaks the HTTP endpoints the real ``huggingface_hub`` client reads when downloading:

- ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``: model info with ``sha``
  and ``siblings`` (``size``, ``blobId`` and ``lfs`` too when ``?blobs=True``, i.e.
  ``files_metadata=True``);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: the file, with ``X-Repo-Commit``, ``ETag``
  (sha256 for LFS files, git blob id otherwise), ``X-Linked-Etag``/``X-Linked-Size`` for LFS
  files, ``Content-Length`` and ``Range`` support (``206`` + ``Content-Range``);
- errors as the hub sends them: ``404`` with ``X-Error-Code`` ``RepoNotFound``,
  ``RevisionNotFound`` or ``EntryNotFound``.

No Xet headers are ever sent, so the client always takes its plain HTTP path. Faults for
tests: ``cut_once[path] = n`` sends the first ``n`` bytes of that file's next GET and drops the
connection; ``stall_once[path] = n`` sends ``n`` bytes and then waits for ``release`` (so a test
can kill the downloading process mid-file); ``corrupt_once`` flips the first byte of the next GET.
Every request is logged in ``requests``. Routes live in one table (``StandInHub.routes``) so
upload endpoints can be added beside them.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
TINY_REPO = "mythic-test/tiny-llama"  # where the ``hub`` fixture (tests/conftest.py) serves the tiny model
STALL_LIMIT_S = 60.0


def git_blob_id(data: bytes) -> str:
    """The git object id of a blob, as the hub reports it for non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Revision:
    """One commit of a repo: its sha and its files."""

    commit: str
    files: dict[str, bytes]


@dataclass(frozen=True)
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    range: str | None


@dataclass
class StandInHub:
    """Repos in memory plus a threaded HTTP server that serves them like the hub does."""

    repos: dict[str, dict[str, Revision]] = field(default_factory=dict)
    cut_once: dict[str, int] = field(default_factory=dict)
    stall_once: dict[str, int] = field(default_factory=dict)
    corrupt_once: set[str] = field(default_factory=set)
    release: threading.Event = field(default_factory=threading.Event)
    requests: list[Request] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def add_repo(self, repo_id: str, files: dict[str, bytes], ref: str = "main") -> str:
        """Publish ``files`` as a new commit of ``repo_id`` under ``ref``; returns the commit sha."""
        digest = hashlib.sha1(repo_id.encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
        revision = Revision(commit=digest.hexdigest(), files=dict(files))
        refs = self.repos.setdefault(repo_id, {})
        refs[ref] = revision
        refs[revision.commit] = revision
        return revision.commit

    def add_folder(self, repo_id: str, folder: Path, ref: str = "main") -> str:
        """Publish every file under ``folder`` (paths relative to it)."""
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        return self.add_repo(repo_id, files, ref)

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> str:
        """Serve on a free port of 127.0.0.1 in a daemon thread; returns the base URL."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.url

    def close(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def gets(self, path: str) -> list[Request]:
        """The GET requests for one repo file (any repo, any revision)."""
        return [r for r in self.requests if r.method == "GET" and r.path.endswith(f"/{path}")]

    @property
    def routes(self) -> list[tuple[str, re.Pattern[str], Callable[..., None]]]:
        repo = r"(?P<repo>[^/]+/[^/]+)"
        return [
            ("GET", re.compile(rf"^/api/models/{repo}(?:/revision/(?P<rev>[^/]+))?$"), self._model_info),
            ("GET", re.compile(rf"^/{repo}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), self._resolve),
            ("HEAD", re.compile(rf"^/{repo}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), self._resolve),
        ]

    def _revision(self, handler: _Handler, repo: str, rev: str) -> Revision | None:
        if repo not in self.repos:
            handler.send_error_json(404, "RepoNotFound", f"Repository {repo} not found")
            return None
        if rev not in self.repos[repo]:
            handler.send_error_json(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return self.repos[repo][rev]

    def _model_info(self, handler: _Handler, repo: str, rev: str | None, query: dict[str, list[str]]) -> None:
        revision = self._revision(handler, repo, rev or "main")
        if revision is None:
            return
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for path, data in sorted(revision.files.items()):
            sibling: dict[str, object] = {"rfilename": path}
            if blobs:
                sibling |= {"size": len(data), "blobId": git_blob_id(data)}
                if path.endswith(LFS_SUFFIXES):
                    sibling["lfs"] = {
                        "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "pointerSize": 134,
                    }
            siblings.append(sibling)
        body = {"id": repo, "modelId": repo, "sha": revision.commit, "private": False, "siblings": siblings}
        handler.send_bytes(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _resolve(self, handler: _Handler, repo: str, rev: str, path: str, query: dict[str, list[str]]) -> None:
        revision = self._revision(handler, repo, rev)
        if revision is None:
            return
        if path not in revision.files:
            handler.send_error_json(404, "EntryNotFound", f"{path} does not exist", {"X-Repo-Commit": revision.commit})
            return
        data = revision.files[path]
        headers = {"X-Repo-Commit": revision.commit, "Accept-Ranges": "bytes"}
        if path.endswith(LFS_SUFFIXES):
            sha256 = hashlib.sha256(data).hexdigest()
            headers |= {
                "ETag": f'"{sha256}"',
                "X-Linked-Etag": f'"{sha256}"',
                "X-Linked-Size": str(len(data)),
            }
        else:
            headers["ETag"] = f'"{git_blob_id(data)}"'
        start, end, status = 0, len(data), 200
        if (spec := re.fullmatch(r"bytes=(\d+)-(\d*)", handler.headers.get("Range", ""))) is not None:
            start, end = int(spec[1]), min(int(spec[2] or len(data) - 1) + 1, len(data))
            if start >= end:
                handler.send_bytes(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        body = data[start:end]
        if handler.command == "HEAD":
            handler.send_bytes(status, b"", headers, length=len(body))
            return
        if path in self.corrupt_once and body:
            self.corrupt_once.discard(path)
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        limit = self.cut_once.pop(path, None)
        stall = self.stall_once.pop(path, None)
        if limit is None and stall is None:
            handler.send_bytes(status, body, headers)
            return
        handler.send_bytes(status, body[: limit if limit is not None else stall], headers, length=len(body))
        if stall is not None:
            self.release.wait(STALL_LIMIT_S)
        handler.close_connection = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        """Silent: requests are recorded in ``StandInHub.requests`` instead."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        hub: StandInHub = self.server.hub  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        hub.requests.append(Request(self.command, url.path, self.headers.get("Range")))
        for method, pattern, route in hub.routes:
            if method == self.command and (match := pattern.match(url.path)):
                args = {k: unquote(v) if v is not None else None for k, v in match.groupdict().items()}
                route(self, query=parse_qs(url.query), **args)
                return
        self.send_error_json(404, "NotFound", f"no route for {self.command} {url.path}")

    def send_bytes(self, status: int, body: bytes, headers: dict[str, str], length: int | None = None) -> None:
        """Send a response; ``length`` overrides Content-Length (HEAD, or a body cut short on purpose)."""
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD" and body:
            try:
                self.wfile.write(body)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    def send_error_json(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        extra = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        self.send_bytes(status, body, extra | (headers or {}))
