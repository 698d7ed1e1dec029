"""benchmarks/token_loop_probe.py on a tiny random Llama: a pass is the base's forward of the prompt with
its last token replaced by what is fed back, and train → eval → report runs end to end on pointer files."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import save_tiny_base

from mythic.tasks.baselines import score
from mythic.tasks.files import read_tasks
from mythic.tasks.make import generator, make

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "token_loop_probe.py"
PROMPTS = ["a>b;b>c;c>a;?++a", "b>a;a>c;c>c;?+b"]


def load_script():
    spec = importlib.util.spec_from_file_location("token_loop_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("base")
    save_tiny_base(folder, "llama")
    return folder


@torch.no_grad()
def test_each_pass_is_the_base_on_the_prompt_whose_last_token_is_fed_back(base: Path) -> None:
    probe = load_script()
    loop = probe.TokenLoop(str(base), loop_embedding=False)
    loop.model.eval()
    assert float((loop.passes(PROMPTS, 1)[0][0] - loop.whole_prompt_logits(PROMPTS)).abs().max()) < 1e-5
    loop.gate.fill_(-torch.inf)  # g = 0: the last token is fed back unchanged, every pass repeats the first
    first, *rest = loop.passes(PROMPTS, 3)[0]
    assert all(float((later - first).abs().max()) == 0.0 for later in rest)
    loop.gate.fill_(torch.inf)  # g = 1, hard: pass 2 reads pass 1's argmax token in the last token's place
    one, two = loop.passes(PROMPTS, 2, hard=True)[0]
    assert float((two - loop.whole_prompt_logits(PROMPTS, last=one.argmax(-1))).abs().max()) < 1e-5


@pytest.mark.slow
def test_train_eval_report_on_pointer_files(base: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    sizes = {"train": 40, "valid": 16, "test": 16}
    make("pointer", data, seed=0, train_difficulty=(1, 2), test_difficulty=(1, 4), sizes=sizes)
    run = tmp_path / "loop-s0"
    common = [sys.executable, str(SCRIPT)]
    train = [*common, "train", str(data), str(run), "--base", str(base), "--steps", "6", "--batch", "4"]
    settings = ["--extra", "1", "--extra-after", "3", "--loop-embedding"]
    for command in (
        [*train, *settings],
        [*common, "depth", str(data), str(run), "--base", str(base), "--depth-examples", "8"],
        [*common, "eval", str(data), str(run), "--base", str(base), "--split", "valid,test"],
    ):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    gaps = [float(g) for g in re.findall(r"max abs diff (\S+)", proc.stdout)]
    assert len(gaps) == 2 and max(gaps) < 1e-4
    steps = [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 7))
    assert all(t == s["d"] for s in steps[:3] for t in s["T"])
    assert all(s["d"] <= t <= s["d"] + 1 for s in steps[3:] for t in s["T"])
    assert all(0.0 < s["ce"] < 20.0 for s in steps)
    test = json.loads((run / "test.json").read_text())
    assert set(test) == {"soft", "hard", "depth"} and set(test["soft"]) == {"1", "2", "3", "4"}
    for d, learned in test["depth"].items():  # the head names a trained count; its score is a fixed T's
        assert 1.0 <= learned["T"] <= 2.0
        if learned["T"] in (1.0, 2.0):
            assert learned["soft"] == test["soft"][d][str(int(learned["T"]))]
            assert learned["T_is_d"] == (100.0 if learned["T"] == int(d) else 0.0)
    for mode in ("soft", "hard"):
        for by_loops in test[mode].values():
            assert list(by_loops) == [str(t) for t in range(1, 9)]
            assert all(value in {25.0 * k for k in range(5)} for value in by_loops.values())  # 4 questions a depth
    proc = subprocess.run([*common, "report", str(data), str(run)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bands = {"in": (1, 2), "beyond": (3, 4)}
    for name, values in score(read_tasks(data / "test.jsonl"), generator("pointer").baselines, bands).items():
        assert f"baseline {name}: in {100 * values['bands']['in']:.1f}  beyond" in proc.stdout
    t1_in = (test["soft"]["1"]["1"] + test["soft"]["2"]["1"]) / 2
    assert "loop (1 runs) in: best T on valid" in proc.stdout and f"T=1 {t1_in:.1f} ± 0.0" in proc.stdout
    learned_in = (test["depth"]["1"]["soft"] + test["depth"]["2"]["soft"]) / 2
    assert f"learned T {learned_in:.1f} ± 0.0" in proc.stdout
