"""Greedy completion of one prompt at several loop counts (what ``mythic generate`` shows)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mythic.errors import MythicError
from mythic.eval.rows import loop_rows, loops_meter, row_label, row_mode
from mythic.models.protocol import LoopedModel
from mythic.recurrence.exit import AdaptiveDepth


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
    loops: list[int | AdaptiveDepth],
    max_new_tokens: int,
    chat: bool = True,
    with_base: bool = True,
) -> list[tuple[str, float | None, str]]:
    """[(label, mean loops per generated token, completion)] for the base (recurrence off; a retrofit
    only) and each loop count (fixed, or adaptive ``auto:MAX``), greedy."""
    if not isinstance(model, LoopedModel) and loops != [1]:
        raise MythicError("--loops needs a looped model: a plain base model has no loops")
    ids = encode_prompt(tokenizer, prompt, chat)
    settings = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    rows: list[tuple[str, float | None, str]] = []
    for n_loops in [n for n in loop_rows(model, loops) if with_base or n is not None] or [None]:  # a plain model: base
        with row_mode(model, n_loops) as loop_kwargs, loops_meter(model, n_loops) as metered:
            new = model.generate(ids, **settings, **loop_kwargs)[0, ids.shape[1] :]
            used = metered()
        mean = float(used[:, 0].mean()) if used is not None else (None if n_loops is None else float(n_loops))
        rows.append((row_label(n_loops), mean, tokenizer.decode(new, skip_special_tokens=True).strip()))
    return rows
