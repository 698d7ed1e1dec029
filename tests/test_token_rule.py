"""The token update rule: the whole stack looped, each read position fed its own soft prediction back.

Checked against the formula written out on the base (``reference``), between the training forward (a
labelled-position mask) and token-by-token generation with a cache, and against the probe it came from
(``benchmarks/token_loop_probe.py``, slow: the embedded SmolLM2-135M)."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_train_helpers import tiny_recipe
from tiny import tiny_base, write_tiny_base
from transformers import AutoModelForCausalLM

from mythic.errors import MythicError
from mythic.eval.exact_match import evaluate_tasks
from mythic.loading import load_any, load_tokenizer
from mythic.models.retrofit import RetrofitForCausalLM
from mythic.recurrence.depth_head import DepthHead
from mythic.recurrence.exit import AdaptiveDepth, parse_exit
from mythic.recurrence.rules import last_run
from mythic.tasks.files import Task, read_tasks, write_tasks
from mythic.train.depth import first_states, sample_by_difficulty, trained_loops
from mythic.train.recipe import validate_recipe
from mythic.train.trainer import train

LAYERS = 6  # tiny_base's layer count


def wrap(family: str = "llama", gate: float = 0.7, **settings) -> tuple[torch.nn.Module, RetrofitForCausalLM]:
    base = tiny_base(family)
    reference = copy.deepcopy(base).eval()
    settings = {"block_start": 0, "block_end": LAYERS, "max_loops": 8, "rule": "token", "lora_rank": 0, **settings}
    model = RetrofitForCausalLM.from_base(base, **settings).eval()
    with torch.no_grad():
        model.recurrence.rule.gate.fill_(gate)
    return reference, model


def ids(batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def reference(base: torch.nn.Module, x: torch.Tensor, n: int, gate: float) -> torch.Tensor:
    """(n, B, V): the formula on the plain base — the prompt but its last token cached once, then n passes of
    the last position, each fed (1 − g)·E[last] + g·softmax(logits)·E."""
    from transformers import DynamicCache

    embedding = base.get_input_embeddings().weight
    cache = DynamicCache(config=base.config)
    base(x[:, :-1], cache=cache, use_cache=True)
    e = embedding[x[:, -1]]
    g = torch.sigmoid(torch.tensor(gate))
    inputs, out = e, []
    for _ in range(n):
        logits = base(inputs_embeds=inputs[:, None], cache=cache, use_cache=True).logits[:, -1]
        cache.crop(-1)
        out.append(logits)
        inputs = (1 - g) * e + g * torch.softmax(logits, -1) @ embedding
    return torch.stack(out)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3_moe", "deepseek_v2"])
def test_one_pass_is_the_base_and_each_pass_is_the_formula(family: str) -> None:
    base, model = wrap(family)
    x = ids()
    expected = reference(base, x, 4, 0.7)
    with torch.no_grad():
        assert (model(x, n_loops=1).logits - base(x).logits).abs().max().item() == 0.0
        for t in range(1, 5):
            got = model(x, n_loops=t, logits_to_keep=1).logits[:, -1]
            assert (got - expected[t - 1]).abs().max().item() <= 1e-5, f"pass {t}"
    assert (expected[3] - expected[0]).abs().max().item() > 1e-3, "the passes must change the prediction"


def test_training_forward_on_labelled_positions_equals_generating_them_one_by_one() -> None:
    _, model = wrap()
    x = ids(batch=2, length=12)
    keep = torch.zeros_like(x, dtype=torch.bool)
    keep[:, 8:11] = True  # the prompt's last token (7 + 1) and the two answer tokens after it
    with torch.no_grad():
        trained = model(x, n_loops=3, logits_to_keep=keep).logits  # (N, V), row-major over keep
        cache = model.new_cache()
        pieces = [model(x[:, :9], n_loops=3, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]]
        pieces += [model(x[:, i : i + 1], n_loops=3, cache=cache, use_cache=True).logits[:, -1] for i in (9, 10)]
    stepped = torch.stack(pieces, 1).flatten(0, 1)
    assert (trained - stepped).abs().max().item() <= 1e-5


def test_read_positions_before_the_answer_run_are_read_at_their_first_pass() -> None:
    """An intermediate answer inside the prompt is context to generation: training reads it at pass 1, and
    the answer's passes are those of a forward that does not read it."""
    _, model = wrap()
    x = ids(batch=2, length=12)
    answer = torch.zeros_like(x, dtype=torch.bool)
    answer[:, 8:11] = True
    keep = answer.clone()
    keep[:, [3, 6]] = True  # intermediate answers inside the prompt
    keep[1, 5] = True
    with torch.no_grad():
        both = model(x, n_loops=4, logits_to_keep=keep).logits
        alone = model(x, n_loops=4, logits_to_keep=answer).logits
        first = model(x, n_loops=1).logits
    at_answer = answer[keep].nonzero()[:, 0]
    inside = (~answer[keep]).nonzero()[:, 0]
    assert (both[at_answer] - alone).abs().max().item() <= 1e-5
    assert (both[inside] - first[keep & ~answer]).abs().max().item() <= 1e-5
    assert (alone - first[answer]).abs().max().item() > 1e-3, "the answer run must loop"


