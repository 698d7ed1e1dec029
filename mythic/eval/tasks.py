"""Exact match on a task file at several loop counts, overall and per difficulty.

Every row (``loop_rows``: the base and each loop count for a retrofit, each loop count for a
from-scratch OpenMythos, the base alone for a plain model) answers every prompt greedily:
prompts are left-padded into batches (longest first), at most (longest answer in tokens + 1)
new tokens are generated, generation stops at EOS, and a prediction is correct when it equals
the answer after stripping surrounding whitespace. Then

    accuracy          = mean of the 0/1 outcomes, SE = √(p(1 − p)/(N − 1))   (``stats.metric``)
    per difficulty d  = the same over the examples of difficulty d

``loop_dynamics`` measures how the loop state moves: one forward at ``n_loops`` with the loop
driver's observer recording the state h_t at each prompt's last position, then, averaged per
difficulty,

    change  c_t = ‖h_{t+1} − h_t‖ / ‖h_t‖        t = 1 … T − 1
    rms     r_t = ‖h_t‖ / √dim                   t = 1 … T

(h_t is the state after t passes of the block): c_t → 0 means the state reached a fixed point and
more loops change nothing; r_t shows whether it settles, grows or shrinks on the way.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mythic.errors import MythicError
from mythic.eval.generation import loop_rows, row_label, row_mode
from mythic.eval.stats import metric
from mythic.models.openmythos import MythosForCausalLM
from mythic.models.retrofit import MythicForCausalLM
from mythic.recurrence.depth_lora import LoopContext
from mythic.tasks.files import Task


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Left padding (so every prompt ends at the last position), with EOS as padding when there is none."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def answer_budget(tokenizer: PreTrainedTokenizerBase, tasks: Sequence[Task]) -> int:
    """New tokens to generate: the longest answer in tokens, plus one for EOS."""
    return 1 + max(len(tokenizer(t.answer, add_special_tokens=False).input_ids) for t in tasks)


def batches(tokenizer: PreTrainedTokenizerBase, tasks: Sequence[Task], batch_size: int) -> list[list[int]]:
    """Indices of ``tasks`` in batches of similar prompt length, longest first."""
    lengths = [len(tokenizer(t.prompt).input_ids) for t in tasks]
    order = sorted(range(len(tasks)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def predict(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[Task],
    n_loops: int | None,
    *,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """The greedy answer to every prompt at one row (``n_loops``; None = the base), in ``tasks`` order."""
    prepare_tokenizer(tokenizer)
    budget = answer_budget(tokenizer, tasks)
    answers = [""] * len(tasks)
    with row_mode(model, n_loops) as loop_kwargs, torch.no_grad():
        for batch in batches(tokenizer, tasks, batch_size):
            enc = tokenizer([tasks[i].prompt for i in batch], return_tensors="pt", padding=True).to(model.device)
            output = model.generate(
                **enc,
                **loop_kwargs,
                max_new_tokens=budget,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            for i, ids in zip(batch, output[:, enc.input_ids.shape[1] :], strict=True):
                answers[i] = tokenizer.decode(ids, skip_special_tokens=True)
            if on_batch is not None:
                on_batch(len(batch))
    return answers


def score(tasks: Sequence[Task], predictions: Sequence[str]) -> dict[str, Any]:
    """Accuracy overall and per difficulty (keys are the difficulties as strings, sorted)."""
    correct = [float(t.matches(p)) for t, p in zip(tasks, predictions, strict=True)]
    by_difficulty: dict[int, list[float]] = defaultdict(list)
    for task, ok in zip(tasks, correct, strict=True):
        if task.difficulty is not None:
            by_difficulty[task.difficulty].append(ok)
    return {
        "metrics": {"accuracy": metric(correct)},
        "per_difficulty": {str(d): {"accuracy": metric(v)} for d, v in sorted(by_difficulty.items())},
    }


def evaluate_tasks(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[Task],
    *,
    loops: Sequence[int],
    batch_size: int = 32,
    on_row: Callable[[str, int], Callable[[int], None] | None] | None = None,
) -> dict[str, Any]:
    """Every row's predictions and accuracy; ``on_row(label, total)`` may return a per-batch callback."""
    if not tasks:
        raise MythicError("no examples to evaluate")
    rows = []
    for n_loops in loop_rows(model, loops):
        label = row_label(n_loops)
        started = time.perf_counter()
        predictions = predict(
            model,
            tokenizer,
            tasks,
            n_loops,
            batch_size=batch_size,
            on_batch=on_row(label, len(tasks)) if on_row is not None else None,
        )
        seconds = time.perf_counter() - started
        row = {"label": label, "n_loops": n_loops, **score(tasks, predictions)}
        row["seconds"] = round(seconds, 2)
        row["predictions"] = predictions
        rows.append(row)
    difficulties = sorted({t.difficulty for t in tasks if t.difficulty is not None})
    return {"task": "tasks", "examples": len(tasks), "difficulties": difficulties, "rows": rows}


def loop_context(model: PreTrainedModel) -> LoopContext:
    """The per-model context through which the loop driver reports its states."""
    if isinstance(model, MythicForCausalLM):
        return model.context
    if isinstance(model, MythosForCausalLM):
        return model.model.recurrent.context
    raise MythicError("loop convergence needs a looped model (a mythic checkpoint or an OpenMythos model)")


def loop_dynamics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[Task],
    n_loops: int,
    *,
    batch_size: int = 32,
) -> dict[str, dict[str, list[float]]]:
    """``{"change": {key: [c_1 … c_{T−1}]}, "rms": {key: [r_1 … r_T]}}``, key a difficulty or "all"."""
    context = loop_context(model)
    prepare_tokenizer(tokenizer)
    sums: dict[str, dict[str, torch.Tensor]] = {"change": {}, "rms": {}}
    counts: dict[str, int] = defaultdict(int)
    states: list[torch.Tensor] = []
    for batch in batches(tokenizer, tasks, batch_size):
        states.clear()
        enc = tokenizer([tasks[i].prompt for i in batch], return_tensors="pt", padding=True).to(model.device)
        with torch.no_grad(), context.observing(lambda t, h: states.append(h[:, -1].float())):
            model(**enc, n_loops=n_loops, use_cache=False)
        h = torch.stack(states, dim=1)
        norms = h.norm(dim=-1)
        measures = {
            "change": (h[:, 1:] - h[:, :-1]).norm(dim=-1) / norms[:, :-1].clamp(min=1e-12),
            "rms": norms / h.shape[-1] ** 0.5,
        }
        for j, i in enumerate(batch):
            keys = ("all", str(tasks[i].difficulty)) if tasks[i].difficulty is not None else ("all",)
            for key in keys:
                counts[key] += 1
                for name, values in measures.items():
                    sums[name][key] = sums[name].get(key, torch.zeros_like(values[j])) + values[j]
    order = sorted(counts, key=lambda k: (k != "all", len(k), k))
    return {name: {key: (totals[key] / counts[key]).tolist() for key in order} for name, totals in sums.items()}
