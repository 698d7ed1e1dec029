"""The tests' and benchmarks' one factory of tiny models, built from configs (no download): a random base
of every supported family (``tiny_base``, ``save_tiny_base``; benchmarks scale it with size overrides),
the word-level Llama the training tests learn on (``write_tiny_base``), and the config of a tiny
from-scratch OpenMythos (``tiny_mythos``)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from mythic.models.openmythos import MythosConfig

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_attention_heads=4, max_position_embeddings=256)

CONFIGS: dict[str, dict] = {
    "llama": dict(model_type="llama", num_hidden_layers=6, num_key_value_heads=2, **COMMON),
    "qwen2": dict(model_type="qwen2", num_hidden_layers=6, num_key_value_heads=2, **COMMON),
    "qwen3_moe": dict(
        model_type="qwen3_moe",
        num_hidden_layers=6,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        head_dim=16,
        **COMMON,
    ),
    # DeepSeek-Coder-V2-Lite layout: MLA (no q LoRA), shared + routed experts, first layer dense.
    "deepseek_v2": dict(
        model_type="deepseek_v2",
        num_hidden_layers=6,
        num_key_value_heads=4,
        kv_lora_rank=32,
        q_lora_rank=None,
        qk_rope_head_dim=8,
        qk_nope_head_dim=16,
        v_head_dim=16,
        n_routed_experts=4,
        n_shared_experts=2,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        first_k_dense_replace=1,
        topk_method="greedy",
        **COMMON,
    ),
    # Gemma-4 26B-A4B layout: MoE block beside the dense MLP, sliding/full layers, plus KV-sharing layers.
    "gemma4_text": dict(
        model_type="gemma4_text",
        num_hidden_layers=6,
        num_key_value_heads=2,
        head_dim=16,
        global_head_dim=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
        sliding_window=8,
        enable_moe_block=True,
        num_experts=4,
        top_k_experts=2,
        moe_intermediate_size=32,
        num_kv_shared_layers=2,
        hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=128,
        **{k: v for k, v in COMMON.items()},
    ),
}

FAMILIES = (*CONFIGS, "gemma4")


def family_config(family: str, **sizes: object):
    """The config of a tiny base, ``sizes`` replacing its fields; ``gemma4`` is the multimodal Gemma-4 class
    with the gemma4_text decoder."""
    if family == "gemma4":
        from transformers import Gemma4Config

        text = {k: v for k, v in CONFIGS["gemma4_text"].items() if k != "model_type"}
        return Gemma4Config(text_config={**text, **sizes}, vision_config=None, audio_config=None)
    return AutoConfig.for_model(**{**CONFIGS[family], **sizes})


def tiny_base(family: str, dtype: torch.dtype = torch.float32, seed: int = 0, **sizes: object) -> PreTrainedModel:
    """A random base of ``family`` (seeded), in eval mode; ``sizes`` replace config fields."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(family, **sizes), dtype=dtype)
    return model.eval()


def tiny_tokenizer():
    """A character-level fast tokenizer over printable ASCII (ids < 128), with a chat template."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    vocab.update({chr(c): c - 29 for c in range(32, 127)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    return fast


def save_tiny_base(folder, family: str = "llama", with_tokenizer: bool = True):
    """Write a tiny random base as a Hugging Face folder; returns the model."""
    model = tiny_base(family)
    model.save_pretrained(folder)
    if with_tokenizer:
        tiny_tokenizer().save_pretrained(folder)
    return model


WORDS = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(61)]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def make_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def write_tiny_base(folder: Path, layers: int = 4, max_shard_size: str | None = None) -> Path:
    """A random Llama (vocab 64, hidden 32) and ``make_tokenizer``'s word-level tokenizer, whose words are
    ``w0 … w60`` plus ``<unk> <s> </s>``, with a small chat template: the training tests' base."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    make_tokenizer().save_pretrained(folder)
    return folder


def tiny_mythos(attn: str = "gqa", **overrides: object) -> MythosConfig:
    """A tiny OpenMythos config (GQA or MLA, 6 experts top-2, Depth-LoRA rank 4); ``overrides`` replace fields."""
    settings = dict(
        vocab_size=97, dim=64, n_heads=4, n_kv_heads=2, max_seq_len=64, max_loop_iters=4,
        prelude_layers=1, coda_layers=1, n_experts=6, n_shared_experts=1, n_experts_per_tok=2,
        expert_dim=16, lora_rank=4, attn_type=attn, kv_lora_rank=16, q_lora_rank=24,
        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=12,
    )  # fmt: skip
    settings.update(overrides)
    return MythosConfig(**settings)


LOOPED_KINDS = ["openmythos-gqa", "openmythos-mla", "retrofit-llama", "retrofit-deepseek_v2", "retrofit-gemma4_text"]


def looped_model(kind: str, **overrides: object) -> torch.nn.Module:
    """A looped model of either kind through its transformers class, its recurrence woken up (so that T
    matters): ``openmythos-gqa`` / ``-mla`` (``tiny_mythos`` with both convolutions, ACT halting on),
    ``retrofit-FAMILY`` (block 1:3 of ``tiny_base(FAMILY)``, 4 trained loops). ``overrides`` go to
    ``tiny_mythos``."""
    from mythic.models.openmythos import OpenMythosConfig, OpenMythosForCausalLM
    from mythic.models.retrofit import RetrofitForCausalLM

    family, _, variant = kind.partition("-")
    if family == "openmythos":
        torch.manual_seed(0)
        config = tiny_mythos(variant, **{"token_conv": 3, "loop_conv": 2, **overrides})
        model = OpenMythosForCausalLM(OpenMythosConfig.from_mythos(config)).eval()
        recurrence = model.recurrence
        with torch.no_grad():
            if model.model.loop_conv is not None:
                model.model.loop_conv.weight.normal_(0, 0.5)
            for p in recurrence.lora.parameters():
                p.add_(torch.randn_like(p) * 0.2)
            recurrence.embedding.gamma.normal_(0, 0.3)
            if recurrence.halting is not None:
                recurrence.halting.proj.weight.normal_(0, 0.3)
                recurrence.halting.proj.bias.fill_(-0.5)
        return model
    model = RetrofitForCausalLM.from_base(tiny_base(variant), block_start=1, block_end=3, max_loops=4).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for _, p in model.recurrence_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model
