"""``mythic sanity`` on tiny bases: memory estimate and refusal, identity, the repeat probe, 4-bit on the CPU, CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from tiny import save_tiny_base
from transformers import AutoConfig

from mythic.errors import MythicError
from mythic.loading import load_tokenizer
from mythic.models.families import decoder_layers
from mythic.quant import estimate_memory, fix_cpu_packing, load_base, quantized_tensor_bytes, unquantized_parameters
from mythic.sanity import choose_candidates, default_candidates, heldout_sample, parse_candidates, sanity


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sanity") / "tiny-llama"
    save_tiny_base(folder, "llama")
    return folder


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sanity") / "tiny-deepseek"
    save_tiny_base(folder, "deepseek_v2")
    return folder


def test_candidate_lists() -> None:
    assert parse_candidates("8,10,4:23") == [(8, 9), (10, 11), (4, 23)]
    assert default_candidates(27) == [(8, 9), (11, 12), (14, 15), (16, 17)]
    assert default_candidates(30) == [(9, 10), (12, 13), (15, 16), (18, 19)]
    config = AutoConfig.for_model("llama", num_hidden_layers=6)
    assert choose_candidates(config, None, True) == ([(i, i + 1) for i in range(6)], [])
    with pytest.raises(MythicError, match="--layers takes layers"):
        parse_candidates("1,x")
    with pytest.raises(MythicError, match="block start 9 is out of range"):
        choose_candidates(config, "9", False)
    with pytest.raises(MythicError, match="either --layers or --scan"):
        choose_candidates(config, "1", True)


def test_estimate_equals_the_loaded_footprint_and_4bit_is_within_5_percent(moe_dir: Path, llama_dir: Path) -> None:
    for folder in (llama_dir, moe_dir):
        config = AutoConfig.from_pretrained(folder)
        estimate = estimate_memory(config, quantize=False, dtype=torch.float32, device="cpu", rows=1, seq_len=2)
        model, _, _ = load_base(folder, quantize=False, dtype=torch.float32, device="cpu")
        assert estimate.weights == model.get_memory_footprint()
        assert estimate.parameters == sum(p.numel() for p in model.parameters())
        assert estimate.activations == 1 * 2 * (12 * config.vocab_size + 16 * config.hidden_size * 4)

    config = AutoConfig.from_pretrained(moe_dir)
    estimate = estimate_memory(config, quantize=True, dtype=torch.float32, device="cpu", rows=1, seq_len=2)
    model, _, cubes = load_base(moe_dir, quantize=True, dtype=torch.float32, device="cpu")
    state = model.state_dict()
    actual = sum(t.numel() * t.element_size() for t in state.values())
    actual += sum(b.numel() * b.element_size() for name, b in model.named_buffers() if name not in state)
    assert abs(estimate.weights - actual) / actual < 0.05
    fp = load_base(moe_dir, quantize=False, dtype=torch.float32, device="cpu")[0]
    cube_values = sum(p.numel() for p in fp.parameters() if p.ndim == 3)
    linear_values = sum(
        m.weight.numel() for n, m in fp.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"
    )
    assert estimate.quantized_parameters == cube_values + linear_values
    assert cubes == sum(1 for p in fp.parameters() if p.ndim == 3) == 10
    assert quantized_tensor_bytes(64 * 64) == 2048 + 64 + 4 + 1092


def test_refuses_before_loading_when_the_base_does_not_fit(llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the base must not be loaded")

    monkeypatch.setattr("mythic.sanity.load_base", never)
    monkeypatch.setattr("mythic.quant.available_memory", lambda device: (10_000, 10_000))
    with pytest.raises(MythicError, match=r"needs about 0\.00 GB on cpu .* only 0\.00 GB available RAM; try --4bit"):
        sanity(llama_dir, rows=1, seq_len=8)
    monkeypatch.setattr("mythic.quant.available_memory", lambda device: (10**12, 10_000))
    with pytest.raises(MythicError, match=r"loading the 4-bit base needs about .* GB of RAM"):
        sanity(llama_dir, quantize=True, rows=1, seq_len=8)


def test_sanity_report_identity_probe_and_recommendation(llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    report = sanity(llama_dir, layers="1,2,1:3", rows=2, seq_len=32, max_new_tokens=4, out=out)
    assert [c.block for c in report.candidates] == [(1, 2), (2, 3), (1, 3)]
    for c in report.candidates:
        assert c.identity_max_abs_diff == 0.0
        assert c.loss[1] == report.base_loss, "the probe wrapper at T=1 is the base"
        assert c.loss[2] != c.loss[1] and c.loss[4] != c.loss[2]
    best = min(report.candidates, key=lambda c: c.loss[4])
    assert report.recommended == best.block
    assert report.generation["new_tokens"] == 4
    saved = json.loads(out.read_text())
    assert saved["recommended"] == list(best.block)
    assert saved["candidates"][0]["loss"]["4"] == report.candidates[0].loss[4]

    # T=2 of the probe is the base with that layer applied twice, and the norm growth is ‖layer out‖/‖in‖.
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    sample, _ = heldout_sample(load_tokenizer(llama_dir), 2, 32)
    norms = []
    layer = decoder_layers(base)[2]
    hook = layer.register_forward_hook(
        lambda m, args, kwargs, out: norms.append(float(out.norm(dim=-1).mean() / args[0].norm(dim=-1).mean())),
        with_kwargs=True,
    )
    with torch.no_grad():
        base(sample)
    hook.remove()
    assert report.candidates[1].norm_growth[1] == pytest.approx(norms[0], rel=1e-6)
    twice = copy.deepcopy(base)
    layers = decoder_layers(twice)
    layers.insert(3, layers[2])
    twice.config.num_hidden_layers = 7
    with torch.no_grad():
        loss = float(twice(sample, labels=sample, use_cache=False).loss)
    assert abs(loss - report.candidates[1].loss[2]) < 1e-5


def test_4bit_on_cpu_quantises_experts_and_avoids_the_packed_kernel_trap(moe_dir: Path) -> None:
    import bitsandbytes as bnb

    report = sanity(moe_dir, quantize=True, layers="2", rows=1, seq_len=16, max_new_tokens=2)
    assert report.candidates[0].identity_max_abs_diff == 0.0
    assert report.quantized_modules == 42 + 10, "Linear4bit modules + 3-D expert tensors"
    assert "model.layers.0.self_attn.kv_a_proj_with_mqa" in report.generic_cpu_path, "out_features 40 % 32 != 0"
    reasons = {g["name"]: g["why"] for g in report.unquantized}
    assert reasons["lm_head.weight"].startswith("output head")
    assert reasons["model.layers.*.mlp.gate.weight"] == "2-D parameter outside nn.Linear"
    assert not any("experts" in name for name in reasons)

    model, generic, _ = load_base(moe_dir, quantize=True, dtype=torch.float32, device="cpu")
    fp = load_base(moe_dir, quantize=False, dtype=torch.float32, device="cpu")[0]
    quantised = model.model.layers[1].mlp.experts.gate_up_proj.float()
    original = fp.model.layers[1].mlp.experts.gate_up_proj
    assert (quantised - original).norm() / original.norm() < 0.12, "nf4 keeps ~10 % relative error"
    assert fix_cpu_packing(model) == generic
    if not bnb.functional.has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never takes its packed kernel")
    for name in generic:
        model.get_submodule(name).support_avx512bf16_for_cpu = True
    with torch.no_grad(), pytest.raises(AssertionError, match="N must be divisible by block_n"):
        model(torch.tensor([[1, 2, 3]]))


def test_unquantized_parameters_of_a_4bit_llama_name_the_head_and_embedding(llama_dir: Path) -> None:
    model, _, cubes = load_base(llama_dir, quantize=True, dtype=torch.float32, device="cpu")
    groups = {g["name"]: g for g in unquantized_parameters(model)}
    assert cubes == 0
    assert groups["model.embed_tokens.weight"]["values"] == 128 * 64
    assert groups["model.layers.*.input_layernorm.weight"]["tensors"] == 6


def test_cli_prints_the_tables_writes_json_and_rejects_bad_input_in_one_line(
    llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s.json"
    args = ("sanity", "--base", llama_dir, "--rows", 1, "--seq-len", 16, "--max-new-tokens", 2, "--out", out)
    code, stdout, _ = run_cli(monkeypatch, capsys, *args, "--layers", "2,3")
    assert code == 0, stdout
    assert "memory estimate" in stdout and "recommended: block" in stdout
    assert len(json.loads(out.read_text())["candidates"]) == 2
    for bad, message in ((["--layers", "2,x"], "--layers takes layers"), (["--layers", "1", "--scan"], "not both")):
        code, stdout, stderr = run_cli(monkeypatch, capsys, *args, *bad)
        assert code == 2 and message in stderr
        assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stdout + stderr


@pytest.mark.slow
def test_smollm2_4bit_sanity_on_cpu(smollm2_dir: Path, tmp_path: Path) -> None:
    report = sanity(smollm2_dir, quantize=True, layers="12,15", rows=2, seq_len=128, out=tmp_path / "r.json")
    assert "def " in report.generation["completion"], report.generation
    assert all(c.identity_max_abs_diff == 0.0 for c in report.candidates)
    assert all(c.loss[1] == report.base_loss for c in report.candidates)
    assert report.estimate["parameters"] == 134_515_008
    assert report.generic_cpu_path == [], "SmolLM2's widths (576, 192, 1536) suit the packed kernel"
    assert report.recommended in {(12, 13), (15, 16)}
