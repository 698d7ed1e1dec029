"""benchmarks/per_sequence_passes.py: both paths on the same micro-batches, the same losses, every number printed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "per_sequence_passes.py"


def test_masked_and_compacted_passes_give_the_same_loss_and_a_printed_ratio(tmp_path: Path) -> None:
    make = [sys.executable, "-m", "mythic", "tasks", "make", "pointer", "--out", str(tmp_path / "data")]
    make += ["--train-size", "64", "--valid-size", "8", "--test-size", "8"]
    assert subprocess.run(make, capture_output=True, text=True, timeout=300).returncode == 0
    out = tmp_path / "rows.json"
    command = [sys.executable, str(SCRIPT), str(REPO / "recipes" / "pointer-openmythos-cpu.yaml")]
    command += ["--set", f"data.sources.0.path={tmp_path / 'data' / 'train.jsonl'}", "--set", "model.config.dim=32"]
    command += ["--set", "train.micro_batch=8", "--steps", "3", "--rounds", "2", "--threads", "1", "--json", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    masked, compacted = summary["rows"]
    assert (masked["path"], compacted["path"]) == ("masked", "compacted")
    assert math.isclose(summary["ratio"], masked["step_s"] / compacted["step_s"])
    assert summary["loss_max_abs_diff"] <= 1e-5, "the same forward on fewer rows"
    assert 0 < summary["needed"] < 1, "depths d + U{0..2} over d = 1..4 leave rows finished early"
    assert f"{summary['ratio']:.2f}×" in proc.stdout and f"{masked['step_s']:.4f}" in proc.stdout
