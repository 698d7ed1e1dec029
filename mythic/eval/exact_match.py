"""Exact match on a task file at several loop counts, overall and per difficulty.

Every row (``loop_rows``: the base and each loop count for a retrofit, each loop count for OpenMythos,
the base alone for a plain model; ``auto:MAX``: adaptive, ``recurrence/exit.py``; ``d``: each example at its
difficulty, the loop count told) answers every prompt
greedily: prompts left-padded into batches (longest first), at most (longest answer in tokens + 1) new
tokens, stopping at EOS; a prediction is correct when it equals the answer after stripping whitespace.

    accuracy          = mean of the 0/1 outcomes, SE = √(p(1 − p)/(N − 1))   (``stats.metric``)
    per difficulty d  = the same over the examples of difficulty d

Every row reports ``tokens_per_second`` (tokens generated, each prompt's up to its EOS, over the row's
wall-clock seconds) and, for looped rows, what the loops cost, overall and per difficulty:

    mean_loops          loops per generated token: T for a fixed row, d for a told one; adaptive: the loops
                        of the position that picks each next token, averaged over a prompt's generate steps,
                        the EOS step included (a prompt that ended is counted until its whole batch ends)
    answer_loops        the loops of the first answer token (the prompt's forward)
    prompt_token_loops  every pass of every prompt token: the prompt's tokens × answer_loops where every
                        prompt token loops as long as the last, tokens − 1 + answer_loops where the
                        update rule loops only the read positions (``rule.loops_context``: the token rule)

``loop_dynamics``: one forward at ``n_loops`` whose observer records the state h_t (after t passes of
the block) at each prompt's last position, then, averaged per difficulty,

    change  c_t = ‖h_{t+1} − h_t‖ / ‖h_t‖        t = 1 … T − 1   (→ 0: a fixed point, more loops change nothing)
    rms     r_t = ‖h_t‖ / √dim                   t = 1 … T       (whether the state settles, grows or shrinks)
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mythic.errors import MythicError
from mythic.eval.rows import GREEDY, Row, loop_context, loop_rows, loops_meter, prepare_tokenizer, row_fields, row_mode
from mythic.eval.stats import metric
from mythic.recurrence.exit import TOLD
from mythic.tasks.files import Task


class Prediction(NamedTuple):
    """One row's answers (in task order); a looped row's loop costs (module docstring) per task, cost → [value]
    (none for the base); the tokens generated."""

    answers: list[str]
    costs: dict[str, list[float]]
    tokens: int


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
    n_loops: Row,
    *,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> Prediction:
    """The greedy answer to every prompt at one row (``n_loops``; None = the base), in ``tasks`` order,
    with the loops each prompt used per generated token and the tokens generated."""
    prepare_tokenizer(tokenizer)
    budget = answer_budget(tokenizer, tasks)
    ends = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    answers = [""] * len(tasks)
    names = ("mean_loops", "answer_loops", "prompt_token_loops")
    costs = {} if n_loops is None else {name: [0.0] * len(tasks) for name in names}
    tokens = 0
    told = told_loops(tasks) if n_loops == TOLD else None  # checked before any prompt is answered
    with row_mode(model, n_loops) as loop_kwargs, loops_meter(model, n_loops) as metered, torch.no_grad():
        context_loops = not costs or model.recurrence.rule.loops_context
        for batch in batches(tokenizer, tasks, batch_size):
            enc = tokenizer([tasks[i].prompt for i in batch], return_tensors="pt", padding=True).to(model.device)
            if told is not None:
                loop_kwargs = {"n_loops": told[batch].to(model.device)}
            output = model.generate(**enc, **loop_kwargs, max_new_tokens=budget, **GREEDY, **ends)
            new = output[:, enc.input_ids.shape[1] :]
            tokens += new_tokens(new, tokenizer)
            used = metered()
            for j, (i, ids) in enumerate(zip(batch, new, strict=True)):
                answers[i] = tokenizer.decode(ids, skip_special_tokens=True)
                if costs:  # an adaptive row's loops are metered; a fixed (told) row loops T (d) times at every token
                    fixed = tasks[i].difficulty if n_loops == TOLD else n_loops
                    mean, first = (used[:, j].mean(), used[0, j]) if used is not None else (fixed, fixed)
                    costs["mean_loops"][i], costs["answer_loops"][i] = float(mean), float(first)
                    prompt = int(enc.attention_mask[j].sum())
                    loops = float(first) * prompt if context_loops else float(first) + prompt - 1
                    costs["prompt_token_loops"][i] = loops
            if on_batch is not None:
                on_batch(len(batch))
    return Prediction(answers, costs, tokens)


def told_loops(tasks: Sequence[Task]) -> torch.Tensor:
    """(B,) the loop count of each example of a ``TOLD`` row: its difficulty."""
    if any(t.difficulty is None or t.difficulty < 1 for t in tasks):
        raise MythicError("--loops d runs each example at its difficulty: every example needs one (≥ 1)")
    return torch.tensor([t.difficulty for t in tasks])


def new_tokens(new: torch.Tensor, tokenizer: PreTrainedTokenizerBase) -> int:
    """Tokens generated per row up to and including its first EOS (the padding after it not counted), summed."""
    if tokenizer.eos_token_id is None:
        return new.numel()
    is_eos = new == tokenizer.eos_token_id
    return int(torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, new.shape[1]).sum())


def score(tasks: Sequence[Task], predictions: Sequence[str], prediction: Prediction | None = None) -> dict[str, Any]:
    """Accuracy overall and per difficulty (keys: the difficulties as strings, sorted), and beside each, for a
    looped row (``prediction``'s loops known), what its loops cost (module docstring)."""
    correct = [float(t.matches(p)) for t, p in zip(tasks, predictions, strict=True)]
    costs = prediction.costs if prediction is not None else {}
    by_difficulty: dict[int, list[int]] = defaultdict(list)
    for i, task in enumerate(tasks):
        if task.difficulty is not None:
            by_difficulty[task.difficulty].append(i)

    def summary(indices: Sequence[int]) -> dict[str, Any]:
        out: dict[str, Any] = {"accuracy": metric([correct[i] for i in indices])}
        return out | {name: round(statistics.fmean(v[i] for i in indices), 3) for name, v in costs.items()}

    overall = summary(range(len(tasks)))
    result: dict[str, Any] = {"metrics": {"accuracy": overall.pop("accuracy")}, **overall}
    result["per_difficulty"] = {str(d): summary(v) for d, v in sorted(by_difficulty.items())}
    return result


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
        row = row_fields(n_loops)
        on_batch = on_row(row["label"], len(tasks)) if on_row is not None else None
        started = time.perf_counter()
        prediction = predict(model, tokenizer, tasks, n_loops, batch_size=batch_size, on_batch=on_batch)
        seconds = time.perf_counter() - started
        row |= score(tasks, prediction.answers, prediction)
        row["seconds"] = round(seconds, 2)
        row["tokens_per_second"] = round(prediction.tokens / seconds, 2)
        row["predictions"] = prediction.answers
        rows.append(row)
    difficulties = sorted({t.difficulty for t in tasks if t.difficulty is not None})
    return {"task": "tasks", "examples": len(tasks), "difficulties": difficulties, "rows": rows}


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
