"""Slow end-to-end training runs in real subprocesses: SIGKILL + --resume is bit-identical to an
uninterrupted run, and DDP with 2 processes (torchrun, gloo on CPU) leaves both ranks identical."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_train_helpers import tiny_recipe, write_corpus, write_tiny_base

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from mythic.cli import main; main()", "train"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def write_recipe(tmp: Path, name: str, **changes: object) -> Path:
    raw = tiny_recipe(tmp / "base", tmp / "corpus", tmp / name)
    raw["train"] = {"steps": 40, "micro_batch": 2, "grad_accum": 2}
    raw["checkpoint"] = {"every": 3, "keep": 2}
    raw["model"]["surgery"]["lora_rank"] = 2
    raw.update(changes)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    write_tiny_base(tmp_path / "base")
    write_corpus(tmp_path / "corpus")
    return tmp_path


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tiny: Path) -> None:
    full = subprocess.run([*CLI, str(write_recipe(tiny, "full"))], env=ENV, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-2000:]
    recipe = write_recipe(tiny, "killed")
    proc = subprocess.Popen([*CLI, str(recipe)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rng = random.Random(os.getpid())
    target = rng.randint(4, 30)  # kill after an arbitrary step, at an arbitrary moment inside the next one
    metrics = tiny / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= target:
            break
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.05))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tiny / "killed" / "final").exists()
    resumed = subprocess.run([*CLI, str(recipe), "--resume"], env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(tiny / "full" / "final" / "recurrence.safetensors")
    b = load_file(tiny / "killed" / "final" / "recurrence.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (tiny / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))


DDP_SCRIPT = """
import os
import sys
from safetensors.torch import save_file
from mythic.train.recipe import load_recipe
from mythic.train.trainer import default_build, train

models = []
def build(recipe, device):
    model, tok = default_build(recipe, device)
    models.append(model)
    return model, tok

result = train(load_recipe(sys.argv[1]), build=build)
rank = int(os.environ.get("RANK", "0"))
tensors = {k: v.contiguous() for k, v in models[0].recurrence_state_dict().items()}
save_file(tensors, f"{sys.argv[2]}/rank{rank}.safetensors")
"""


@pytest.mark.slow
def test_ddp_two_processes_end_identical(tiny: Path) -> None:
    script = tiny / "ddp.py"
    script.write_text(DDP_SCRIPT)
    ddp = write_recipe(tiny, "ddp", train={"steps": 4, "micro_batch": 2, "grad_accum": 2})
    port = str(29500 + os.getpid() % 1000)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
        + [str(script), str(ddp), str(tiny)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = load_file(tiny / "rank0.safetensors"), load_file(tiny / "rank1.safetensors")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    # One process with the same global batch (4 rows per micro-batch) takes the same steps.
    single = write_recipe(tiny, "single", train={"steps": 4, "micro_batch": 4, "grad_accum": 2})
    alone = subprocess.run([sys.executable, str(script), str(single), str(tiny / "single")], env=ENV)
    assert alone.returncode == 0
    one = load_file(tiny / "single" / "rank0.safetensors")
    start = load_file(tiny / "ddp" / "checkpoints" / "step-0000003" / "trainable.safetensors")
    assert any(not torch.equal(start[k], r0[k]) for k in r0)
    assert max((one[k] - r0[k]).abs().max().item() for k in r0) < 1e-5
