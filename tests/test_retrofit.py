"""The retrofit wrapper on tiny random bases of every family: identity, cache, generate, surgery."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from tiny import FAMILIES, tiny_base
from transformers import AutoConfig, AutoModelForCausalLM

from mythic.errors import MythicError
from mythic.models.retrofit import RetrofitForCausalLM


def wrap(family: str, dtype: torch.dtype = torch.float32, perturb: bool = False, **settings):
    base = tiny_base(family, dtype)
    reference = copy.deepcopy(base)
    settings = {"block_start": 1, "block_end": 3, "max_loops": 4, **settings}
    model = RetrofitForCausalLM.from_base(base, **settings).eval()
    if perturb:
        torch.manual_seed(1)
        with torch.no_grad():
            for _, p in model.recurrence_parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return reference, model


def ids(batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_wrapper_at_one_loop_is_the_base_bit_for_bit(family: str, dtype: torch.dtype) -> None:
    base, model = wrap(family, dtype)
    x = ids()
    with torch.no_grad():
        expected = base(x).logits
        assert (model(x, n_loops=1).logits - expected).abs().max().item() == 0.0
        deeper = model(x, n_loops=3).logits
    assert (deeper - expected).abs().max().item() > 1e-3, "more loops must change the output"
    gen_base = base.generate(x, max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    gen = model.generate(
        x, max_new_tokens=6, do_sample=False, n_loops=1, output_scores=True, return_dict_in_generate=True
    )
    assert torch.equal(gen.sequences, gen_base.sequences)
    assert max((a - b).abs().max().item() for a, b in zip(gen.scores, gen_base.scores, strict=True)) == 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_base_mode_switches_all_recurrence_and_lora_off(family: str) -> None:
    base, model = wrap(family, perturb=True)
    x = ids()
    with torch.no_grad(), model.base_mode():
        assert (model(x, n_loops=4).logits - base(x).logits).abs().max().item() == 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_with_cache_equals_without(family: str) -> None:
    _, model = wrap(family, perturb=True)
    x = ids(batch=1)
    cached = model.generate(x, max_new_tokens=8, do_sample=False, n_loops=4)
    uncached = model.generate(x, max_new_tokens=8, do_sample=False, n_loops=4, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("family", ["llama", "deepseek_v2", "gemma4_text"])
def test_batched_generation_with_left_padding_matches_each_prompt_alone(family: str) -> None:
    _, model = wrap(family, perturb=True)
    long, short = ids(1, 10, seed=1), ids(1, 6, seed=2)
    pad = 0
    batch = torch.full((2, 10), pad)
    batch[0], batch[1, 4:] = long[0], short[0]
    mask = (torch.arange(10) >= torch.tensor([[0], [4]])).long()
    out = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, n_loops=2, pad_token_id=pad)
    alone_long = model.generate(long, max_new_tokens=6, do_sample=False, n_loops=2, pad_token_id=pad)
    alone_short = model.generate(short, max_new_tokens=6, do_sample=False, n_loops=2, pad_token_id=pad)
    assert out[0, 10:].tolist() == alone_long[0, 10:].tolist()
    assert out[1, 10:].tolist() == alone_short[0, 6:].tolist()


def test_per_sequence_loop_counts_match_single_sequence_runs() -> None:
    _, model = wrap("llama", perturb=True)
    x = ids(batch=3)
    depths = torch.tensor([1, 4, 2])
    with torch.no_grad():
        batched = model(x, n_loops=depths).logits
        for i, d in enumerate(depths.tolist()):
            alone = model(x[i : i + 1], n_loops=d).logits
            assert (batched[i] - alone[0]).abs().max().item() <= 1e-6


def test_loop_counts_beyond_the_trained_maximum_reuse_the_last_loop() -> None:
    _, model = wrap("llama", perturb=True, max_loops=2)
    x = ids()
    with torch.no_grad():
        logits = model(x, n_loops=6).logits
    assert torch.isfinite(logits).all()
    rule = model.recurrence.rule
    assert torch.equal(rule.scale(5), rule.scale(1))


def test_depth_lora_of_one_model_is_not_seen_by_another_in_another_thread() -> None:
    _, a = wrap("llama", perturb=True)
    _, b = wrap("llama", perturb=True)
    x = ids()
    with torch.no_grad():
        expected_a, expected_b = a(x, n_loops=3).logits, b(x, n_loops=2).logits
    results: dict[str, torch.Tensor] = {}

    def run(name: str, model: RetrofitForCausalLM, n: int) -> None:
        with torch.no_grad():
            for _ in range(3):
                results[name] = model(x, n_loops=n).logits

    threads = [threading.Thread(target=run, args=("a", a, 3)), threading.Thread(target=run, args=("b", b, 2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert torch.equal(results["a"], expected_a) and torch.equal(results["b"], expected_b)


def test_truncated_backprop_through_the_wrapper() -> None:
    _, model = wrap("llama", perturb=True)
    with torch.no_grad():
        model.recurrence.rule.scale.set(0.3)
    model.train()
    x = ids()
    grads = []
    for checkpoint in (False, True):
        model.zero_grad()
        out = model(x, labels=x, n_loops=4, grad_loops=2, checkpoint_loops=checkpoint)
        out.loss.backward()
        grads.append(model.recurrence.rule.scale.logit.grad.clone())
    assert torch.count_nonzero(grads[0][:2]) == 0 and torch.count_nonzero(grads[0][2:]) == 2
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("rule", ["concat", "parcae"])
def test_other_update_rules_run_cached_and_concat_is_identity(rule: str) -> None:
    base, model = wrap("qwen2", rule=rule)
    x = ids()
    with torch.no_grad():
        diff = (model(x, n_loops=1).logits - base(x).logits).abs().max().item()
        assert diff == 0.0 if rule == "concat" else diff > 0.0
        full = model(x, n_loops=3, use_cache=False).logits
        cache = model.new_cache()
        first = model(x[:, :8], n_loops=3, cache=cache, use_cache=True).logits
        rest = [model(x[:, i : i + 1], n_loops=3, cache=cache, use_cache=True).logits for i in range(8, 12)]
    assert (torch.cat([first, *rest], 1) - full).abs().max().item() <= 1e-5


def test_retrofit_paper_surgery_drops_layers_and_keeps_the_cache_consistent() -> None:
    base = tiny_base("llama")
    reference = copy.deepcopy(base)
    model = RetrofitForCausalLM.from_base(base, block_start=3, block_end=5, drop=[1, 3], max_loops=4).eval()
    assert model.base.config.num_hidden_layers == 4
    assert model.config.text_config.num_hidden_layers == 6, "the config keeps the base as it was"
    del reference.model.layers[1:3]
    for i, layer in enumerate(reference.model.layers):
        layer.self_attn.layer_idx = i
    reference.config.num_hidden_layers = 4
    x = ids()
    with torch.no_grad():
        assert (model(x, n_loops=1).logits - reference(x).logits).abs().max().item() == 0.0
        full = model(x, n_loops=3, use_cache=False).logits
        cache = model.new_cache()
        pieces = [model(x[:, :6], n_loops=3, cache=cache, use_cache=True).logits]
        pieces += [model(x[:, i : i + 1], n_loops=3, cache=cache, use_cache=True).logits for i in range(6, 12)]
    assert (torch.cat(pieces, 1) - full).abs().max().item() <= 1e-5


def test_full_save_pretrained_round_trip(tmp_path) -> None:
    _, model = wrap("deepseek_v2", perturb=True)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is RetrofitForCausalLM
    x = ids()
    with torch.no_grad():
        assert (loaded(x, n_loops=3).logits - model(x, n_loops=3).logits).abs().max().item() == 0.0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"block_start": 7, "block_end": 8}, "block start 7 is out of range"),
        ({"block_start": 3, "block_end": 3}, "must be greater than block start"),
        ({"block_start": 3, "block_end": 9}, "block end 9 is out of range"),
        ({"rule": "nope"}, "unknown update rule 'nope'"),
        ({"block_start": 3, "block_end": 5, "drop": [3, 4]}, "dropped layers 3:4"),
    ],
)
def test_impossible_surgery_is_a_one_line_error(settings: dict, message: str) -> None:
    with pytest.raises(MythicError, match=message):
        RetrofitForCausalLM.from_base(tiny_base("llama"), **settings)


def test_gemma4_block_may_not_straddle_kv_sharing_and_unsupported_arch_is_named() -> None:
    with pytest.raises(MythicError, match="straddles the KV-sharing start at layer 4"):
        RetrofitForCausalLM.from_base(tiny_base("gemma4_text"), block_start=3, block_end=5)
    gpt2 = AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", n_layer=2, n_embd=32, n_head=2))
    with pytest.raises(MythicError, match="unsupported architecture 'gpt2'"):
        RetrofitForCausalLM.from_base(gpt2, block_start=0, block_end=1)


def test_full_save_pretrained_loads_strictly(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    _, model = wrap("llama", perturb=True)
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    dropped = next(k for k in tensors if k.startswith("recurrence."))
    tensors.pop(dropped)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MythicError, match="does not match its config: missing keys"):
        RetrofitForCausalLM.from_pretrained(tmp_path)


def test_the_recurrence_is_built_where_the_base_lives_and_the_base_is_not_reinitialised() -> None:
    with torch.device("meta"):
        meta = tiny_base("llama")
    wrapped = RetrofitForCausalLM.from_base(meta, block_start=1, block_end=3, max_loops=2)
    assert {p.device.type for _, p in wrapped.recurrence_parameters()} == {"meta"}
    base = tiny_base("llama")
    fresh = torch.nn.Linear(64, 64, bias=False)  # a module the base's own init never flagged (e.g. swapped in)
    torch.nn.init.constant_(fresh.weight, 0.125)
    base.model.layers[0].mlp.gate_proj = torch.nn.Linear(64, 96, bias=False)
    base.model.layers[0].self_attn.o_proj = fresh
    before = [(p, p.clone()) for p in base.parameters()]
    RetrofitForCausalLM.from_base(base, block_start=1, block_end=3, max_loops=2)
    assert all(torch.equal(p, saved) for p, saved in before)
    assert float(fresh.weight.min()) == float(fresh.weight.max()) == 0.125
