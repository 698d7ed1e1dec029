"""Data: packing with EOS between documents, chat prompt masking, mixture weights, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tiny import make_tokenizer

from mythic.errors import MythicError
from mythic.train.data import PackedStream, encode_chat, stdlib_files
from mythic.train.losses import IGNORE_INDEX
from mythic.train.recipe import Data

TOK = make_tokenizer()
EOS = TOK.eos_token_id


def ids(text: str) -> list[int]:
    return TOK(text, add_special_tokens=False)["input_ids"]


def stream(sources: list[dict], seq_len: int = 4, seed: int = 0) -> PackedStream:
    return PackedStream(Data(seq_len=seq_len, sources=sources), TOK, seed)


def test_packing_puts_eos_between_documents(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "w1 w2 w3"}) + "\n" + json.dumps({"text": "w4 w5"}) + "\n")
    s = stream([{"kind": "files", "paths": [str(tmp_path / "*.jsonl")], "format": "jsonl"}], seq_len=4)
    flat = ids("w1 w2 w3") + [EOS] + ids("w4 w5") + [EOS]
    flat = flat + flat  # the source restarts (next epoch) when exhausted
    x0, y0 = s.next_sample()
    x1, y1 = s.next_sample()
    assert x0 == flat[0:4] and y0 == flat[1:5]
    assert x1 == flat[4:8] and y1 == flat[5:9]
    assert s.readers[0].state_dict() == {"epoch": 1, "position": 1}


def test_text_parquet_and_stdlib_sources(tmp_path: Path) -> None:
    (tmp_path / "doc.txt").write_text("w7 w8 w9 w10 w11")
    pq.write_table(pa.table({"body": ["w20 w21 w22 w23 w24"]}), tmp_path / "t.parquet")
    text = stream([{"kind": "files", "paths": [str(tmp_path / "*.txt")]}])
    assert text.next_sample() == (ids("w7 w8 w9 w10"), ids("w8 w9 w10 w11"))
    par = stream([{"kind": "files", "paths": [str(tmp_path / "*.parquet")], "format": "parquet", "text_field": "body"}])
    assert par.next_sample()[0] == ids("w20 w21 w22 w23")
    files = stdlib_files()
    assert len(files) > 500 and any(p.name == "os.py" for p in files)
    assert not any("site-packages" in p.parts for p in files)
    std = stream([{"kind": "stdlib"}], seq_len=32)
    batch = std.next_batch(2)
    assert batch.input_ids.shape == (2, 32) and torch.equal(batch.input_ids[:, 1:], batch.labels[:, :-1])


def test_chat_prompt_is_masked() -> None:
    messages = [
        {"role": "user", "content": "w1 w2"},
        {"role": "assistant", "content": "w3 w4"},
        {"role": "user", "content": "w5"},
        {"role": "assistant", "content": "w6"},
    ]
    tokens, mask = encode_chat(TOK, messages)
    rendered = TOK.apply_chat_template(messages, tokenize=False)
    assert tokens == ids(rendered) + [EOS]
    targets = [t for t, m in zip(tokens, mask, strict=True) if m]
    # assistant turns are "w3 w4 </s>" and "w6 </s>" (the template closes each turn), then the EOS separator
    assert targets == ids("w3 w4 </s> w6 </s>") + [EOS]


def test_chat_records_are_masked_in_samples(tmp_path: Path) -> None:
    record = {"messages": [{"role": "user", "content": "w1"}, {"role": "assistant", "content": "w2 w3"}]}
    (tmp_path / "c.jsonl").write_text(json.dumps(record) + "\n")
    source = {"kind": "files", "paths": [str(tmp_path / "c.jsonl")], "format": "jsonl", "messages_field": "messages"}
    x, y = stream([source], seq_len=8).next_sample()
    tokens, mask = encode_chat(TOK, record["messages"])
    assert len(tokens) == 10 and x == tokens[:8]
    assert y == [t if m else IGNORE_INDEX for t, m in zip(tokens[1:9], mask[1:9], strict=True)]
    assert sum(label != IGNORE_INDEX for label in y) == 3  # w2 w3 </s> (the EOS separator is sample 2's)


def test_mixture_follows_weights(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.jsonl").write_text("".join(json.dumps({"text": "w1"}) + "\n" for _ in range(5)))
    (tmp_path / "b" / "y.jsonl").write_text("".join(json.dumps({"text": "w2"}) + "\n" for _ in range(5)))
    s = stream(
        [
            {"kind": "files", "paths": [str(tmp_path / "a" / "*")], "format": "jsonl", "weight": 0.7},
            {"kind": "files", "paths": [str(tmp_path / "b" / "*")], "format": "jsonl", "weight": 0.3},
        ],
        seq_len=100,
    )
    x, _ = s.next_sample()
    x += s.next_sample()[0]
    words = [t for t in x + s.next_sample()[0] if t != EOS]
    share = words.count(ids("w1")[0]) / len(words)
    # 150 documents (3 samples of 101 tokens, 2 per document); binomial standard error ≈ 0.037
    assert abs(share - 0.7) < 0.12
    assert s.documents == 151


def test_resume_continues_with_identical_batches(tmp_path: Path) -> None:
    for d in range(3):
        (tmp_path / f"d{d}.txt").write_text(" ".join(f"w{(d * 11 + i) % 61}" for i in range(13 + d)))
    sources = [{"kind": "files", "paths": [str(tmp_path / "*.txt")]}, {"kind": "stdlib"}]
    sources[0]["weight"], sources[1]["weight"] = 0.5, 0.5
    first = stream(sources, seq_len=8, seed=5)
    for _ in range(7):
        first.next_batch(3, rank=1, world_size=2)
    state = json.loads(json.dumps(first.state_dict()))
    expected = [first.next_batch(3, rank=1, world_size=2) for _ in range(5)]
    resumed = stream(sources, seq_len=8, seed=5)
    resumed.load_state_dict(state)
    for want in expected:
        got = resumed.next_batch(3, rank=1, world_size=2)
        assert torch.equal(got.input_ids, want.input_ids) and torch.equal(got.labels, want.labels)


def test_ranks_take_disjoint_rows_of_the_global_batch(tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_text(" ".join(f"w{i}" for i in range(60)))
    spec = [{"kind": "files", "paths": [str(tmp_path / "d.txt")]}]
    whole = stream(spec).next_batch(4)
    halves = [stream(spec).next_batch(2, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat([h.input_ids for h in halves]), whole.input_ids)


def test_hf_source_streams_a_local_dataset(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"content": f"w{i} w{i + 1}"}) + "\n" for i in range(5)))
    source = {"kind": "hf", "path": "json", "data_files": [str(tmp_path / "train.jsonl")], "text_field": "content"}
    s = stream([source], seq_len=6)
    x, _ = s.next_sample()
    assert x == ids("w0 w1") + [EOS] + ids("w1 w2") + [EOS]
    state = s.state_dict()
    want = [s.next_sample() for _ in range(3)]
    again = stream([source], seq_len=6)
    again.load_state_dict(state)
    assert [again.next_sample() for _ in range(3)] == want


def test_bad_sources_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(MythicError, match=r"^data.sources.0: no files found$"):
        stream([{"kind": "files", "paths": [str(tmp_path / "none*.txt")]}])
    (tmp_path / "r.jsonl").write_text(json.dumps({"body": "w1"}) + "\n")
    bad = stream([{"kind": "files", "paths": [str(tmp_path / "r.jsonl")], "format": "jsonl"}])
    with pytest.raises(MythicError, match=r"data.sources.0: a record has no field 'text'"):
        bad.next_sample()
