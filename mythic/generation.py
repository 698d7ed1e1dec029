"""Greedy completion of one prompt at several loop counts (what ``mythic generate`` shows)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mythic.errors import MythicError
from mythic.models.retrofit import MythicForCausalLM


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, chat: bool) -> torch.Tensor:
    """Token ids of ``prompt``, through the chat template when asked and available."""
    if chat and tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    return tokenizer(prompt, return_tensors="pt").input_ids


def complete_at_loops(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    loops: list[int],
    max_new_tokens: int,
    chat: bool = True,
    with_base: bool = True,
) -> list[tuple[str, str]]:
    """[(label, completion)] for the base (recurrence off) and each loop count, greedy."""
    ids = encode_prompt(tokenizer, prompt, chat)
    settings = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)

    def decode(out: torch.Tensor) -> str:
        return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()

    if not isinstance(model, MythicForCausalLM):
        if loops != [1]:
            raise MythicError("--loops needs a mythic checkpoint: a plain base model has no loops")
        return [("base", decode(model.generate(ids, **settings)))]
    rows = []
    if with_base:
        with model.base_mode():
            rows.append(("base", decode(model.generate(ids, **settings))))
    for n in loops:
        rows.append((f"T={n}", decode(model.generate(ids, n_loops=n, **settings))))
    return rows
