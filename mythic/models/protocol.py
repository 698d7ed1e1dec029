"""``LoopedModel``: what every caller (eval rows, trainer, objective, generate, export) may ask of a looped
model, whichever kind it is: the retrofit wrapper (``retrofit.RetrofitForCausalLM``) or the from-scratch
OpenMythos (``openmythos.OpenMythosForCausalLM``). Callers test whether a model is looped at all (a plain
transformers base is not), never which kind it is.

    recurrence               the shared ``Recurrence``: its trained loop count (``max_loops``), its
                             halting head (or None), its loop context (observer, loop meter)
    has_base                 whether the model wraps a pretrained base (``base_mode`` gives it back)
    base_mode()              a context in which the model computes its base: no loops, no Depth-LoRA,
                             no LoRA on the base (refused by a model trained from scratch)
    new_cache()              an empty KV cache with a slot per (loop, layer)
    readout(h)               next-token logits read off a loop state (the logit lens)
    recurrence_stats()       what a training run logs about the recurrence (ρ(Ā), gates …)
    after_optimizer_step()   work after each optimizer step (OpenMythos' router balancing); its stats
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

import torch

from mythic.recurrence.cache import LoopCache
from mythic.recurrence.runner import Recurrence


@runtime_checkable
class LoopedModel(Protocol):
    recurrence: Recurrence
    has_base: bool

    def base_mode(self) -> AbstractContextManager[None]: ...

    def new_cache(self) -> LoopCache: ...

    def readout(self, h: torch.Tensor) -> torch.Tensor: ...

    def recurrence_stats(self) -> dict[str, float]: ...

    def after_optimizer_step(self) -> dict[str, float]: ...
