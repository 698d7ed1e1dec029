"""The transformers-native OpenMythos and the variant sizes."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_mythos
from transformers import AutoConfig, AutoModelForCausalLM

from mythic.models.openmythos import MythosConfig, OpenMythosConfig, OpenMythosForCausalLM
from mythic.models.openmythos.variants import VARIANTS, count_parameters, variant

REFERENCE_SIZES = {
    "1b": (1.06e9, 0.31e9),
    "3b": (3.04e9, 0.78e9),
    "10b": (9.98e9, 1.40e9),
    "50b": (50.4e9, 5.2e9),
    "100b": (99.6e9, 16.9e9),
    "500b": (498e9, 70e9),
    "1t": (999e9, 143e9),
}


def hf_model(attn: str = "mla", seed: int = 0) -> OpenMythosForCausalLM:
    torch.manual_seed(seed)
    cfg = tiny_mythos(attn, vocab_size=90, dim=48, n_experts=4, q_lora_rank=0, v_head_dim=8)
    model = OpenMythosForCausalLM(OpenMythosConfig.from_mythos(cfg)).eval()
    with torch.no_grad():
        for p in model.model.recurrence.lora.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        model.model.recurrence.embedding.gamma.normal_(0, 0.3)
        model.model.recurrence.halting.proj.weight.normal_(0, 0.3)
        model.model.block.ffn.router_bias.normal_(0, 0.1)
    return model


def ids(batch: int = 2, length: int = 10) -> torch.Tensor:
    return torch.randint(0, 90, (batch, length), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("attn", ["mla", "gqa"])
def test_save_pretrained_then_from_pretrained_gives_identical_logits(attn: str, tmp_path: Path) -> None:
    model = hf_model(attn)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, OpenMythosForCausalLM)
    assert AutoConfig.from_pretrained(tmp_path).to_mythos() == model.config.to_mythos()
    assert loaded.model.head.weight is loaded.model.embed.weight
    with torch.no_grad():
        for n_loops in (1, 3):
            a = model(ids(), n_loops=n_loops).logits
            b = loaded(ids(), n_loops=n_loops).logits
            assert float((a - b).abs().max()) == 0.0
    assert torch.equal(loaded.model.block.ffn.router_bias, model.model.block.ffn.router_bias)


def test_hf_generate_with_n_loops_equals_the_native_generate() -> None:
    model = hf_model()
    prompt = ids(2, 5)
    for n_loops in (2, torch.tensor([1, 4])):
        out = model.generate(prompt, max_new_tokens=6, do_sample=False, n_loops=n_loops, pad_token_id=0)
        native = model.model.generate(prompt, 6, n_loops=n_loops, temperature=0)
        assert torch.equal(out, native)
    scores = [
        model.generate(
            prompt, max_new_tokens=2, do_sample=False, n_loops=n, pad_token_id=0, output_logits=True,
            return_dict_in_generate=True,
        ).logits[0]
        for n in (1, 4)
    ]  # fmt: skip
    with torch.no_grad():
        assert float((scores[1] - model(prompt, n_loops=4).logits[:, -1]).abs().max()) <= 1e-5
    assert float((scores[0] - scores[1]).abs().max()) > 1e-3


def test_labels_give_the_shifted_cross_entropy_and_aux_losses_come_along() -> None:
    model = hf_model().train()
    x = ids()
    out = model(x, labels=x, n_loops=2)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 90), x[:, 1:].reshape(-1))
    assert abs(out.loss.item() - expected.item()) <= 1e-6
    assert set(out.aux_losses) == {"moe_balance", "ponder"}
    direct = model.model(x, 2, return_aux=True).aux_losses["ponder"]  # the same forward, without the HF wrapper
    assert abs(out.aux_losses["ponder"].item() - direct.item()) <= 1e-6
    assert 1.0 <= direct.item() <= 3.0  # mean N + R with N ≤ 2 loops and R ≤ 1
    assert out.cache is None


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_parameter_counts_are_within_five_percent_of_the_reference(name: str) -> None:
    total, active = count_parameters(variant(name))
    ref_total, ref_active = REFERENCE_SIZES[name]
    assert abs(total / ref_total - 1) < 0.05
    assert abs(active / ref_active - 1) < 0.05


def test_hf_config_has_every_mythos_field_with_the_same_default() -> None:
    hf = OpenMythosConfig()
    assert {f.name: f.default for f in fields(MythosConfig)} == {
        f.name: getattr(hf, f.name) for f in fields(MythosConfig)
    }
