"""benchmarks/loop_overhead.py --tiny: every row measured, the ideals exact, the printed table complete."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "loop_overhead.py"


def test_tiny_run_reports_every_ratio(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    command = [sys.executable, str(SCRIPT), "--tiny", "--min-run-time", "0.01", "--threads", "1", "--json", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [(r["model"], r["T"]) for r in rows] == [
        (model, t) for model in ("llama-tiny", "deepseek_v2-h64") for t in (1, 2, 4, 8)
    ]
    ideals = [r["ideal"] for r in rows]
    expected = [(20 + (t - 1) * 4) / 20 for t in (1, 2, 4, 8)] + [(8 + (t - 1) * 2) / 8 for t in (1, 2, 4, 8)]
    assert all(math.isclose(a, b) for a, b in zip(ideals, expected, strict=True))
    for r in rows:
        for key in ("forward_ratio", "forward_vs_unrolled", "decode_tok_s", "decode_ratio"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["model"], r["T"], key)
        assert math.isclose(r["decode_vs_ideal"], r["decode_ratio"] / r["ideal"])
        assert math.isclose(r["forward_vs_ideal"], r["forward_ratio"] / r["ideal"])
        assert f"{r['forward_vs_unrolled']:.3f}" in proc.stdout, "every column of the row is printed"
    assert rows[0]["decode_ratio"] == rows[4]["decode_ratio"] == 1.0
    overhead = report["identity_overhead"]
    assert overhead["T1_with_depth_lora"] > 0 and overhead["T1_without_depth_lora"] > 0
