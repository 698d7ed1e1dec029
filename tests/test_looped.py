"""What both model kinds do alike, one test over each: OpenMythos (GQA and MLA, ACT halting on) and retrofits
of three families, through their transformers classes and the one runner they share."""

from __future__ import annotations

import pytest
import torch
from tiny import LOOPED_KINDS, looped_model

from mythic.errors import MythicError


def tokens(batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 64, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", LOOPED_KINDS)
@pytest.mark.parametrize("n_loops", [1, 2, 4, 7])
def test_cached_decoding_equals_the_uncached_forward(kind: str, n_loops: int) -> None:
    """A prefill, a chunk prefilled on top of the cache, then one token a call: the logits of one uncached
    forward, every (loop, block layer) pair in a slot of its own."""
    model, x = looped_model(kind), tokens(length=14)
    with torch.no_grad():
        full = model(x, n_loops=n_loops, use_cache=False).logits
        cache = model.new_cache()
        pieces = [model(x[:, a:b], n_loops=n_loops, cache=cache, use_cache=True).logits for a, b in ((0, 5), (5, 9))]
        pieces += [model(x[:, i : i + 1], n_loops=n_loops, cache=cache, use_cache=True).logits for i in range(9, 14)]
    assert (full - torch.cat(pieces, 1)).abs().max().item() <= 1e-5
    assert cache.n_loop_slots == n_loops


@pytest.mark.parametrize("kind", LOOPED_KINDS)
def test_a_cache_refuses_a_loop_that_lacks_its_tokens(kind: str) -> None:
    """Prefill at 2 loops, decode at 4: loops 2 and 3 have no keys for the prompt, a one-line error. The same
    depth matches the uncached forward; a lower depth runs (its prompt keys after the block come from the deeper
    prefill), and going back up afterwards is refused because the skipped loop lacks the newest token."""
    model, x = looped_model(kind), tokens(length=10)
    with torch.no_grad():
        cache = model.new_cache()
        model(x[:, :8], n_loops=2, cache=cache, use_cache=True)
        with pytest.raises(MythicError, match="holds 0 tokens for loop 2 but 8 before it"):
            model(x[:, 8:9], n_loops=4, cache=cache, use_cache=True)
        cache = model.new_cache()
        model(x[:, :7], n_loops=3, cache=cache, use_cache=True)
        same = model(x[:, 7:8], n_loops=3, cache=cache, use_cache=True).logits[:, -1]
        torch.testing.assert_close(same, model(x[:, :8], n_loops=3).logits[:, -1], rtol=1e-4, atol=1e-5)
        lower = model(x[:, 8:9], n_loops=2, cache=cache, use_cache=True).logits[:, -1]
        assert bool(torch.isfinite(lower).all())
        with pytest.raises(MythicError, match="holds 8 tokens for loop 2 but 9 before it"):
            model(x[:, 9:10], n_loops=3, cache=cache, use_cache=True)
