"""Slow end-to-end training runs in real subprocesses: SIGKILL + --resume is bit-identical to an
uninterrupted run; DDP and FSDP with 2 processes (torchrun, gloo on CPU) leave both ranks identical,
agree with each other and with one process on the same global batch; FSDP resumes exactly."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_train_helpers import tiny_recipe, write_corpus
from tiny import make_tokenizer, write_tiny_base

from mythic.models.openmythos import OpenMythosForCausalLM

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


RUN_SCRIPT = """
import os
import sys
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor
from mythic.train.recipe import load_recipe
from mythic.train.trainer import default_build, train

models = []
def build(recipe, device):
    model, tok = default_build(recipe, device)
    models.append(model)
    return model, tok

train(load_recipe(sys.argv[1]), build=build, resume="--resume" in sys.argv)
rank = int(os.environ.get("RANK", "0"))
held = {n: p.to_local() if isinstance(p, DTensor) else p for n, p in models[0].named_parameters()}
save_file({n: t.detach().contiguous() for n, t in held.items()}, f"{sys.argv[2]}/rank{rank}.safetensors")
"""


def launch(tiny: Path, recipe: Path, out: Path, processes: int, *flags: str) -> list[dict[str, torch.Tensor]]:
    """Train ``recipe`` with RUN_SCRIPT (torchrun when processes > 1); per rank, the parameters it holds
    at the end (its shards under FSDP)."""
    script = tiny / "run.py"
    script.write_text(RUN_SCRIPT)
    out.mkdir(parents=True, exist_ok=True)
    head = [sys.executable]
    if processes > 1:  # --standalone: a rendezvous on a free local port
        head += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    done = subprocess.run(
        [*head, str(script), str(recipe), str(out), *flags], env=ENV, capture_output=True, text=True, timeout=900
    )
    errors = [line for line in done.stderr.splitlines() if "Error" in line]
    assert done.returncode == 0, "\n".join(errors[-5:]) or done.stderr[-3000:]
    return [load_file(out / f"rank{r}.safetensors") for r in range(processes)]


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def trained(held: dict[str, torch.Tensor], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: held[k] for k in like}


PARALLEL = {
    "train": {"steps": 4, "micro_batch": 2, "grad_accum": 2},
    "trainable": {"lora": {"rank": 2, "target_modules": ["v_proj"]}},
    "curriculum": {
        "kind": "stages",
        "max_loops": 4,
        "grad_loops": 2,
        "stages": [{"start": 0, "weights": {1: 0.5, 3: 0.5}}],
    },
}


@pytest.mark.slow
def test_ddp_and_fsdp_with_two_processes_end_identical_to_one_process(tiny: Path) -> None:
    ddp = launch(tiny, write_recipe(tiny, "ddp", **PARALLEL), tiny / "ddp-out", 2)
    fsdp_train = {**PARALLEL["train"], "parallel": "fsdp"}
    fsdp = launch(tiny, write_recipe(tiny, "fsdp", **{**PARALLEL, "train": fsdp_train}), tiny / "fsdp-out", 2)
    single_train = {**PARALLEL["train"], "micro_batch": 4}  # the same global batch in one process
    single = launch(tiny, write_recipe(tiny, "single", **{**PARALLEL, "train": single_train}), tiny / "single-out", 1)
    assert max_diff(ddp[0], ddp[1]) == 0.0  # DDP: both ranks hold the same whole model
    # FSDP: each rank holds its dim-0 half of every parameter (the odd row on rank 0) ...
    for name, whole in ddp[0].items():
        assert fsdp[0][name].shape[0] == (whole.shape[0] + 1) // 2, name
        assert fsdp[0][name].shape[0] + fsdp[1][name].shape[0] == whole.shape[0], name
    sharded = {name: torch.cat([fsdp[0][name], fsdp[1][name]]) for name in ddp[0]}
    # ... and the whole run writes the gathered result.
    result = load_file(tiny / "fsdp" / "final" / "recurrence.safetensors")
    result |= load_file(tiny / "fsdp" / "final" / "base_lora.safetensors")
    assert any("lora_A" in k for k in result) and any(k.startswith("recurrence.") for k in result)
    assert max_diff(result, trained(sharded, result)) == 0.0
    start = load_file(tiny / "ddp" / "checkpoints" / "step-0000003" / "trainable.safetensors")
    assert max_diff(start, trained(ddp[0], start)) > 1e-4  # the last step still moved the weights
    # FSDP's reduce-scatter is DDP's all-reduce up to summation order; one process on the same
    # global batch takes the same steps.
    assert max_diff(ddp[0], sharded) < 1e-6
    assert max_diff(single[0], ddp[0]) < 1e-5


@pytest.mark.slow
def test_fsdp_resume_from_a_gathered_checkpoint_is_bit_identical(tiny: Path) -> None:
    fsdp = {**PARALLEL, "train": {**PARALLEL["train"], "parallel": "fsdp"}, "checkpoint": {"every": 2, "keep": 2}}
    recipe = write_recipe(tiny, "whole", **fsdp)
    whole = launch(tiny, recipe, tiny / "whole-out", 2)
    # Roll the run back to its step-2 checkpoint and let --resume redo steps 3 and 4.
    run = tiny / "whole"
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "checkpoints" / "step-0000004")
    resumed = launch(tiny, recipe, tiny / "resumed-out", 2, "--resume")
    assert max_diff(whole[0], resumed[0]) == 0.0 and max_diff(whole[1], resumed[1]) == 0.0
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.mark.slow
def test_openmythos_trains_under_fsdp_as_under_ddp(tiny: Path) -> None:
    make_tokenizer().save_pretrained(tiny / "tok")
    config = {
        "vocab_size": 64, "dim": 32, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 32, "max_loop_iters": 4,
        "prelude_layers": 1, "coda_layers": 1, "n_experts": 4, "n_shared_experts": 1, "n_experts_per_tok": 2,
        "expert_dim": 16, "lora_rank": 2, "attn_type": "mla", "kv_lora_rank": 16, "q_lora_rank": 16,
        "qk_rope_head_dim": 4, "qk_nope_head_dim": 4, "v_head_dim": 8,
    }  # fmt: skip
    changes = {
        "model": {"kind": "openmythos", "config": config, "tokenizer": str(tiny / "tok")},
        "loss": {"aux_weights": {"moe_balance": 0.01, "ponder": 0.001}},
        "curriculum": {"kind": "stages", "max_loops": 4, "stages": [{"start": 0, "weights": {2: 0.5, 4: 0.5}}]},
    }
    ddp = launch(tiny, write_recipe(tiny, "om-ddp", **changes, train=PARALLEL["train"]), tiny / "om-ddp-out", 2)
    fsdp_train = {**PARALLEL["train"], "parallel": "fsdp"}
    fsdp = launch(tiny, write_recipe(tiny, "om-fsdp", **changes, train=fsdp_train), tiny / "om-fsdp-out", 2)
    sharded = {name: torch.cat([fsdp[0][name], fsdp[1][name]]) for name in ddp[0]}
    assert max_diff(ddp[0], ddp[1]) == 0.0
    assert max_diff(ddp[0], sharded) < 1e-5
    start = load_file(tiny / "om-ddp" / "checkpoints" / "step-0000003" / "trainable.safetensors")
    assert max_diff(start, trained(ddp[0], start)) > 1e-4
    loaded = OpenMythosForCausalLM.from_pretrained(tiny / "om-fsdp" / "final").state_dict()
    assert max_diff(trained(loaded, sharded), sharded) == 0.0
