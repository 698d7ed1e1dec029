"""Per-(loop, layer) KV slots on top of transformers' ``DynamicCache``.

A base with L layers whose block is layers [s, e) (k = e − s) gets

    slot(0, j) = j                          the base's own slots (loop 0, prelude, coda)
    slot(t, j) = L + (t − 1)·k + (j − s)    for t ≥ 1 and s ≤ j < e

so every pass of every block layer has its own keys and values (sharing one slot between two
passes corrupts prefill silently). Extra slots are created on first use with the cache-layer type of
the block layer they mirror (full, sliding-window, KV-sharing dummy), so any loop count works. Each
pass writes through a view (``CacheView``) whose ``update`` remaps the attention module's
``layer_idx``; everything else (sequence length, masks, beam reordering, cropping) is the cache's own:

    LoopSlots    pass t ≥ 1: slot(t, j)
    SharedPass   ``kv_share: last`` (Ouro): every pass beyond the first shares slot(1, j), which keeps each
                 token's last-pass entries: (L + k)/L of the T = 1 cache instead of (L + (T − 1)·k)/L
    FillForward  adaptive exit (``exit.py``): exited positions present their last computed pass's entries
    Compacted    adaptive exit: a pass computed for some rows (and tokens) alone
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Cache, DynamicCache, PreTrainedConfig
from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING, get_layer_types_and_kwargs

from mythic.errors import MythicError

LayerSpec = tuple[type, dict[str, Any]]  # a cache layer class and its keyword arguments


class LoopCache(DynamicCache):
    """A DynamicCache with one slot per (loop, block layer), over the model's ``layers`` (one cache-layer spec
    per layer; ``of_config`` reads them off a transformers config) whose block is layers [start, end)."""

    def __init__(self, layers: list[LayerSpec], block_start: int, block_end: int) -> None:
        Cache.__init__(self, layers=[layer_class(**kwargs) for layer_class, kwargs in layers])
        self.n_base = len(self.layers)
        self.block_start, self.block_end = block_start, block_end
        self._block_layers = layers[block_start:block_end]

    @classmethod
    def of_config(cls, config: PreTrainedConfig, block_start: int, block_end: int) -> LoopCache:
        """The cache of a transformers model whose layers [block_start, block_end) loop (each layer's own type:
        full, sliding-window, KV-sharing)."""
        types, kwargs = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
        specs = [(DYNAMIC_LAYER_TYPE_MAPPING[kind], kw) for kind, kw in zip(types, kwargs, strict=True)]
        return cls(specs, block_start, block_end)

    def slot(self, t: int, layer_idx: int) -> int:
        if t == 0:
            return layer_idx
        k = self.block_end - self.block_start
        return self.n_base + (t - 1) * k + (layer_idx - self.block_start)

    def ensure_slot(self, idx: int) -> None:
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


class View:
    """A view of a cache: its own ``update(keys, values, layer_idx)``; every other attribute (sequence
    length, mask sizes, layer types …, what attention code reads) is the cache's below it (``self.cache``)."""

    cache: Any

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cache, name)


class LoopSlots(View):
    """The cache as seen by pass t ≥ 1 of the block: ``update`` writes slot(t, layer_idx)."""

    def __init__(self, cache: LoopCache, t: int) -> None:
        self.cache, self.t = cache, t

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.cache.slot(self.t, layer_idx)
        self.cache.ensure_slot(idx)
        return self.cache.update(key_states, value_states, idx, *args, **kwargs)


Written = dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]


class FillForward(View):
    """The cache as seen by pass t of an adaptive-depth forward (see ``exit.py``).

    ``update`` writes as usual, except that ``frozen`` positions (B, q) get the keys and values
    this forward wrote for them at pass t − 1 (their last computed pass, or filled forward
    already) instead of those just computed from their frozen state. Every write is recorded in
    ``written[(t, layer_idx)]`` (the forward's own entries: a sliding-window layer's storage may
    already have dropped some; ``layer_idx`` is the block layer's own index at every pass, the view
    below remapping it to the pass's slot). ``fill`` writes a skipped pass: every layer's entries of
    pass t − 1.
    """

    def __init__(
        self, cache: LoopCache | LoopSlots | SharedPass, t: int, frozen: torch.Tensor | None, written: Written
    ) -> None:
        self.cache, self.t, self.frozen, self.written = cache, t, frozen, written

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.frozen is not None:
            prev_keys, prev_values = self.written[(self.t - 1, layer_idx)]
            mask = self.frozen.view(self.frozen.shape[0], 1, self.frozen.shape[1], 1)
            key_states = torch.where(mask, prev_keys, key_states)
            value_states = torch.where(mask, prev_values, value_states)
        self.written[(self.t, layer_idx)] = (key_states, value_states)
        return self.cache.update(key_states, value_states, layer_idx, *args, **kwargs)

    def fill(self) -> None:
        """Pass t is skipped: append every layer's pass t − 1 entries as its own."""
        for t, layer in [key for key in self.written if key[0] == self.t - 1]:
            keys, values = self.written[(t, layer)]
            self.written[(self.t, layer)] = (keys, values)
            self.cache.update(keys, values, layer)


class Compacted(View):
    """The cache as seen by a pass computed for a subset of the batch (adaptive exit): the batch rows
    ``rows`` (R,) of ``batch`` and in them the new tokens ``index`` (R, Q) of ``length`` (None: all of
    them, in order). ``update`` scatters their keys and values into full tensors for ``inner`` — a
    ``FillForward`` view, which puts the exited tokens' own entries in every other place (padding indices
    must point at exited tokens or repeat a computed one) — and returns the keys and values of the rows
    computed."""

    def __init__(
        self, inner: FillForward, rows: torch.Tensor, index: torch.Tensor | None, batch: int, length: int
    ) -> None:
        self.cache, self.rows, self.index, self.batch, self.length = inner, rows, index, batch, length

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.cache.update(
            self._scatter(key_states), self._scatter(value_states), layer_idx, *args, **kwargs
        )
        return keys[self.rows], values[self.rows]

    def _scatter(self, states: torch.Tensor) -> torch.Tensor:
        r, h, _, d = states.shape
        positions = states
        if self.index is not None:
            positions = states.new_zeros(r, h, self.length, d).scatter(
                2, self.index.view(r, 1, -1, 1).expand(r, h, -1, d), states
            )
        return states.new_zeros(self.batch, h, self.length, d).index_copy(0, self.rows, positions)


KV_SHARE = (None, "last")


def check_kv_share(value: str | None) -> None:
    """One-line error for a ``kv_share`` setting other than None (every pass its own slots) or "last"."""
    if value not in KV_SHARE:
        raise MythicError(f"kv_share must be 'last' or unset, got {value!r}")


class SharedPass(LoopSlots):
    """KV sharing across loops (``kv_share: last``, Ouro): the cache as seen by pass t ≥ 1, which
    reads and writes the slots of pass 1, shared by every pass beyond the first.

    The pass attends to the stored tokens' entries — those of their last pass — followed by this
    call's tokens' entries of pass t; only the last pass (``store``) appends its entries, so the
    slot holds one pass's keys per token whatever the loop count."""

    def __init__(self, cache: LoopCache, store: bool) -> None:
        super().__init__(cache, 1)
        self.store = store

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.store:
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        idx = self.cache.slot(1, layer_idx)
        layer = self.cache.layers[idx] if idx < len(self.cache.layers) else None
        if layer is None or getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            return key_states, value_states
        return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)


CacheView = LoopCache | View  # what a pass writes its keys and values through: the cache or a view of it
