"""benchmarks/adaptive_exit.py on a tiny random OpenMythos: every row is measured, and the rows timed
without gathering (``--masked``) give the same answers and loops as the gathered ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from tiny import tiny_mythos

from mythic.models.openmythos.hf import OpenMythosConfig, OpenMythosForCausalLM
from mythic.tasks.files import write_tasks
from mythic.tasks.hops import HopsOptions, example
from mythic.tasks.tokenizer import char_tokenizer

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "adaptive_exit.py"


def test_adaptive_rows_gathered_and_masked_agree(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    options = HopsOptions(roots=2, chain=3)
    tasks = [example(rng, d, options) for d in (1, 2, 3, 1, 2, 3)]
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    tokenizer = char_tokenizer(tasks)
    torch.manual_seed(0)
    cfg = tiny_mythos("gqa", vocab_size=len(tokenizer), act=False, init_std=0.2)
    model = OpenMythosForCausalLM(OpenMythosConfig.from_mythos(cfg))
    model.config.eos_token_id, model.config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    out = tmp_path / "bench.json"
    command = [sys.executable, str(SCRIPT), str(tmp_path / "model"), str(tmp_path / "tasks.jsonl")]
    command += ["--loops", "1,2", "--auto", "auto:4", "--exit", "kl:0.01", "--batch-sizes", "1,3", "--rounds", "1"]
    command += ["--masked", "--threads", "1", "--json", str(out), "--png", str(tmp_path / "loops.png")]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["examples"] == 6
    for batch in ("1", "3"):
        rows = record["results"][batch]
        assert [(r["label"], r["gathered"]) for r in rows] == [
            ("T=1", True),
            ("T=2", True),
            ("auto:4", True),
            ("auto:4", False),
        ]
        gathered, masked = rows[2], rows[3]
        assert gathered["metrics"]["accuracy"]["value"] == masked["metrics"]["accuracy"]["value"]
        assert gathered["mean_loops"] == masked["mean_loops"]
        assert gathered["per_difficulty"] == masked["per_difficulty"]
        assert 1 <= gathered["mean_loops"] <= 4
        assert all(r["tokens_per_second"] > 0 and r["prefill_seconds"] > 0 for r in rows)
    assert (tmp_path / "loops.png").stat().st_size > 0
    assert "masked" in proc.stdout
