"""Perplexity at several loop counts, and the lm-evaluation-harness adapter, on the tiny Llama."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from mythic.cli.eval import app
from mythic.errors import MythicError
from mythic.eval import perplexity as ppl
from mythic.eval import pipeline
from mythic.loading import load_any, load_tokenizer
from mythic.surgery import surgery

TEXT = " ".join(f"w{(i * 7) % 61}" for i in range(70))


@pytest.fixture(scope="module")
def ckpt(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ppl") / "ckpt"
    surgery(tiny_llama_dir, out, block=(1, 2), max_loops=4)
    return out


def test_windows_and_summary(tiny_llama_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_llama_dir)
    windows = ppl.token_windows(tokenizer, ["w1 w2 w3", "w4 w5"], seq_len=3)
    assert [w.tolist() for w in windows] == [[4, 5, 6], [2, 7, 8]]
    assert [w.tolist() for w in ppl.token_windows(tokenizer, ["w1 w2 w3", "w4 w5"], 4, max_tokens=6)] == [
        [4, 5, 6, 2],
        [7, 8],
    ]
    summary = ppl.summarize(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    se = math.sqrt(5 / 3) / 2
    assert summary["nll"] == {"value": 2.5, "stderr": pytest.approx(se, abs=1e-12)}
    assert summary["ppl"]["value"] == pytest.approx(math.exp(2.5), abs=1e-12)
    assert summary["ppl"]["stderr"] == pytest.approx(math.exp(2.5) * se, abs=1e-12)


def test_batched_losses_equal_one_window_at_a_time(ckpt: Path) -> None:
    model = load_any(ckpt)
    tokenizer = load_tokenizer(ckpt)
    windows = ppl.token_windows(tokenizer, [TEXT], seq_len=16)
    assert [len(w) for w in windows] == [16, 16, 16, 16, 7]
    got = ppl.token_losses(model, windows, n_loops=2, batch_size=3)
    expected = []
    with torch.no_grad():
        for w in windows:
            logits = model(w[None], n_loops=2).logits[0].double()
            expected.append(F.cross_entropy(logits[:-1], w[1:], reduction="none"))
    assert got.shape == (4 * 15 + 6,)
    assert float((got - torch.cat(expected)).abs().max()) < 1e-5


def test_rows_base_equals_t1_and_cli_writes_results(ckpt: Path, tmp_path: Path) -> None:
    model = load_any(ckpt)
    tokenizer = load_tokenizer(ckpt)
    results = pipeline.perplexity_with_model(model, tokenizer, [TEXT], loops=[1, 2], seq_len=16)
    rows = {r["label"]: r for r in results["rows"]}
    assert list(rows) == ["base", "T=1", "T=2"]
    assert rows["base"]["metrics"]["nll"]["value"] == rows["T=1"]["metrics"]["nll"]["value"]
    assert rows["T=2"]["metrics"]["nll"]["value"] != rows["T=1"]["metrics"]["nll"]["value"]
    assert rows["base"]["tokens"] == 66
    nll = rows["T=2"]["metrics"]["nll"]["value"]
    assert rows["T=2"]["metrics"]["ppl"]["value"] == pytest.approx(math.exp(nll), rel=1e-12)

    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    out = tmp_path / "out"
    args = ["perplexity", str(ckpt), "--data", str(data), "--loops", "1,2", "--seq-len", "16", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "perplexity.json").read_text())
    assert saved["rows"][2]["metrics"]["nll"]["value"] == pytest.approx(nll, abs=1e-9)
    assert (out / "perplexity.png").stat().st_size > 1000
    again = CliRunner().invoke(app, args)
    assert isinstance(again.exception, MythicError)


def test_text_sources(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "w1 w2"}\n\n{"text": "w3"}\n')
    assert ppl.load_texts(str(tmp_path / "a.jsonl")) == ["w1 w2", "w3"]
    with pytest.raises(MythicError, match="no string field 'body'"):
        ppl.load_texts(str(tmp_path / "a.jsonl"), field="body")
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"content": "w5 w6"}\n{"content": "w7"}\n')
    assert ppl.load_texts(str(folder), field="content", max_docs=1) == ["w5 w6"]
    with pytest.raises(MythicError, match="cannot load dataset"):
        ppl.load_texts(str(tmp_path / "missing"))


# --- lm-evaluation-harness ---------------------------------------------------------------------

DOCS = [
    {"question": "w1 w2 w3", "choices": [" w4", " w5", " w6"], "answer": 0},
    {"question": "w7 w8", "choices": [" w9 w10", " w11"], "answer": 1},
    {"question": "w12", "choices": [" w13", " w14"], "answer": 0},
    {"question": "w20 w21", "choices": [" w22", " w23", " w24 w25"], "answer": 2},
]


def write_task(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "data.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (folder / "tiny.yaml").write_text(
        "task: mythic_tiny\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {folder / 'data.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    return folder


def expected_accuracy(ckpt: Path, n_loops: int) -> float:
    """acc by hand: argmax over choices of Σ log p(continuation | question) at n_loops."""
    model, tokenizer = load_any(ckpt), load_tokenizer(ckpt)
    right = 0
    for doc in DOCS:
        scores = []
        for choice in doc["choices"]:
            context = tokenizer(doc["question"], add_special_tokens=False).input_ids
            whole = tokenizer(doc["question"] + choice, add_special_tokens=False).input_ids
            with torch.no_grad():
                logp = model(torch.tensor([whole]), n_loops=n_loops).logits[0].log_softmax(-1)
            scores.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(context), len(whole))))
        right += int(max(range(len(scores)), key=scores.__getitem__) == doc["answer"])
    return right / len(DOCS)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.slow
def test_lm_eval_in_process_matches_hand_computed_accuracy(ckpt: Path, tmp_path: Path, offline: None) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from mythic.eval.lm_eval_adapter import MythicLM

    manager = TaskManager(include_path=str(write_task(tmp_path / "task")))
    for n_loops in (1, 3):
        results = lm_eval.simple_evaluate(
            model=MythicLM(pretrained=str(ckpt), n_loops=n_loops), tasks=["mythic_tiny"], task_manager=manager
        )
        assert results["results"]["mythic_tiny"]["acc,none"] == expected_accuracy(ckpt, n_loops)


@pytest.mark.slow
def test_lm_eval_command_line_with_the_mythic_model(ckpt: Path, tmp_path: Path) -> None:
    task = write_task(tmp_path / "task")
    out = tmp_path / "results"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    args = ["--model", "mythic", "--model_args", f"pretrained={ckpt},n_loops=3", "--tasks", "mythic_tiny"]
    args += ["--include_path", str(task), "--device", "cpu", "--output_path", str(out)]
    run = subprocess.run(
        [sys.executable, "-m", "mythic.eval.lm_eval_adapter", *args], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (saved,) = out.rglob("results_*.json")
    assert json.loads(saved.read_text())["results"]["mythic_tiny"]["acc,none"] == expected_accuracy(ckpt, 3)
