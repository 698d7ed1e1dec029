"""Child side of the sandbox: run an untrusted program and serve calls to one of its functions.

Started as ``python -I -S runner.py REQ_FD RESP_FD ENTRY_POINT LIMITS_JSON`` inside the sandbox
(``sandbox.py``), from a copy in the sandbox folder, on the standard library only. It lowers its own
rlimits, executes ``program.py``, writes ``{"ready": true}`` (or ``{"error": ...}`` when it raised), then
answers requests, one JSON line each way:

    request  {"id": nonce, "args": enc(args), "kwargs": enc(kwargs)}
    response {"id": nonce, "ok": enc(result)}  or  {"id": nonce, "error": "Type: message"}

``encode`` accepts exactly None, bool, int, float, str, bytes, complex, list, tuple, dict, set and
frozenset (no subclasses), so a returned object cannot carry a forged ``__eq__`` into the harness.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import traceback
from typing import Any

_TAGGED = {"tuple": tuple, "set": set, "frozenset": frozenset}


def encode(x: Any) -> Any:
    """Plain data → JSON-able value with tags for the types JSON lacks; anything else raises TypeError."""
    t = type(x)
    if x is None or t in (bool, int, float, str):
        return x
    if t is list:
        return [encode(v) for v in x]
    if t in (tuple, set, frozenset):
        return {t.__name__: [encode(v) for v in x]}
    if t is dict:
        return {"dict": [[encode(k), encode(v)] for k, v in x.items()]}
    if t is bytes:
        return {"bytes": x.hex()}
    if t is complex:
        return {"complex": [x.real, x.imag]}
    raise TypeError(f"a {t.__name__} cannot cross the sandbox boundary (plain data only)")


def decode(x: Any) -> Any:
    """Inverse of ``encode``."""
    if isinstance(x, list):
        return [decode(v) for v in x]
    if not isinstance(x, dict):
        return x
    if len(x) != 1:
        raise ValueError("malformed tagged value")
    ((tag, v),) = x.items()
    if tag in _TAGGED:
        return _TAGGED[tag](decode(e) for e in v)
    if tag == "dict":
        return {decode(k): decode(e) for k, e in v}
    if tag == "bytes":
        return bytes.fromhex(v)
    if tag == "complex":
        return complex(v[0], v[1])
    raise ValueError(f"unknown tag {tag!r}")


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:1000]


def _set_limits(limits: dict[str, int]) -> None:
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * mb, limits["memory_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["max_file_mb"] * mb, limits["max_file_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if limits["max_procs"] > 0:
        resource.setrlimit(resource.RLIMIT_NPROC, (limits["max_procs"], limits["max_procs"]))


def main() -> None:
    req_fd, resp_fd, entry_point, limits = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    _set_limits(json.loads(limits))
    requests = os.fdopen(req_fd, "r", encoding="utf-8")
    responses = os.fdopen(resp_fd, "w", encoding="utf-8")

    def send(message: dict[str, Any]) -> None:
        responses.write(json.dumps(message) + "\n")
        responses.flush()

    namespace: dict[str, Any] = {"__name__": "candidate"}
    try:
        with open("program.py", encoding="utf-8") as f:
            exec(compile(f.read(), "program.py", "exec"), namespace)
        fn = namespace[entry_point]
    except BaseException as err:
        traceback.print_exc()
        send({"error": _describe(err)})
        return
    send({"ready": True})
    for line in requests:
        request = json.loads(line)
        try:
            result = fn(*decode(request["args"]), **decode(request["kwargs"]))
            send({"id": request["id"], "ok": encode(result)})
        except BaseException as err:
            send({"id": request["id"], "error": _describe(err)})


if __name__ == "__main__":
    main()
