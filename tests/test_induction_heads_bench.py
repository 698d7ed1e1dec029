"""benchmarks/induction_heads.py: the score is the formula's number, and the smoke run reports every layer."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "induction_heads.py"


def load_script():
    spec = importlib.util.spec_from_file_location("induction_heads", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scores_are_the_attention_to_the_token_after_the_first_occurrence() -> None:
    length = 5
    uniform = torch.tril(torch.ones(2 * length, 2 * length))
    uniform = uniform / uniform.sum(-1, keepdim=True)
    induction = torch.zeros(2 * length, 2 * length)
    induction[0, 0] = 1.0
    for i in range(1, 2 * length):
        induction[i, max(i - length + 1, 0)] = 1.0
    half = 0.5 * induction + 0.5 * uniform
    layer = torch.stack([uniform, induction, half])[None].expand(2, 3, -1, -1)
    scores = load_script().induction_scores([layer, layer.flip(1)], length)
    expected_uniform = sum(1 / (i + 1) for i in range(length, 2 * length)) / length
    assert torch.allclose(scores[0], torch.tensor([expected_uniform, 1.0, 0.5 + 0.5 * expected_uniform]))
    assert torch.equal(scores[1], scores[0].flip(0))


def test_tiny_run_reports_every_layer(tmp_path: Path) -> None:
    out = tmp_path / "induction.json"
    command = [sys.executable, str(SCRIPT), "--tiny", "--length", "8", "--batch", "2", "--threads", "1"]
    proc = subprocess.run([*command, "--json", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    scores = torch.tensor(report["scores"])
    assert scores.shape == (6, 4) and bool(((scores > 0) & (scores < 1)).all())
    for row, layer_scores in zip(report["layers"], scores, strict=True):
        assert row["best"] == float(layer_scores.max()) and row["best_head"] == int(layer_scores.argmax())
        assert abs(row["mean"] - float(layer_scores.mean())) < 1e-6
        assert f"{row['best']:.3f}" in proc.stdout
