"""Task files and generators: strict reading, deterministic disjoint splits, difficulty == lookups."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from mythic.errors import MythicError
from mythic.tasks import hops, induction, pointer
from mythic.tasks.baselines import score
from mythic.tasks.files import Task, read_tasks, write_tasks
from mythic.tasks.make import GENERATORS, make, parse_difficulty_range
from mythic.tasks.tokenizer import char_tokenizer


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    difficulty=st.integers(1, 8),
    roots=st.integers(2, 3),
    intermediate=st.integers(0, 8),
)
def test_hops_needs_exactly_difficulty_lookups(seed: int, difficulty: int, roots: int, intermediate: int) -> None:
    options = hops.HopsOptions(roots=roots, chain=8, intermediate=intermediate)
    task = hops.example(np.random.default_rng(seed), difficulty, options)
    assert hops.solve(task.prompt) == (task.answer, difficulty)
    body, sep, query = task.prompt.rpartition("?=")
    assert sep and query in hops.VARIABLES
    statements = body.split(";")[:-1]
    digits = [rhs for _, rhs in (s.split("=") for s in statements) if rhs in hops.DIGITS]
    assert len(digits) == roots == len(set(digits)) and task.answer in digits
    defined: set[str] = set()
    for lhs, rhs in (s.split("=") for s in statements):  # program order: every variable is assigned before use
        assert lhs not in defined and (rhs in hops.DIGITS or rhs in defined)
        defined.add(lhs)
    assert difficulty <= len(statements) <= roots * 8
    # intermediate answers: at the end of every right-side variable that takes ≤ `intermediate` lookups, its value
    expected = []
    for end in range(3, len(body), 4):  # "x=y;" statements: the right side ends at 3, 7, 11, …
        rhs = body[end - 1]
        if rhs in hops.VARIABLES:
            value, lookups = hops.solve(f"{body}?={rhs}")
            if lookups <= intermediate:
                expected.append((end, value))
    assert list(task.intermediate) == expected


def test_hops_solver_refuses_broken_prompts() -> None:
    for prompt in ("a=1;b=2;", "a=b;b=a;?=a", "a=1;a=2;?=a", "a=1;?=c", "a=1;?a"):
        with pytest.raises(MythicError):
            hops.solve(prompt)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), difficulty=st.integers(1, 12))
def test_induction_needs_exactly_difficulty_hops(seed: int, difficulty: int) -> None:
    task = induction.example(np.random.default_rng(seed), difficulty, induction.InductionOptions())
    assert induction.solve(task.prompt) == (task.answer, difficulty)
    sequence = task.prompt.partition("|")[2]
    assert all(a != b for a, b in zip(sequence, sequence[1:], strict=False))
    assert task.prompt.startswith(">" * difficulty + "|")


def test_induction_hop_by_hand() -> None:
    # from the last 'a' (position 8): previous 'a' at 3 → position 4 ('b'); previous 'b' at 1 → position 2 ('c')
    assert induction.hop_path("abcabdbca", 2) == [8, 4, 2]
    assert induction.solve(">>|abcabdbca") == ("c", 2)
    assert induction.solve(">|abcabdbca") == ("b", 1)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), difficulty=st.integers(1, 8), nodes=st.integers(9, 26))
def test_pointer_walks_exactly_difficulty_distinct_steps(seed: int, difficulty: int, nodes: int) -> None:
    task = pointer.example(np.random.default_rng(seed), difficulty, pointer.PointerOptions(nodes))
    assert pointer.solve(task.prompt) == (task.answer, difficulty)
    table, start, steps = pointer.parse(task.prompt)
    assert len(table) == nodes and steps == difficulty and set(table.values()) <= set(table)
    path = pointer.walk(table, start, steps, task.prompt)
    assert len(set(path)) == difficulty + 1, "the walk never revisits a node, so no cycle shortens it"
    assert task.prompt.endswith("?" + "+" * difficulty + start)


def test_pointer_by_hand_and_its_baselines() -> None:
    task = Task("c>a;a>d;b>c;d>b;?++a", "b", 2)
    assert pointer.solve(task.prompt) == ("b", 2)
    assert pointer.baselines(task, depth=1) == {
        "chance": 0.25,
        "successor": 0.0,  # a → d
        "frequent_target": 1 / 4,  # every node is pointed at once: a four-way tie
        "any_target": 1 / 3,  # a, b, c, d are targets; the start a is left out
        "resolve_then_guess": 1 / 2,  # one step reaches d; b and c are the targets not yet visited
    }
    assert pointer.baselines(task, depth=2)["resolve_then_guess"] == 1.0
    one = Task("a>b;b>b;c>b;?+a", "b", 1)
    assert pointer.baselines(one, depth=4) == {
        "chance": 1 / 3,
        "successor": 1.0,
        "frequent_target": 1.0,
        "any_target": 1.0,
        "resolve_then_guess": 1.0,
    }
    for prompt in ("a>b;?+", "a>b;a>c;?+a", "a>b;?+z", "ab;?+a"):
        with pytest.raises(MythicError):
            pointer.solve(prompt)


def test_hops_and_induction_baselines_by_hand() -> None:
    # chains: 3 ← f ← k ← b ← q ← w (5 variables), 7 ← x ← m (2); the query q needs 4 lookups
    task = Task("f=3;x=7;k=f;b=k;m=x;q=b;w=q;?=q", "3", 4)
    got = hops.baselines(task, depth=2)
    assert got == {
        "chance": 0.5,
        "first_digit": 1.0,
        "longest_chain": 1.0,
        "resolve_then_guess": 1.0,  # only 3's chain holds variables deeper than 2 lookups
        "resolve_then_guess_weighted": 1.0,
    }
    assert hops.baselines(Task("f=3;x=7;k=x;?=k", "7", 2), depth=1) == {
        "chance": 0.5,
        "first_digit": 0.0,
        "longest_chain": 1.0,
        "resolve_then_guess": 1.0,
        "resolve_then_guess_weighted": 1.0,
    }
    two = induction.baselines(Task(">>|abcabdbca", "c", 2), depth=1)
    assert two["chance"] == 0.25 and two["one_hop"] == 0.0  # one hop from the last a lands on b
    assert two["frequent_letter"] == 0.0  # a and b appear three times each, the answer c twice
    assert two["resolve_then_guess"] == 1 / 3  # one hop reaches b; c is one of a, c, d


def test_baselines_score_per_difficulty_and_band() -> None:
    tasks = [Task("c>a;a>d;b>c;d>b;?++a", "b", 2), Task("a>b;b>b;c>b;?+a", "b", 1)]
    scores = score(tasks, pointer.baselines, {"one": (1, 1), "both": (1, 2), "none": (5, 8)})
    assert scores["successor"]["per_difficulty"] == {"1": 1.0, "2": 0.0}
    assert scores["successor"]["bands"] == {"one": 1.0, "both": 0.5}
    assert scores["chance"]["bands"]["both"] == pytest.approx((1 / 4 + 1 / 3) / 2)
    # a heuristic takes fewer steps than the questions need: d − 1 at difficulty d, lo − 1 on a band
    walked = scores["resolve_then_guess"]
    assert walked["per_difficulty"] == {"1": 1.0, "2": 0.5}  # 2 steps: a → d walked, then b or c
    assert walked["bands"]["both"] == pytest.approx((1.0 + 1 / 3) / 2)  # nothing walked: b, c or d


def make_splits(out: Path, seed: int = 0, **kwargs: object) -> dict:
    settings_ = dict(
        seed=seed,
        train_difficulty=(1, 4),
        test_difficulty=(1, 8),
        sizes={"train": 400, "valid": 40, "test": 80},
    )
    settings_.update(kwargs)
    return make("hops", out, **settings_)


def test_make_is_deterministic_disjoint_and_balanced(tmp_path: Path) -> None:
    meta = make_splits(tmp_path / "a")
    make_splits(tmp_path / "b")
    make_splits(tmp_path / "c", seed=1)
    for split in ("train", "valid", "test"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() != (tmp_path / "c" / f"{split}.jsonl").read_bytes()
    splits = {s: read_tasks(tmp_path / "a" / f"{s}.jsonl") for s in ("train", "valid", "test")}
    prompts = {s: {t.prompt for t in tasks} for s, tasks in splits.items()}
    assert sum(len(p) for p in prompts.values()) == 520  # unique within and across splits
    assert {t.difficulty for t in splits["train"]} == {1, 2, 3, 4}
    assert [sum(t.difficulty == d for t in splits["test"]) for d in range(1, 9)] == [10] * 8
    assert all(hops.solve(t.prompt) == (t.answer, t.difficulty) for tasks in splits.values() for t in tasks)
    assert meta == json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["options"] == {"roots": 3, "chain": 8, "intermediate": 0}


def test_make_refuses_bad_requests_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(MythicError, match="unknown task generator"):
        make("nope", tmp_path / "x", seed=0, train_difficulty=(1, 1), test_difficulty=(1, 1), sizes={})
    with pytest.raises(MythicError, match="need --chain >= 9"):
        make_splits(tmp_path / "x", test_difficulty=(1, 9))
    with pytest.raises(MythicError, match="at most 26"):
        make_splits(tmp_path / "x", options=hops.HopsOptions(roots=4, chain=8))
    with pytest.raises(MythicError, match="distinct prompts"):  # 3 letters, length 4: at most 24 sequences exist
        make(
            "induction",
            tmp_path / "x",
            seed=0,
            train_difficulty=(1, 1),
            test_difficulty=(1, 1),
            sizes={"train": 40, "valid": 0, "test": 20},
            options=induction.InductionOptions(length=4, symbols=3),
        )
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())
    for text in ("0-3", "4-2", "a", "1-b"):
        with pytest.raises(MythicError):
            parse_difficulty_range(text, "--train-difficulty")
    assert parse_difficulty_range("3", "--x") == (3, 3) and parse_difficulty_range("1-12", "--x") == (1, 12)
    assert set(GENERATORS) == {"hops", "induction", "pointer"}


def test_read_tasks_refuses_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "a", "answer": "b"}\n{"prompt": "caf\xe9", "answer": "b"}\n')
    with pytest.raises(MythicError, match=r"latin1.jsonl line 2: not UTF-8 \(byte 16 of the line\)"):
        read_tasks(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "line 2: not valid JSON"),
        ('["a list"]', "line 2: expected a JSON object"),
        ('{"answer": "1"}', "line 2: missing 'prompt'"),
        ('{"prompt": "p"}', "line 2: missing 'answer'"),
        ('{"prompt": "p", "answer": 3}', "'answer' must be a string"),
        ('{"prompt": "p", "answer": "  "}', "'answer' is empty"),
        ('{"prompt": "p", "answer": "1", "difficulty": "2"}', "'difficulty' must be an integer"),
        ('{"prompt": "p", "answer": "1", "difficulty": 2.5}', "'difficulty' must be an integer"),
        ('{"prompt": "p", "answer": "1", "difficulty": true}', "'difficulty' must be an integer"),
        ('{"prompt": "pq", "answer": "1", "intermediate": [[2, "x"]]}', "'intermediate' must be a list of"),
        ('{"prompt": "pq", "answer": "1", "intermediate": [[0, "x"]]}', "'intermediate' must be a list of"),
        ('{"prompt": "pq", "answer": "1", "intermediate": [[1, ""]]}', "'intermediate' must be a list of"),
        ('{"prompt": "pq", "answer": "1", "intermediate": [1, "x"]}', "'intermediate' must be a list of"),
        ('{"prompt": "pq", "answer": "1", "intermediate": {"1": "x"}}', "'intermediate' must be a list of"),
    ],
)
def test_read_tasks_names_the_bad_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "a", "answer": "b"}\n' + line + "\n")
    with pytest.raises(MythicError, match=message):
        read_tasks(path)


def test_read_tasks_keeps_extra_fields_and_refuses_empty_files(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"prompt": "a", "answer": " b ", "source": "x"}\n\n{"prompt": "c", "answer": "d", "difficulty": 3}\n'
    )
    first, second = read_tasks(path)
    assert first == Task("a", " b ") and first.extra == {"source": "x"} and first.difficulty is None
    assert second.difficulty == 3 and first.matches("b") and first.matches(" b\n") and not first.matches("bb")
    third = Task("a=1;?=a", "1", 1, ((3, "1"),))
    write_tasks(tmp_path / "copy.jsonl", [first, second, third])
    assert read_tasks(tmp_path / "copy.jsonl") == [first, second, third]
    (tmp_path / "empty.jsonl").write_text("\n \n")
    with pytest.raises(MythicError, match="holds no examples"):
        read_tasks(tmp_path / "empty.jsonl")
    with pytest.raises(MythicError, match="not found"):
        read_tasks(tmp_path / "missing.jsonl")


def test_char_tokenizer_round_trips_and_reloads(tmp_path: Path) -> None:
    tokenizer = char_tokenizer([Task("b=a;a=7;?b", "7"), Task("x y\n", "z")])
    text = "a=7;?b"
    ids = tokenizer(text).input_ids
    assert len(ids) == len(text) and tokenizer.decode(ids) == text
    assert tokenizer.convert_ids_to_tokens(tokenizer("Q").input_ids) == ["<unk>"]
    assert (
        len(tokenizer) == 3 + len(set("b=a;7?x y\nz")) and tokenizer.eos_token_id == 1 and tokenizer.pad_token_id == 0
    )
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.get_vocab() == tokenizer.get_vocab() and again(text).input_ids == ids
    assert again.decode([*ids, again.eos_token_id], skip_special_tokens=True) == text


def test_cli_make_and_its_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "hops"
    args = ("tasks", "make", "hops", "--out", out, "--train-size", "40", "--valid-size", "12", "--test-size", "24")
    code, stdout, _ = run_cli(monkeypatch, capsys, *args)
    assert code == 0 and "train.jsonl" in stdout
    assert len(read_tasks(out / "test.jsonl")) == 24 and len(read_tasks(out / "train.jsonl")) == 40
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and "already exists" in err
    code, _, err = run_cli(monkeypatch, capsys, *args[:4], tmp_path / "i", "--intermediate", "4", *args[5:])
    assert code == 0, err
    train = read_tasks(tmp_path / "i" / "train.jsonl")
    assert sum(len(t.intermediate) for t in train) > len(train)  # several steps per program
    code, _, err = run_cli(monkeypatch, capsys, *args[:2], "pointer", "--out", tmp_path / "p", "--nodes", "10")
    assert code == 0, err
    pointers = read_tasks(tmp_path / "p" / "test.jsonl")
    assert all(pointer.solve(t.prompt) == (t.answer, t.difficulty) and not t.intermediate for t in pointers)
    assert {len(pointer.parse(t.prompt)[0]) for t in pointers} == {10}
    bad = [
        ("tasks", "make", "hops", "--out", tmp_path / "n", "--intermediate", "9"),
        ("tasks", "make", "induction", "--out", tmp_path / "n", "--intermediate", "2"),
        ("tasks", "make", "nope", "--out", tmp_path / "n"),
        ("tasks", "make", "hops", "--out", tmp_path / "n", "--length", "30"),
        ("tasks", "make", "induction", "--out", tmp_path / "n", "--roots", "2"),
        ("tasks", "make", "pointer", "--out", tmp_path / "n", "--chain", "4"),
        ("tasks", "make", "hops", "--out", tmp_path / "n", "--nodes", "4"),
        ("tasks", "make", "pointer", "--out", tmp_path / "n", "--nodes", "8"),  # 8 steps need 9 nodes
        ("tasks", "make", "hops", "--out", tmp_path / "n", "--test-difficulty", "0-3"),
        ("tasks", "make", "hops", "--out", tmp_path / "n", "--test-size", "0"),
    ]
    for command in bad:
        code, _, err = run_cli(monkeypatch, capsys, *command)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "n").exists()