def test_last_run_keeps_each_rows_last_run_of_read_positions() -> None:
    mask = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 0, 0, 1, 1]])
    expected = [[0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]]
    assert last_run(mask.bool()).int().tolist() == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=9, max_size=9), min_size=1, max_size=4))
def test_last_run_is_the_rows_last_maximal_run(rows: list[list[bool]]) -> None:
    got = last_run(torch.tensor(rows)).tolist()
    for row, kept in zip(rows, got, strict=True):
        text = "".join("1" if b else "0" for b in row)
        end = text.rfind("1") + 1
        start = text.rfind("0", 0, end) + 1
        assert kept == [end > 0 and start <= i < end for i in range(len(row))]


def test_generation_is_one_forward_reading_the_generated_positions_and_depths_per_sequence_equal_each_alone() -> None:
    _, model = wrap(gate=1.5)
    x = ids(batch=2)
    out = model.generate(x, max_new_tokens=6, do_sample=False, n_loops=3)
    read = torch.zeros_like(out[:, :-1], dtype=torch.bool)
    read[:, x.shape[1] - 1 :] = True  # the prompt's last token and every generated one but the newest
    with torch.no_grad():
        logits = model(out[:, :-1], n_loops=3, logits_to_keep=read).logits.view(2, 6, -1)
    assert torch.equal(logits.argmax(-1), out[:, x.shape[1] :])
    batch = ids(batch=3)
    keep = torch.zeros_like(batch, dtype=torch.bool)
    keep[:, -2:] = True
    depths = torch.tensor([1, 4, 2])
    with torch.no_grad():
        together = model(batch, n_loops=depths, logits_to_keep=keep).logits.view(3, 2, -1)
        for i, d in enumerate(depths.tolist()):
            alone = model(batch[i : i + 1], n_loops=d, logits_to_keep=keep[i : i + 1]).logits
            assert (together[i] - alone).abs().max().item() <= 1e-5
    generated = model.generate(batch, max_new_tokens=4, do_sample=False, n_loops=depths)
    for i, d in enumerate(depths.tolist()):
        assert torch.equal(
            generated[i], model.generate(batch[i : i + 1], max_new_tokens=4, do_sample=False, n_loops=d)[0]
        )


def test_the_gate_learns_and_context_positions_do_not_move() -> None:
    _, model = wrap()
    x = ids()
    keep = torch.zeros_like(x, dtype=torch.bool)
    keep[:, -1] = True
    model.train()
    model(x, n_loops=3, logits_to_keep=keep).logits.logsumexp(-1).sum().backward()
    assert model.recurrence.rule.gate.grad is not None and model.recurrence.rule.gate.grad.abs().item() > 0
    seen: dict[int, torch.Tensor] = {}
    with torch.no_grad(), model.recurrence.context.observing(lambda t, h: seen.__setitem__(t, h)):
        model(x, n_loops=3, logits_to_keep=keep)
    assert (seen[3][:, :-1] - seen[1][:, :-1]).abs().max().item() <= 1e-5, "the context stays at its first pass"
    assert (seen[3][:, -1] - seen[1][:, -1]).abs().max().item() > 1e-3


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"block_start": 1}, "loops the whole stack: block_start 0, block_end 6"),
        ({"block_end": 5}, "loops the whole stack"),
        ({"lora_rank": 8}, "set lora_rank 0"),
        ({"loop_embedding": True}, "loop_embedding false"),
    ],
)
def test_token_rule_settings_it_cannot_run_are_one_line_errors(settings: dict, message: str) -> None:
    with pytest.raises(MythicError, match=message):
        wrap(**settings)


