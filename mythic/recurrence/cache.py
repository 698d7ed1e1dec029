"""Per-(loop, layer) KV slots on top of transformers' ``DynamicCache``.

A base with L layers whose block is layers [s, e) (k = e − s) gets

    slot(0, j) = j                          the base's own slots (loop 0, prelude, coda)
    slot(t, j) = L + (t − 1)·k + (j − s)    for t ≥ 1 and s ≤ j < e

so every pass of every block layer has its own keys and values; reusing one slot for
two passes corrupts prefill silently and crashes at decode (prior art). Extra slots are
created on first use with the cache-layer type of the block layer they mirror (full,
sliding-window, KV-sharing dummy), so any loop count works without sizing the cache up
front. The loop driver hands each pass a ``LoopSlots`` view whose ``update`` remaps the
attention module's ``layer_idx``; everything else (sequence length, masks, beam
reordering, cropping) is the DynamicCache's own.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache, PreTrainedConfig
from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING, get_layer_types_and_kwargs

from mythic.errors import MythicError


class LoopCache(DynamicCache):
    """A DynamicCache with one slot per (loop, block layer)."""

    def __init__(self, config: PreTrainedConfig, block_start: int, block_end: int) -> None:
        super().__init__(config=config)
        self.n_base = len(self.layers)
        self.block_start, self.block_end = block_start, block_end
        types, kwargs = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
        self._block_layers = [(DYNAMIC_LAYER_TYPE_MAPPING[types[j]], kwargs[j]) for j in range(block_start, block_end)]

    def slot(self, t: int, layer_idx: int) -> int:
        if t == 0:
            return layer_idx
        k = self.block_end - self.block_start
        return self.n_base + (t - 1) * k + (layer_idx - self.block_start)

    def _ensure(self, idx: int) -> None:
        while len(self.layers) <= idx:
            layer_class, layer_kwargs = self._block_layers[(len(self.layers) - self.n_base) % len(self._block_layers)]
            self.layers.append(layer_class(**layer_kwargs))

    def check_loop(self, t: int, past: int) -> None:
        """Pass t ≥ 1 may only extend slots that hold exactly the ``past`` tokens every base slot held
        before this call: a loop count raised (or lowered, then raised) on a cache holding tokens would
        attend to missing or stale keys, so it is refused."""
        idx = self.slot(t, self.block_start)
        held = self.layers[idx].get_seq_length() if idx < len(self.layers) else 0
        if held != past:
            raise MythicError(
                f"the KV cache holds {held} tokens for loop {t} but {past} before it: keep n_loops the same "
                "(or lower) for every call on one cache, or start a new cache"
            )

    def at_loop(self, t: int) -> LoopCache | LoopSlots:
        return self if t == 0 else LoopSlots(self, t)

    @property
    def n_loop_slots(self) -> int:
        """How many passes of the block have their own slots so far (1 + extra passes)."""
        return 1 + (len(self.layers) - self.n_base) // (self.block_end - self.block_start)


class LoopSlots:
    """The cache as seen by pass t ≥ 1 of the block: ``update`` writes slot(t, layer_idx)."""

    def __init__(self, cache: LoopCache, t: int) -> None:
        self.cache, self.t = cache, t

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.cache.slot(self.t, layer_idx)
        self.cache._ensure(idx)
        return self.cache.update(key_states, value_states, idx, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cache, name)
