"""Training and evaluating on task files: answer-only labels, the hop curriculum, exact resume, a char
tokenizer saved with the run, ``mythic eval tasks`` on an OpenMythos and a retrofit result."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_runner import run_cli
from test_train_helpers import HOPS_RECIPE, tiny_recipe, write_corpus
from tiny import make_tokenizer, write_tiny_base

from mythic.cli.options import parse_loops
from mythic.errors import MythicError
from mythic.eval.exact_match import evaluate_tasks, loop_dynamics, score
from mythic.loading import load_any, load_tokenizer
from mythic.tasks import hops
from mythic.tasks.files import Task, read_tasks, write_tasks
from mythic.tasks.tokenizer import char_tokenizer
from mythic.train.curriculum import Curriculum
from mythic.train.data import Batch, TaskStream, encode_task
from mythic.train.losses import IGNORE_INDEX
from mythic.train.recipe import Data, load_recipe, validate_recipe
from mythic.train.trainer import train

TASKS = [Task("a=1;?a", "1", 1), Task("b=2;c=b;?c", "2", 2), Task("d=3;e=d;f=e;?f", "3", 3)]


def task_data(tmp_path: Path, **source: object) -> Data:
    write_tasks(tmp_path / "t.jsonl", TASKS)
    return Data(seq_len=32, sources=[{"kind": "tasks", "path": str(tmp_path / "t.jsonl"), **source}])


def test_rows_train_on_the_answer_and_eos_only(tmp_path: Path) -> None:
    tokenizer = char_tokenizer(TASKS)
    stream = TaskStream(task_data(tmp_path), tokenizer, seed=0)
    batch = stream.next_batch(3)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    width = max(len(t.prompt) + 1 for t in TASKS)
    assert batch.input_ids.shape == batch.labels.shape == (3, width)
    seen = set()
    for ids, labels in zip(batch.input_ids.tolist(), batch.labels.tolist(), strict=True):
        prompt = tokenizer.decode([i for i in ids if i != pad])
        task = next(t for t in TASKS if prompt.startswith(t.prompt))
        seen.add(task.prompt)
        n = len(task.prompt)
        # position n-1 (the prompt's last token) predicts the answer, position n predicts EOS; the rest is ignored
        assert labels[n - 1] == tokenizer.convert_tokens_to_ids(task.answer) and labels[n] == eos
        assert all(x == IGNORE_INDEX for i, x in enumerate(labels) if i not in (n - 1, n))
        assert ids[n] == tokenizer.convert_tokens_to_ids(task.answer) and all(x == pad for x in ids[n + 1 :])
    assert len(seen) == 3  # one epoch draws every example once


def test_intermediate_answers_label_the_token_that_ends_them() -> None:
    task = Task("a=7;b=a;c=b;?=c", "7", 3, ((7, "7"), (11, "7")))
    tokenizer = char_tokenizer([task])
    ids, labels = encode_task(tokenizer, task)
    assert tokenizer.decode(ids) == task.prompt + "7"  # the prompt, then the answer (EOS is only a label)
    seven, eos = tokenizer.convert_tokens_to_ids("7"), tokenizer.eos_token_id
    # characters 6 ('a' of b=a) and 10 ('b' of c=b) answer 7; the last prompt token answers 7, then EOS
    expected = {6: seven, 10: seven, len(task.prompt) - 1: seven, len(task.prompt): eos}
    assert labels == [expected.get(i, IGNORE_INDEX) for i in range(len(ids))]
    with pytest.raises(MythicError, match="does not end a prompt token before the last one"):
        encode_task(tokenizer, Task(task.prompt, "7", 3, ((len(task.prompt), "7"),)))  # the question's own position
    words = make_tokenizer()
    ids, labels = encode_task(words, Task("w1 w2 w3", "w4", 1, ((5, "w9"),)))
    assert labels[ids.index(words.convert_tokens_to_ids("w2"))] == words.convert_tokens_to_ids("w9")
    with pytest.raises(MythicError, match="character 1 of 'w1 w2 w3' does not end a prompt token"):
        encode_task(words, Task("w1 w2 w3", "w4", 1, ((1, "w9"),)))  # inside the word w1


def test_difficulty_ramp_and_exact_resume(tmp_path: Path) -> None:
    tokenizer = char_tokenizer(TASKS)
    data = task_data(tmp_path, difficulty_ramp=30)
    stream = TaskStream(data, tokenizer, seed=0)

    def difficulties(step: int, n: int = 12) -> set[int]:
        drawn = set()
        for _ in range(n):
            ids, _, _ = stream.next_sample(step)
            drawn.add(tokenizer.decode(ids).count("="))  # a task above of difficulty d has d statements
        return drawn

    assert difficulties(0) == {1} and difficulties(10) == {1, 2} and difficulties(29) == {1, 2, 3}
    state = json.loads(json.dumps(stream.state_dict()))
    expected = [stream.next_batch(2, step=40).input_ids for _ in range(3)]
    resumed = TaskStream(data, tokenizer, seed=0)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, resumed.next_batch(2, step=40).input_ids) for a in expected)


def test_bucketing_batches_by_length_the_same_examples_and_resumes_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tasks = [hops.example(rng, 1 + i % 4, hops.HopsOptions(roots=3, chain=8)) for i in range(96)]
    write_tasks(tmp_path / "h.jsonl", tasks)
    tokenizer = char_tokenizer(tasks)
    data = Data(seq_len=128, sources=[{"kind": "tasks", "path": str(tmp_path / "h.jsonl")}])
    plain = TaskStream(data, tokenizer, seed=3)
    bucketed = TaskStream(data.model_copy(update={"bucket": 4}), tokenizer, seed=3)

    def rows(batch: Batch) -> list[tuple[int, ...]]:
        return [tuple(i for i in ids if i != tokenizer.pad_token_id) for ids in batch.input_ids.tolist()]

    unsorted = [plain.next_batch(8) for _ in range(4)]
    sorted_ = [bucketed.next_batch(8) for _ in range(4)]
    assert sorted({r for b in unsorted for r in rows(b)}) == sorted({r for b in sorted_ for r in rows(b)})
    padding = [sum(int((b.input_ids == tokenizer.pad_token_id).sum()) for b in bs) for bs in (unsorted, sorted_)]
    assert padding[1] < padding[0] / 2, padding  # the same 32 examples, half the padding or less
    widths = [b.input_ids.shape[1] for b in sorted_]
    assert widths != sorted(widths), "the length-sorted batches are handed out in a shuffled order"
    bucketed.next_batch(8)  # one batch into the next pool: the rest of it is pending
    state = json.loads(json.dumps(bucketed.state_dict()))
    expected = [bucketed.next_batch(8) for _ in range(5)]
    resumed = TaskStream(data.model_copy(update={"bucket": 4}), tokenizer, seed=3)
    resumed.load_state_dict(state)
    for batch in expected:
        again = resumed.next_batch(8)
        assert torch.equal(batch.input_ids, again.input_ids) and torch.equal(batch.difficulty, again.difficulty)


def test_rows_longer_than_seq_len_are_refused(tmp_path: Path) -> None:
    data = task_data(tmp_path)
    stream = TaskStream(data.model_copy(update={"seq_len": 4}), char_tokenizer(TASKS), seed=0)
    with pytest.raises(MythicError, match="above data.seq_len=4"):
        stream.next_batch(3)


def test_scoring_counts_exact_matches_with_their_standard_error() -> None:
    tasks = [Task("p", "7", 1), Task("q", "8", 1), Task("r", "9", 2), Task("s", "1", 2), Task("t", "2")]
    result = score(tasks, [" 7\n", "0", "9", "9", "2"])
    acc = result["metrics"]["accuracy"]
    assert acc["value"] == pytest.approx(0.6) and acc["n"] == 5
    assert acc["stderr"] == pytest.approx((0.6 * 0.4 / 4) ** 0.5)  # √(p(1 − p)/(N − 1))
    assert result["per_difficulty"]["1"]["accuracy"]["value"] == 0.5 and set(result["per_difficulty"]) == {"1", "2"}


def single_chains(n: int, seed: int) -> list[Task]:
    """Chains without distractors ("c=4;a=c;?a"): one digit per prompt, so copying it is the whole task."""
    rng = np.random.default_rng(seed)
    tasks = []
    for i in range(n):
        d = 1 + i % 3
        names = [hops.VARIABLES[j] for j in rng.permutation(26)[:d]]
        digit = hops.DIGITS[rng.integers(10)]
        body = f"{names[0]}={digit};" + "".join(f"{names[k]}={names[k - 1]};" for k in range(1, d))
        tasks.append(Task(f"{body}?{names[-1]}", digit, d))
    return tasks


@pytest.fixture(scope="module")
def hops_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny from-scratch OpenMythos trained for 60 steps on chains of 1–3 lookups (a few seconds)."""
    root = tmp_path_factory.mktemp("hops")
    (root / "data").mkdir()
    write_tasks(root / "data" / "train.jsonl", single_chains(600, seed=0))
    write_tasks(root / "data" / "test.jsonl", single_chains(120, seed=1))
    raw = json.loads(json.dumps(HOPS_RECIPE))
    raw["data"]["sources"][0]["path"] = str(root / "data" / "train.jsonl")
    raw["out_dir"] = str(root / "run")
    torch.manual_seed(0)
    train(validate_recipe(raw))
    return root / "run", root / "data"


