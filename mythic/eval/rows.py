"""A row of an evaluation: the base, a fixed loop count, or adaptive depth — and how a model runs it.

A row is the base (``n_loops=None``: ``base_mode()`` for a looped model with a base, the plain model
otherwise) or a loop count passed to a looped model's ``forward`` / ``generate`` as ``n_loops``
(``loop_rows`` says which): a fixed T, or an ``AdaptiveDepth`` (``auto:MAX``; ``loops_meter`` reads the
loops it used), or ``TOLD`` (``d``, task files): each example runs as many loops as its difficulty, the
count told rather than found (``exact_match.predict``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mythic.errors import MythicError
from mythic.models.protocol import LoopedModel
from mythic.recurrence.context import LoopContext
from mythic.recurrence.exit import AdaptiveDepth

Row = int | AdaptiveDepth | str | None  # a row: fixed T, adaptive (auto:MAX), told (TOLD, "d"), or the base (None)
GREEDY = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}  # generate() kwargs, no sampling


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Left padding (so every prompt ends at the last position), with EOS as padding when there is none."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def row_label(n_loops: Row) -> str:
    if isinstance(n_loops, AdaptiveDepth):
        return n_loops.label
    return "base" if n_loops is None else f"T={n_loops}"  # T=n, or T=d for TOLD


def row_file(label: str) -> str:
    """A row label as a file name stem: ``T=4`` → ``T4``, ``auto:16`` → ``auto-16``."""
    return label.replace("=", "").replace(":", "-")


def row_fields(n_loops: Row) -> dict[str, Any]:
    """A row's identity in the JSON: label and n_loops (None for the base, "auto" plus max_loops and
    exit for an adaptive row)."""
    if isinstance(n_loops, AdaptiveDepth):
        return {"label": n_loops.label, "n_loops": "auto", "max_loops": n_loops.limit, "exit": n_loops.rule}
    return {"label": row_label(n_loops), "n_loops": n_loops}


def loop_rows(model: PreTrainedModel, loops: Sequence[int | AdaptiveDepth]) -> list[Row]:
    """The rows an evaluation runs: each loop count for a looped model, preceded by the base (None) when
    it has one; the base alone for a plain model. ``auto`` without a MAX gets the trained maximum."""
    if not isinstance(model, LoopedModel):
        return [None]
    recurrence = model.recurrence
    rows: list[Row] = [n.bounded(recurrence.max_loops) if isinstance(n, AdaptiveDepth) else n for n in loops]
    if recurrence.halting is None and any(isinstance(n, AdaptiveDepth) and n.criterion == "act" for n in rows):
        raise MythicError("--exit act needs a model with a halting head (OpenMythos with act: true)")
    return [None, *rows] if model.has_base else rows


def loop_context(model: PreTrainedModel) -> LoopContext:
    """The per-model context through which the loop driver reports states and loops used."""
    if not isinstance(model, LoopedModel):
        raise MythicError("loop measurements need a looped model (a mythic checkpoint or an OpenMythos model)")
    return model.recurrence.context


@contextlib.contextmanager
def loops_meter(model: PreTrainedModel, n_loops: Row) -> Iterator[Callable[[], torch.Tensor | None]]:
    """Yields a function giving the loops each row's read position used in every adaptive forward since its
    last call, (forwards, B): row 0 is the prompt's forward (the loops of the first answer token), the rest
    one per generated token; None for a fixed row or the base (nothing to measure)."""
    if not isinstance(n_loops, AdaptiveDepth):
        yield lambda: None
        return
    with loop_context(model).metering() as used:

        def take() -> torch.Tensor | None:
            stacked = torch.stack(used).float() if used else None
            used.clear()
            return stacked

        yield take


@contextlib.contextmanager
def row_mode(model: PreTrainedModel, n_loops: Row) -> Iterator[dict[str, Any]]:
    """Generate kwargs for a row: base mode (recurrence and LoRA off) or ``n_loops``."""
    looped = isinstance(model, LoopedModel)
    if n_loops is None:
        with model.base_mode() if looped and model.has_base else contextlib.nullcontext():
            yield {}
    elif not looped:
        raise MythicError("loop counts need a mythic checkpoint; a plain base only has the base row")
    else:
        yield {"n_loops": n_loops}
