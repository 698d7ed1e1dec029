"""``LoopedModel``: what every caller (eval rows, trainer, objective, generate, export) may ask of a looped
model, whichever kind it is: the retrofit wrapper (``retrofit.RetrofitForCausalLM``) or the from-scratch
OpenMythos (``openmythos.OpenMythosForCausalLM``), both of which derive from it. Callers test whether a
model is looped at all (a plain transformers base is not), never which kind it is.

    recurrence               the shared ``Recurrence``: its trained loop count (``max_loops``), its
                             halting head (or None), its loop context (observer, loop meter)
    has_base                 whether the model wraps a pretrained base (``base_mode`` gives it back)
    base_mode()              a context in which the model computes its base: no loops, no Depth-LoRA,
                             no LoRA on the base (refused by a model trained from scratch)
    new_cache()              an empty KV cache with a slot per (loop, layer); ``generate`` starts with one
    readout(h)               next-token logits read off a loop state (the logit lens)
    recurrence_stats()       what a training run logs about the recurrence (ρ(Ā), gates …)
    after_optimizer_step()   work after each optimizer step (OpenMythos' router balancing); its stats
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch

from mythic.errors import MythicError
from mythic.recurrence.cache import LoopCache
from mythic.recurrence.runner import Recurrence


class LoopedModel:
    """The mixin both looped model kinds derive from (before ``GenerationMixin``); see the module docstring."""

    recurrence: Recurrence
    has_base: bool

    def base_mode(self) -> AbstractContextManager[None]:
        raise MythicError(f"{type(self).__name__} is trained from scratch: it has no base to compare with")

    def new_cache(self) -> LoopCache:
        raise NotImplementedError

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def recurrence_stats(self) -> dict[str, float]:
        return self.recurrence.stats()

    def after_optimizer_step(self) -> dict[str, float]:
        return {}

    def _prepare_cache_for_generation(
        self, generation_config: Any, model_kwargs: dict[str, Any], *args: Any, **kwargs: Any
    ) -> None:
        if model_kwargs.get("cache") is None and generation_config.use_cache is not False:
            model_kwargs["cache"] = self.new_cache()
            return
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)  # type: ignore[misc]