def test_hold_micro_batches_train_past_the_stop(tmp_path: Path) -> None:
    """With ``curriculum.hold`` the micro-batches the curriculum holds run 8 loops (past every difficulty,
    1–3) with gradient through the last 2 and are logged as such; the others run d + U{0, 1}."""
    write_tasks(tmp_path / "train.jsonl", single_chains(200, seed=0))
    raw = json.loads(json.dumps(HOPS_RECIPE))
    raw["data"]["sources"][0]["path"] = str(tmp_path / "train.jsonl")
    raw["model"]["config"]["max_loop_iters"] = 8
    hold = {"fraction": 0.5, "loops": [8, 8], "grad_loops": 2}
    raw["curriculum"] = {"kind": "difficulty", "max_loops": 8, "extra": 1, "hold": hold}
    raw |= {
        "out_dir": str(tmp_path / "run"),
        "train": {"steps": 20, "micro_batch": 8},
        "log": {"every": 1, "plot": False},
    }
    recipe = validate_recipe(raw)
    train(recipe)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 21))
    curriculum = Curriculum(recipe.curriculum, recipe.seed)
    depths = [curriculum.hold(r["step"] - 1, 0, 8, None) for r in records]
    held = [d is not None for d in depths]
    assert 4 <= sum(held) <= 16 and all(d.grad_loops == 2 for d in depths if d is not None)
    for r, h in zip(records, held, strict=True):
        per_t = {k for k in r if k.startswith("ce_T")}
        assert (per_t == {"ce_T8"} and r["T"] == 8.0) if h else (r["T"] <= 4.0 and "ce_T8" not in per_t)
        assert math.isfinite(r["loss"])


