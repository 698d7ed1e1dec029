"""Training checkpoints: everything ``--resume`` needs to continue a run exactly.

Layout of ``RUN/checkpoints/step-0000050/`` (written through ``mythic.io.atomic_dir``):

    trainable.safetensors   the trainable parameters by name (recurrence, LoRA, …)
    optimizer.pt            optimizer state, keyed by parameter name
    rng.pt                  python / numpy / torch (/ cuda) RNG states, one entry per rank
    state.json              step, scheduler state, data position, skipped-step counters
    tokenizer.json, …       the run's tokenizer (``save_pretrained``); a resume must rebuild the same

Tensors are whole (gathered by ``mythic.train.parallel``, whatever ``train.parallel``). Only the last
``keep`` checkpoints are kept; ``latest_checkpoint`` picks the highest step. A resume is strict (the
trainer checks the tensors with ``mythic.tensors.check_tensors``): a missing, unexpected or mis-shaped
tensor is refused before anything is copied.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mythic.errors import MythicError
from mythic.io import atomic_dir, write_json
from mythic.loading import load_tokenizer

STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    """The non-tensor part of a checkpoint (``state.json``)."""

    step: int
    scheduler: dict[str, Any]
    data: dict[str, Any]
    skipped_steps: int = 0


def rng_state() -> dict[str, Any]:
    """This process's RNG states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    return next(reversed(checkpoint_dirs(root)), None)


def save_checkpoint(
    root: Path,
    state: TrainState,
    *,
    trainable: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    rng: list[dict[str, Any]],
    keep: int,
    tokenizer: Any,
) -> None:
    """Write ``root/step-NNNNNNN`` atomically, then drop all but the newest ``keep``."""
    for stale in root.glob(".step-*"):  # a killed save's temp folder
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(root / f"step-{state.step:07d}", force=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, tmp / "trainable.safetensors")
        torch.save(optimizer, tmp / "optimizer.pt")
        torch.save(rng, tmp / "rng.pt")
        write_json(tmp / "state.json", asdict(state))
        tokenizer.save_pretrained(tmp)
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class Checkpoint:
    state: TrainState
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: list[dict[str, Any]]


def read_checkpoint(path: Path) -> Checkpoint:
    """A training checkpoint folder as written by ``save_checkpoint``; unreadable files are a one-line error."""
    try:
        raw = json.loads((path / "state.json").read_text())
        trainable = load_file(path / "trainable.safetensors")
        optimizer = torch.load(path / "optimizer.pt", weights_only=False)
        rng = torch.load(path / "rng.pt", weights_only=False)
    except (OSError, ValueError) as err:
        raise MythicError(f"checkpoint {path} is unreadable: {str(err).splitlines()[0]}") from None
    return Checkpoint(TrainState(**raw), trainable, optimizer, rng)


def check_same_tokenizer(path: Path, tokenizer: Any) -> None:
    """A resumed run must tokenize as the run did (a ``chars`` vocabulary follows its task files)."""
    if not (path / "tokenizer_config.json").is_file():
        return
    if load_tokenizer(path).get_vocab() != tokenizer.get_vocab():
        raise MythicError(f"--resume: the tokenizer differs from the one saved in {path} (did the task files change?)")
