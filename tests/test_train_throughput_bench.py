"""benchmarks/train_throughput.py --recipe: both paths measured on the recipe's own task data, every column."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import yaml
from test_train_helpers import tiny_recipe, write_corpus
from tiny import write_tiny_base

from mythic.tasks.files import Task, write_tasks

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "train_throughput.py"


def test_recipe_rows_count_padding_apart_and_compare_both_paths(tmp_path: Path) -> None:
    base = write_tiny_base(tmp_path / "base")
    words = [f"w{i}" for i in range(61)]
    tasks = [
        Task(" ".join(words[j % 61] for j in range(i, i + 2 + i % 9)), words[i % 61], 1 + i % 3) for i in range(64)
    ]
    write_tasks(tmp_path / "train.jsonl", tasks)
    recipe = tiny_recipe(base, write_corpus(tmp_path / "corpus"), tmp_path / "run")
    recipe["data"] = {"seq_len": 32, "sources": [{"kind": "tasks", "path": str(tmp_path / "train.jsonl")}]}
    recipe["loss"] = {}
    recipe["train"] = {"steps": 10, "micro_batch": 8}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "rows.json"
    command = [sys.executable, str(SCRIPT), "--recipe", str(tmp_path / "recipe.yaml"), "--steps", "2"]
    command += ["--rounds", "2", "--threads", "1", "--json", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, now = json.loads(out.read_text())["rows"]
    assert (before["path"], now["path"]) == ("before", "now")
    for row in (before, now):
        assert 0 < row["real_tokens_per_s"] < row["tokens_per_s"] or row["padding"] == 0.0
        assert math.isclose(row["real_tokens_per_s"], row["tokens_per_s"] * (1 - row["padding"]))
        assert row["peak_flops_per_s"] > 1e8 and 0 < row["of_peak"] < 1.5
        assert math.isclose(row["of_peak"], row["model_flops_per_s"] / row["peak_flops_per_s"])
        assert f"{row['real_tokens_per_s']:,.0f}" in proc.stdout
    assert before["padding"] > now["padding"], "batching by length leaves less padding"
    assert math.isclose(now["speedup"], now["real_tokens_per_s"] / before["real_tokens_per_s"])
    assert f"{now['speedup']:.2f}×" in proc.stdout
