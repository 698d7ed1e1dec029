"""Fitting the depth head after training (``recurrence/depth_head.py``): states and the counts they should loop.

For up to ``per_difficulty`` examples of each difficulty d in the recipe's task files (drawn with the recipe's
seed), the looped model, frozen, runs one pass over the example as training sees it; the state h₁ at each
position the token rule loops in training (the prompt's last token, which predicts the answer, and the answer's
tokens, which predict the rest and EOS: each loops in generation as its own read position; an intermediate
answer inside the prompt does not) is paired with
min(d, max_loops), the count a T = d curriculum trained that example at (d = 1 for an example without a
difficulty, as the curriculum takes it). The head is fitted on those pairs
(L-BFGS) and the run records what it got right:

    depth_head.json   {"examples": N, "states": M, "difficulties": [...], "right_on_fitted": share of the M}
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mythic.errors import MythicError
from mythic.models.protocol import LoopedModel
from mythic.recurrence.rules import last_run
from mythic.tasks.files import Task
from mythic.train.data import encode_task, pad_id_of, right_padded
from mythic.train.losses import IGNORE_INDEX


def trained_loops(task: Task) -> int:
    """The loop count the difficulty curriculum trains an example at: its difficulty, 1 without one."""
    return task.difficulty or 1


def sample_by_difficulty(tasks: list[Task], per_difficulty: int, seed: int) -> list[Task]:
    """Up to ``per_difficulty`` examples of each difficulty (``trained_loops``), drawn with ``seed``."""
    groups: dict[int, list[Task]] = defaultdict(list)
    for task in tasks:
        groups[trained_loops(task)].append(task)
    rng = random.Random(seed)
    return [t for d in sorted(groups) for t in rng.sample(groups[d], min(per_difficulty, len(groups[d])))]


@torch.no_grad()
def first_states(
    model: LoopedModel, tokenizer: PreTrainedTokenizerBase, tasks: list[Task], batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) the state after one pass at every position training loops (each prompt's last token and the
    answer's tokens, as ``data.encode_task`` labels them: each row's last run of labels), and (N,) the index of
    the task each came from."""
    states: list[torch.Tensor] = []
    owners: list[torch.Tensor] = []
    for i in range(0, len(tasks), batch):
        ids, labels = right_padded(
            [encode_task(tokenizer, task) for task in tasks[i : i + batch]], pad_id_of(tokenizer)
        )
        read = last_run(labels != IGNORE_INDEX)
        seen: list[torch.Tensor] = []
        with model.recurrence.context.observing(lambda t, h, seen=seen: seen.append(h)):
            model(ids.to(model.device), n_loops=1, logits_to_keep=read.to(model.device))
        states.append(seen[0][read.to(seen[0].device)].float().cpu())
        owners.append(i + read.nonzero()[:, 0])
    return torch.cat(states), torch.cat(owners)


def fit_depth_head(
    model: LoopedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[Task],
    per_difficulty: int,
    seed: int,
    batch: int = 32,
) -> dict[str, Any]:
    """Fit the model's depth head (module docstring); returns the record."""
    head = model.recurrence.depth_head
    if head is None:
        raise MythicError("this model has no depth head (surgery depth_head: true)")
    chosen = sample_by_difficulty(tasks, per_difficulty, seed)
    was_training = model.training
    model.eval()
    states, owners = first_states(model, tokenizer, chosen, batch)
    model.train(was_training)
    loops = torch.tensor([min(trained_loops(t), model.recurrence.max_loops) for t in chosen])[owners]
    torch.manual_seed(seed)  # the fit's starting point
    right = head.to("cpu").fit(states, loops)
    head.to(model.device)
    return {
        "examples": len(chosen),
        "states": len(loops),
        "difficulties": sorted({trained_loops(t) for t in chosen}),
        "right_on_fitted": right,
    }
