"""The per-model loop context: what a looped block must know but cannot be handed as an argument.

Three kinds of code run inside the block without a call of mythic's own above them: Depth-LoRA's
forward hooks (they need the loop index t); a retrofit's block layers, called by the base model's own
forward (``models/retrofit.py``), so the forward's ``Request`` reaches them here; and measurements (an
observer of every loop state, a meter of the loops adaptive forwards used). Everything else is passed
explicitly.

Each value is set for the extent of a ``with`` block. In eager mode it lives in a ``ContextVar`` (one per
value and model), so two threads running one model never see each other's loop; under
``torch.compile``, which cannot trace ContextVars, it is a plain attribute read at trace time (the loop
index is a constant of the traced graph).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import torch


class LoopContext:
    """Per-model context: the loop index (for Depth-LoRA), the current forward's state (a retrofit's), an
    observer the loop driver hands every new state to (``observer(t, h_t)``), a meter of adaptive loops."""

    NAMES = ("loop", "forward", "observer", "meter")

    def __init__(self) -> None:
        self._vars: dict[str, ContextVar[Any]] = {
            name: ContextVar(f"mythic_{name}_{id(self)}", default=None) for name in self.NAMES
        }
        self._traced: dict[str, Any] = dict.fromkeys(self.NAMES)

    def __deepcopy__(self, memo: dict[int, Any]) -> LoopContext:
        return LoopContext()

    def _get(self, name: str) -> Any:
        return self._traced[name] if torch.compiler.is_compiling() else self._vars[name].get()

    @contextlib.contextmanager
    def _setting(self, name: str, value: Any) -> Iterator[None]:
        if torch.compiler.is_compiling():
            previous, self._traced[name] = self._traced[name], value
            try:
                yield
            finally:
                self._traced[name] = previous
        else:
            token = self._vars[name].set(value)
            try:
                yield
            finally:
                self._vars[name].reset(token)

    @property
    def loop(self) -> int | None:
        return self._get("loop")

    @property
    def forward(self) -> Any:
        """The current forward's state, for block layers a base model's own forward calls (a retrofit's)."""
        return self._get("forward")

    @property
    def observer(self) -> Callable[[int, torch.Tensor], None] | None:
        return self._get("observer")

    def observing(self, observer: Callable[[int, torch.Tensor], None]) -> contextlib.AbstractContextManager[None]:
        """Within the block, the loop driver calls ``observer(t, h_t)`` after each pass t = 1 … T."""
        return self._setting("observer", observer)

    @contextlib.contextmanager
    def metering(self) -> Iterator[list[torch.Tensor]]:
        """Within the block, every adaptive-depth forward appends the loops its last position used (B,)."""
        used: list[torch.Tensor] = []
        with self._setting("meter", used):
            yield used

    def record_loops(self, steps: torch.Tensor) -> None:
        """Called by the model after an adaptive-depth forward, with the last position's loop counts."""
        used = self._get("meter")
        if used is not None:
            used.append(steps.detach().cpu())

    def at_loop(self, t: int | None) -> contextlib.AbstractContextManager[None]:
        return self._setting("loop", t)

    def forwarding(self, state: Any) -> contextlib.AbstractContextManager[None]:
        return self._setting("forward", state)