def test_chars_openmythos_trains_saves_its_tokenizer_and_learns(hops_run: tuple[Path, Path]) -> None:
    run, data = hops_run
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["ce"] < 0.6 * records[0]["ce"]
    assert all(0 < r["real_tokens"] < r["tokens"] for r in records)  # rows of 1–3 lookups: the short ones padded
    final = run / "final"
    tokenizer = load_tokenizer(final)
    assert tokenizer.get_vocab() == char_tokenizer(read_tasks(data / "train.jsonl")).get_vocab()
    assert (run / "checkpoints" / "step-0000060" / "tokenizer.json").is_file()
    model = load_any(final)
    assert model.config.vocab_size == len(tokenizer) and model.config.eos_token_id == tokenizer.eos_token_id
    results = evaluate_tasks(model, tokenizer, read_tasks(data / "test.jsonl"), loops=[1, 4])
    assert [r["label"] for r in results["rows"]] == ["T=1", "T=4"]  # a from-scratch model has no base row
    # 60 steps start to copy the prompt's digit (guessing: 1 in 10; 0.59 measured); lookups take minutes (mythic lab)
    assert max(r["metrics"]["accuracy"]["value"] for r in results["rows"]) > 0.3


def test_loop_dynamics_reports_every_loop(hops_run: tuple[Path, Path]) -> None:
    run, data = hops_run
    model, tokenizer = load_any(run / "final"), load_tokenizer(run / "final")
    tests = read_tasks(data / "test.jsonl")[:24]
    dynamics = loop_dynamics(model, tokenizer, tests, 6)
    change, rms = dynamics["change"], dynamics["rms"]
    assert set(change) == set(rms) == {"all", "1", "2", "3"}
    assert all(len(v) == 5 for v in change.values()) and all(len(v) == 6 for v in rms.values())
    # the same numbers by hand from the states the loop driver reports, for the first example
    states: list[torch.Tensor] = []
    enc = tokenizer([tests[0].prompt], return_tensors="pt")
    with torch.no_grad(), model.model.recurrence.context.observing(lambda t, h: states.append(h[:, -1])):
        model(**enc, n_loops=6, use_cache=False)
    alone = loop_dynamics(model, tokenizer, tests[:1], 6)
    h = torch.cat(states)
    expected_change = ((h[1:] - h[:-1]).norm(dim=-1) / h[:-1].norm(dim=-1)).tolist()
    assert alone["change"]["all"] == pytest.approx(expected_change, rel=1e-5)
    assert alone["rms"]["all"] == pytest.approx((h.norm(dim=-1) / h.shape[-1] ** 0.5).tolist(), rel=1e-5)