@pytest.mark.slow
def test_the_library_computes_the_probe_passes(smollm2_dir: Path) -> None:
    path = Path(__file__).parents[1] / "benchmarks" / "token_loop_probe.py"
    spec = importlib.util.spec_from_file_location("token_loop_probe", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    torch.manual_seed(0)
    loop = probe.TokenLoop(str(smollm2_dir), loop_embedding=False)
    with torch.no_grad():
        loop.gate.fill_(1.2)
        for name, p in loop.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    loop.model.eval()
    prompts = ["a>b; b>c; c>a; ++a=", "x>y; y>x; +++y="]
    with torch.no_grad():
        expected = loop.passes(prompts, 4)[0]
        merged = copy.deepcopy(loop.model).merge_and_unload()
        layers = merged.config.num_hidden_layers
        model = RetrofitForCausalLM.from_base(
            merged, block_start=0, block_end=layers, max_loops=8, rule="token", lora_rank=0
        ).eval()
        model.recurrence.rule.gate.fill_(1.2)
        ids, mask, positions = loop.encode(prompts)
        for t in range(1, 5):
            got = model(ids, attention_mask=mask, position_ids=positions, n_loops=t, logits_to_keep=1).logits[:, -1]
            assert (got - expected[t - 1]).abs().max().item() <= 2e-4, f"pass {t}"


def test_a_fitted_depth_head_names_the_counts_it_was_fitted_on() -> None:
    torch.manual_seed(0)
    counts = torch.randint(1, 5, (400,))
    states = torch.randn(400, 16) + 8.0 * torch.nn.functional.one_hot(counts, 16).float()
    head = DepthHead(16, max_loops=8)
    assert not head.fitted
    assert head.fit(states, counts) == 1.0 and head.fitted
    fresh = torch.randn(50, 16) + 8.0 * torch.nn.functional.one_hot(torch.full((50,), 3), 16).float()
    assert (head(fresh) == 3).float().mean().item() >= 0.9


def test_the_depth_exit_loops_each_token_as_often_as_its_head_says() -> None:
    _, model = wrap(gate=1.5, depth_head=True)
    x = ids(batch=2)
    with pytest.raises(MythicError, match="needs a model with a fitted depth head"):
        model.generate(x, max_new_tokens=2, do_sample=False, n_loops=AdaptiveDepth(8, "depth", None))
    head = model.recurrence.depth_head
    with torch.no_grad():
        head.weight.fill_(1e-6)
        head.bias.copy_(torch.tensor([0, 0, 5.0, 0, 0, 0, 0, 0]))  # T̂ = 3 everywhere
    with model.recurrence.context.metering() as used:
        adaptive = model.generate(x, max_new_tokens=4, do_sample=False, n_loops=AdaptiveDepth(8, "depth", None))
    fixed = model.generate(x, max_new_tokens=4, do_sample=False, n_loops=3)
    assert torch.equal(adaptive, fixed)
    assert all(bool((u == 3).all()) for u in used), "every read position ran its head's three passes"
    with pytest.raises(MythicError, match="takes no EPS"):
        parse_exit("depth:0.1")


def test_the_depth_head_is_fitted_on_the_positions_that_loop_not_on_intermediate_answers(tmp_path: Path) -> None:
    _, model = wrap()
    tokenizer = load_tokenizer(write_tiny_base(tmp_path / "base"))
    plain = [Task(f"w{i} w{i + 1} w{i + 2} w{i + 3}", f"w{i + 4}", 1 + i % 3) for i in range(6)]
    marked = [Task(t.prompt, t.answer, t.difficulty, ((len(t.prompt.split()[0]), "w9"),)) for t in plain]
    states, owners = first_states(model, tokenizer, plain, batch=4)
    with_intermediate, marked_owners = first_states(model, tokenizer, marked, batch=4)
    answer = [len(tokenizer(t.answer, add_special_tokens=False).input_ids) + 1 for t in plain]
    assert owners.tolist() == marked_owners.tolist() == [i for i, n in enumerate(answer) for _ in range(n)]
    assert (states - with_intermediate).abs().max().item() <= 1e-5


def test_training_fits_the_depth_head_and_the_checkpoint_keeps_it(tmp_path: Path) -> None:
    base = write_tiny_base(tmp_path / "base")
    rows = [Task(f"w{i} w{i + 1} w{i + 2}", f"w{i + 3}", 1 + i % 3) for i in range(30)]
    write_tasks(tmp_path / "t.jsonl", rows)
    raw = tiny_recipe(base, tmp_path, tmp_path / "run", train={"steps": 3, "micro_batch": 4, "depth_examples": 5})
    raw["model"]["surgery"] = {"block_start": 0, "block_end": 4, "max_loops": 4, "rule": "token", "lora_rank": 0}
    raw["model"]["surgery"]["depth_head"] = True
    raw["data"] = {"seq_len": 16, "sources": [{"kind": "tasks", "path": str(tmp_path / "t.jsonl")}]}
    raw["curriculum"] = {"kind": "difficulty", "max_loops": 4}
    raw["loss"] = {}
    train(validate_recipe(raw))
    record = json.loads((tmp_path / "run" / "depth_head.json").read_text())
    assert (
        record["examples"] == 15
        and record["states"] > 15
        and record["difficulties"] == [1, 2, 3]
        and 0.0 <= record["right_on_fitted"] <= 1
    )
    model = load_any(tmp_path / "run" / "final")
    assert model.recurrence.depth_head.fitted and not model.recurrence.depth_head.weight.requires_grad
    tokenizer = load_tokenizer(tmp_path / "run" / "final")
    adaptive = [AdaptiveDepth(4, "depth", None)]
    result = evaluate_tasks(model, tokenizer, read_tasks(tmp_path / "t.jsonl")[:6], loops=adaptive)
    auto = result["rows"][-1]
    assert 1.0 <= auto["answer_loops"] <= 4.0, "the answer's loops are the head's count"
    prompt = sum(len(tokenizer(t.prompt).input_ids) for t in read_tasks(tmp_path / "t.jsonl")[:6]) / 6
    expected = prompt - 1 + auto["answer_loops"]
    assert auto["prompt_token_loops"] == pytest.approx(expected, abs=1e-3), "only the last prompt token loops"


def test_a_token_rule_model_with_its_depth_head_round_trips_through_save_pretrained(tmp_path: Path) -> None:
    _, model = wrap(gate=1.1, depth_head=True)
    with torch.no_grad():
        model.recurrence.depth_head.bias.copy_(torch.tensor([0, 4.0, 0, 0, 0, 0, 0, 0]))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = ids()
    auto = AdaptiveDepth(8, "depth", None)
    with torch.no_grad():
        assert torch.equal(loaded(x, n_loops=3, logits_to_keep=1).logits, model(x, n_loops=3, logits_to_keep=1).logits)
        assert torch.equal(
            loaded(x, n_loops=auto, logits_to_keep=1).logits, model(x, n_loops=2, logits_to_keep=1).logits
        )


def test_the_fit_draws_each_difficulty_alike_and_takes_an_example_without_one_as_one_loop() -> None:
    rows = [Task(f"p{i}", "a", [None, 1, 2][i % 3]) for i in range(30)]
    chosen = sample_by_difficulty(rows, per_difficulty=4, seed=0)
    assert [trained_loops(t) for t in chosen] == [1] * 4 + [2] * 4
    assert chosen == sample_by_difficulty(rows, per_difficulty=4, seed=0), "drawn with the seed"
