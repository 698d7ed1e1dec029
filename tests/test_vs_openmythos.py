"""benchmarks/vs_openmythos.py: the tiny configuration runs end to end; a missing reference is one line, exit 2."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "vs_openmythos.py"
REFERENCE = REPO.parent / "shared" / "reference" / "openmythos" / "main.py"


@pytest.mark.skipif(not REFERENCE.is_file(), reason=f"the OpenMythos reference is not at {REFERENCE}")
def test_small_run_gives_positive_rates_for_both_and_finite_ratios(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    command = [sys.executable, str(SCRIPT), "--small", "--repeats", "1", "--threads", "1", "--json", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    keys = [row["key"] for row in report["rows"]]
    assert keys == ["train_gqa", "train_mla", "generate_gqa", "generate_mla", "peak_rss", "train_rss"]
    for row in report["rows"]:
        for impl in ("reference", "mythic"):
            assert row[impl] > 0, (row["key"], impl, row[impl])
            assert len(row["runs"][impl]) == 1
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
    for impl in ("reference", "mythic"):
        for attn in ("gqa", "mla"):
            counts = report["params"][impl][attn]
            assert counts["total"] == counts["body"] + counts["recurrence_extras"] > 0
    # the two implementations share the body: same embedding, attention, experts and dense layers
    for attn in ("gqa", "mla"):
        assert report["params"]["reference"][attn]["body"] == report["params"]["mythic"][attn]["body"]
    assert "mythic/ref" in proc.stdout


def test_missing_reference_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "main.py"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--reference", str(missing), "--small"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(missing) in lines[0] and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def run_script(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict | None]:
    out = tmp_path / "report.json"
    command = [sys.executable, str(SCRIPT), "--small", "--repeats", "1", "--threads", "1", "--json", str(out), *extra]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    return proc, json.loads(out.read_text()) if out.is_file() else None


@pytest.mark.skipif(not REFERENCE.is_file(), reason=f"the OpenMythos reference is not at {REFERENCE}")
def test_kinds_measures_only_the_rows_asked_for(tmp_path: Path) -> None:
    proc, report = run_script(tmp_path, "--kinds", "generate_mla")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [row["key"] for row in report["rows"]] == ["generate_mla"]
    assert report["rows"][0]["mythic"] > 0 and report["rows"][0]["reference"] > 0
    assert report["compile"] is False
    assert list(report["params"]["mythic"]) == ["mla"]


def test_unknown_kind_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc, report = run_script(tmp_path, "--kinds", "generate_gqa,decode")
    assert proc.returncode == 2 and report is None
    assert len(proc.stderr.strip().splitlines()) == 1 and "--kinds" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not REFERENCE.is_file(), reason=f"the OpenMythos reference is not at {REFERENCE}")
def test_compiled_mythic_generates_and_trains(tmp_path: Path) -> None:
    proc, report = run_script(tmp_path, "--compile", "--kinds", "train_gqa,generate_gqa")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report["compile"] is True
    assert [row["key"] for row in report["rows"]] == ["train_gqa", "generate_gqa", "peak_rss", "train_rss"]
    assert all(row["mythic"] > 0 for row in report["rows"])
    (train,) = report["runs"]["train_gqa"]["mythic"]
    assert math.isfinite(train["loss"])