def test_cli_eval_tasks_writes_json_table_heatmap(
    hops_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run, data = hops_run
    out = tmp_path / "eval"
    args = ("eval", "tasks", run / "final", data / "test.jsonl", "--loops", "1,2", "--limit", "30", "--out", out)
    code, stdout, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    results = json.loads((out / "tasks.json").read_text())
    assert results["examples"] == 30 and [r["label"] for r in results["rows"]] == ["T=1", "T=2"]
    row = results["rows"][0]
    assert set(row["per_difficulty"]) == {"1", "2", "3"} and 0.0 <= row["metrics"]["accuracy"]["value"] <= 1.0
    predictions = [json.loads(x) for x in (out / "predictions" / "T1.jsonl").read_text().splitlines()]
    assert len(predictions) == 30
    assert sum(p["correct"] for p in predictions) / 30 == pytest.approx(row["metrics"]["accuracy"]["value"])
    assert (out / "tasks.png").is_file() and (out / "tasks-heatmap.png").is_file() and "per difficulty" in stdout


def test_cli_eval_tasks_adaptive_row_reports_its_loops_and_speed(
    hops_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run, data = hops_run
    out = tmp_path / "eval"
    args = ("eval", "tasks", run / "final", data / "test.jsonl", "--limit", "30", "--out", out)
    code, _, err = run_cli(monkeypatch, capsys, *args, "--loops", "1,2")
    assert code == 0, err
    plain = json.loads((out / "tasks.json").read_text())
    assert plain["kv_share"] is None
    args = (*args, "--force")
    code, stdout, err = run_cli(monkeypatch, capsys, *args, "--loops", "4,auto:4", "--exit", "convergence:1e-30")
    assert code == 0, err
    fixed, auto = json.loads((out / "tasks.json").read_text())["rows"]
    assert (auto["label"], auto["n_loops"], auto["max_loops"], auto["exit"]) == (
        "auto:4",
        "auto",
        4,
        "convergence:1e-30",
    )
    assert auto["metrics"] == fixed["metrics"], "an exit that never fires answers exactly like T=MAX"
    assert auto["mean_loops"] == fixed["mean_loops"] == 4.0
    assert all(d["mean_loops"] == 4.0 for d in auto["per_difficulty"].values())
    assert fixed["tokens_per_second"] > 0 and auto["tokens_per_second"] > 0
    assert (out / "predictions" / "auto-4.jsonl").is_file() and "mean loops per generated token" in stdout
    code, _, err = run_cli(monkeypatch, capsys, *args, "--loops", "auto", "--exit", "convergence:1e9")
    assert code == 0, err
    (auto,) = json.loads((out / "tasks.json").read_text())["rows"]
    assert auto["label"] == "auto:4", "auto without MAX takes the trained maximum (max_loop_iters=4)"
    assert auto["mean_loops"] == 1.0, "a criterion that always fires stops every token after one loop"
    code, _, err = run_cli(monkeypatch, capsys, *args, "--loops", "1,2", "--kv-share", "last")
    assert code == 0, err
    shared = json.loads((out / "tasks.json").read_text())
    assert shared["kv_share"] == "last"
    # with at most two loops the shared slot is the only one beyond the first: nothing changes
    assert [r["metrics"] for r in shared["rows"]] == [r["metrics"] for r in plain["rows"]]


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ('{"prompt": "a", "answer": "1"}\n', ("--loops", "auto:0"), "MAX >= 1"),
        ('{"prompt": "a", "answer": "1"}\n', ("--loops", "auto", "--exit", "kl:0"), "EPS > 0"),
        ('{"prompt": "a", "answer": "1"}\n', ("--loops", "auto", "--exit", "kl:x"), "needs a number"),
        ('{"prompt": "a", "answer": "1"}\n', ("--loops", "auto", "--exit", "slow:1"), "unknown criterion"),
        ('{"prompt": "a", "answer": "1"}\n', ("--kv-share", "all"), "--kv-share takes none or last"),
        ('{"prompt": "a", "answer": "1"}\nnot json\n', (), "line 2: not valid JSON"),
        ('{"answer": "1"}\n', (), "missing 'prompt'"),
        ('{"prompt": "a"}\n', (), "missing 'answer'"),
        ("", (), "holds no examples"),
        ('{"prompt": "a", "answer": "1", "difficulty": "x"}\n', (), "must be an integer"),
        ('{"prompt": "a", "answer": "1"}\n', ("--loops", "0"), "--loops takes"),
        ('{"prompt": "a", "answer": "1"}\n', ("--limit", "0"), "--limit must be at least 1"),
        (b'{"prompt": "caf\xe9", "answer": "1"}\n', (), "line 1: not UTF-8"),
    ],
)
def test_cli_eval_tasks_bad_input(
    hops_run: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    content: str | bytes,
    extra: tuple[str, ...],
    message: str,
) -> None:
    run, _ = hops_run
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content) if isinstance(content, bytes) else bad.write_text(content)
    out = tmp_path / "eval"
    code, _, err = run_cli(
        monkeypatch, capsys, "eval", "tasks", run / "final", tmp_path / "bad.jsonl", "--out", out, *extra
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_eval_tasks_act_exit_without_a_halting_head_is_refused_before_answering(
    hops_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run, data = hops_run
    out = tmp_path / "eval"
    args = ("eval", "tasks", run / "final", data / "test.jsonl", "--out", out, "--loops", "2,auto", "--exit", "act")
    code, stdout, err = run_cli(monkeypatch, capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1] == "error: --exit act needs a model with a halting head (OpenMythos with act: true)"
    assert "Traceback" not in err and "answering" not in stdout + err and not out.exists()


def test_retrofit_rows_include_the_base(tmp_path: Path) -> None:
    base = write_tiny_base(tmp_path / "base")
    write_corpus(tmp_path / "corpus")
    raw = tiny_recipe(base, tmp_path / "corpus", tmp_path / "run", train={"steps": 2, "micro_batch": 2})
    write_tasks(tmp_path / "t.jsonl", [Task("w1 w2", "w3", 1), Task("w4 w5", "w6", 2)])
    raw["data"] = {"seq_len": 8, "sources": [{"kind": "tasks", "path": str(tmp_path / "t.jsonl")}]}
    train(validate_recipe(raw))
    model, tokenizer = load_any(tmp_path / "run" / "final"), load_tokenizer(tmp_path / "run" / "final")
    assert tokenizer.get_vocab() == make_tokenizer().get_vocab()
    results = evaluate_tasks(model, tokenizer, read_tasks(tmp_path / "t.jsonl"), loops=[1, 3])
    assert [r["label"] for r in results["rows"]] == ["base", "T=1", "T=3"]
    assert results["difficulties"] == [1, 2]
    told = evaluate_tasks(model, tokenizer, read_tasks(tmp_path / "t.jsonl"), loops=[1, 2, "d"])
    rows = {r["label"]: r for r in told["rows"]}
    assert rows["T=d"]["predictions"] == [rows["T=1"]["predictions"][0], rows["T=2"]["predictions"][1]]
    assert rows["T=d"]["mean_loops"] == 1.5, "each example loops its difficulty"
    write_tasks(tmp_path / "u.jsonl", [Task("w1 w2", "w3", 1), Task("w4 w5", "w6", None)])
    with pytest.raises(MythicError, match="every example needs one"):
        evaluate_tasks(model, tokenizer, read_tasks(tmp_path / "u.jsonl"), loops=["d"])
    with pytest.raises(MythicError, match="is for task files"):
        parse_loops("1,d")
    assert parse_loops("1,d", told=True) == [1, "d"]


def test_recipe_rules_for_task_data(tmp_path: Path) -> None:
    raw = json.loads(json.dumps(HOPS_RECIPE))
    raw["data"]["sources"] = [{"kind": "stdlib"}]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(MythicError, match="chars is built from task files"):
        load_recipe(tmp_path / "r.yaml")
    raw["data"]["sources"] = [{"kind": "stdlib", "weight": 0.5}, {"kind": "tasks", "path": "x", "weight": 0.5}]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(MythicError, match="cannot be mixed"):
        load_recipe(tmp_path / "r.yaml")


def test_cli_generate_on_an_openmythos_checkpoint_shows_fixed_and_adaptive_rows(
    hops_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run, _ = hops_run
    args = ("generate", "--ckpt", run / "final", "--loops", "2,auto:3", "--exit", "kl:1e-30", "--max-new-tokens", "2")
    code, stdout, err = run_cli(monkeypatch, capsys, *args, "c=4;a=c;?=a")
    assert code == 0, err
    assert "T=2" in stdout and "auto:3" in stdout and "base" not in stdout, "a from-scratch model has no base row"
    assert "3.00" in stdout, "an exit that never fires uses MAX loops for every token"


@pytest.mark.slow
def test_compiled_training_and_generation_match_eager(
    hops_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run, data = hops_run
    raw = json.loads(json.dumps(HOPS_RECIPE))
    raw["data"]["sources"][0]["path"] = str(data / "train.jsonl")
    raw["train"]["steps"] = 6
    raw["log"]["every"] = 1
    losses = []
    for compiled in (False, True):
        raw["train"]["compile"] = compiled
        raw["out_dir"] = str(tmp_path / f"run-{compiled}")
        torch.manual_seed(0)
        train(validate_recipe(raw))
        records = [
            json.loads(line) for line in (tmp_path / f"run-{compiled}" / "metrics.jsonl").read_text().splitlines()
        ]
        losses.append([r["loss"] for r in records])
    assert len(losses[0]) == 6 and max(abs(a - b) for a, b in zip(*losses, strict=True)) <= 1e-4
    args = ("generate", "--ckpt", run / "final", "--loops", "1,3", "--max-new-tokens", "3")
    outputs = []
    for extra in ((), ("--compile",)):
        code, stdout, err = run_cli(monkeypatch, capsys, *args, *extra, "c=4;a=c;?=a")
        assert code == 0, err
        outputs.append(stdout)
    assert outputs[0] == outputs[1]
