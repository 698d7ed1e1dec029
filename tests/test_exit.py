"""Adaptive depth (``n_loops = AdaptiveDepth``): what an adaptive run computes, on both model kinds.

- a criterion that never fires computes fixed T = MAX bit for bit;
- with exits forced at chosen loops per position, decoding token by token (fill-forward keys and
  values in the cache) equals one uncached forward over the whole sequence that applies the
  same rule, and a pass nobody runs is skipped;
- where only some positions are read (``logits_to_keep``, generate's prefill), the others run as
  long as their row's read positions do;
- the loops used are metered; bad settings are one-line errors.
"""

from __future__ import annotations

import pytest
import torch
from test_retrofit import ids, wrap
from tiny import LOOPED_KINDS, looped_model, tiny_mythos

from mythic.cli.options import parse_loops
from mythic.errors import MythicError
from mythic.models.openmythos import OpenMythos
from mythic.recurrence.exit import AdaptiveDepth, ExitRun, parse_exit, read_mask, read_positions


def mythos_model(attn_type: str = "gqa", act: bool = False) -> OpenMythos:
    torch.manual_seed(0)
    return OpenMythos(tiny_mythos(attn_type, act=act, init_std=0.2)).eval()


class Forced:
    """Exit after a chosen number of passes per (row, absolute position); ``offset`` = tokens already cached."""

    def __init__(self, depth: torch.Tensor) -> None:
        self.depth = depth
        self.offset = 0
        self.passes: list[int] = []

    def __call__(self, h: torch.Tensor, h_next: torch.Tensor, t: int) -> torch.Tensor:
        self.passes.append(t)
        q = h.shape[1]
        return t + 1 >= self.depth[:, self.offset : self.offset + q]


@pytest.fixture
def forced(monkeypatch: pytest.MonkeyPatch):
    """Install a ``Forced`` criterion into every ExitRun created while the test runs."""

    original = ExitRun.__init__

    def install(depth: torch.Tensor) -> Forced:
        rule = Forced(depth)

        def init(self, spec, e, **kwargs):
            original(self, spec, e, **kwargs, fires=rule)

        monkeypatch.setattr(ExitRun, "__init__", init)
        return rule

    return install


NEVER = AdaptiveDepth(6, "convergence", 1e-30)


def looped(kind: str) -> torch.nn.Module:
    """A looped model of either kind (``tiny.looped_model``), OpenMythos without halting or loop convolution
    (which refuses adaptive depth) at init_std 0.2."""
    if kind.startswith("openmythos"):
        return looped_model(kind, act=False, init_std=0.2, loop_conv=0)
    return looped_model(kind)


@pytest.mark.parametrize("kind", LOOPED_KINDS)
def test_criterion_that_never_fires_is_fixed_depth_bit_for_bit(kind: str) -> None:
    model = looped(kind)
    x = ids(length=10) % 64
    with torch.no_grad():
        fixed = model(x, n_loops=6, use_cache=False).logits
        assert (model(x, n_loops=NEVER, use_cache=False).logits - fixed).abs().max().item() == 0.0
    assert torch.equal(
        model.generate(x, max_new_tokens=5, do_sample=False, n_loops=6),
        model.generate(x, max_new_tokens=5, do_sample=False, n_loops=NEVER),
    )


def depths(batch: int, length: int, max_loops: int) -> torch.Tensor:
    """A different exit loop for every (row, position), between 1 and max_loops."""
    pos = torch.arange(length)
    return 1 + (pos.view(1, -1) * 5 + torch.arange(batch).view(-1, 1) * 3) % max_loops


def decode_pieces(model, x: torch.Tensor, rule: Forced, depth: AdaptiveDepth, split: int, read: int = 0):
    """x[:, :split] in one call (its logits read at its last ``read`` positions, 0: all), then one token per call."""
    cache = model.new_cache()
    pieces = []
    for start, end in [(0, split), *((i, i + 1) for i in range(split, x.shape[1]))]:
        rule.offset = start
        keep = read if start == 0 else 0
        pieces.append(model(x[:, start:end], n_loops=depth, cache=cache, use_cache=True, logits_to_keep=keep).logits)
    return torch.cat(pieces, 1)


@pytest.mark.parametrize("kind", LOOPED_KINDS)
def test_forced_exits_decode_equals_one_uncached_forward(forced, kind: str) -> None:
    model = looped(kind)
    x = ids(length=12) % 64
    depth = AdaptiveDepth(5, "convergence", 0.01)
    rule = forced(depths(2, 12, 5))
    with torch.no_grad():
        full = model(x, n_loops=depth, use_cache=False).logits
        fixed = model(x, n_loops=5, use_cache=False).logits
        pieces = decode_pieces(model, x, rule, depth, split=7)
    assert (full - pieces).abs().max().item() <= 1e-5
    assert (full - fixed).abs().max().item() > 1e-3, "the forced exits must change the answer"


@pytest.mark.parametrize("kind", ["openmythos-gqa", "retrofit-llama"])
def test_context_positions_run_as_long_as_their_rows_read_position(forced, kind: str) -> None:
    """A prompt read at its last position only (generate's prefill): the criterion decides there; every
    earlier prompt position runs as many passes as it does. So prefill + token-by-token decoding equals
    one uncached forward, every position read, in which the prompt's positions exit with its last one."""
    model = looped(kind)
    x = ids(length=12) % 64
    split = 7
    own = depths(2, 12, 5)
    own[:, split - 1] = torch.tensor(
        [4, 2]
    )  # the rows' read prompt positions: deeper than some context, shallower than others
    rule = forced(own)
    followed = own.clone()
    followed[:, : split - 1] = own[:, split - 1 : split]
    depth = AdaptiveDepth(5, "convergence", 0.01)
    with torch.no_grad():
        pieces = decode_pieces(model, x, rule, depth, split, read=1)
        every_position = decode_pieces(model, x, rule, depth, split)[:, split - 1 :]
        rule.depth, rule.offset = followed, 0
        full = model(x, n_loops=depth, use_cache=False).logits
    assert pieces.shape[1] == x.shape[1] - split + 1
    assert (full[:, split - 1 :] - pieces).abs().max().item() <= 1e-5
    assert (every_position - pieces).abs().max().item() > 1e-3, "the context rule must change the answer"


def test_kl_reads_out_only_the_read_positions() -> None:
    model = mythos_model()
    seen: list[int] = []
    head = model.readout
    model.readout = lambda h: seen.append(h.shape[1]) or head(h)
    x = ids(length=9) % 64
    never = AdaptiveDepth(4, "kl", 1e-30)
    with torch.no_grad():
        last = model(x, never, logits_to_keep=1)
        assert seen == [1] * 4
        seen.clear()
        every = model(x, never)
    assert seen == [9] * 4
    assert (last[:, -1] - every[:, -1]).abs().max().item() <= 1e-5, "a criterion that never fires: the same passes"


def test_context_positions_ignore_their_own_criterion_and_halting() -> None:
    spec = AdaptiveDepth(8, "convergence", 0.1)
    h0 = torch.ones(2, 3, 4)
    run = ExitRun(spec, h0, read=1)
    halted_context = torch.tensor([[False, False, True], [False, True, True]])  # halting: context positions done
    assert run.begin(0, halted_context).tolist() == [[True, True, True], [True, True, True]]
    settled_context = h0 * torch.tensor([[1.0, 1.0, 1.5], [1.0, 1.5, 1.0]]).unsqueeze(-1)
    run.update(h0, settled_context, 0)
    assert run.running.tolist() == [[True, True, True], [False, False, False]], "a row follows its read position"
    assert run.begin(1, torch.tensor([[True, True, False], [True, True, True]])).tolist() == [
        [True, True, False],
        [False, False, False],
    ], "halting still decides at the read position"


def test_read_positions_from_logits_to_keep() -> None:
    e = torch.zeros(2, 5, 4)
    index, context = read_positions(2, e)
    assert index.tolist() == [3, 4] and context.tolist() == [True, True, True, False, False]
    assert read_positions(0, e) == (slice(None), None)
    assert read_positions(9, e) == (slice(None), None)
    index, context = read_positions(torch.tensor([0, 3]), e)
    assert index.tolist() == [0, 3] and context.tolist() == [False, True, True, False, True]
    assert read_mask(torch.tensor([0, 3]), e).tolist() == [[True, False, False, True, False]] * 2
    with pytest.raises(MythicError, match="logits_to_keep"):
        read_positions(-1, e)
    with pytest.raises(MythicError, match="1-D index"):
        read_positions(torch.ones(2, 5, dtype=torch.bool), e)
    with pytest.raises(MythicError, match="batch, length"):
        read_mask(torch.ones(2, 4, dtype=torch.bool), e)


def test_fill_forward_keys_are_the_last_computed_pass(forced) -> None:
    """Positions that exited present their last computed pass's keys at every later pass, and a
    pass that no position runs is skipped (not computed) but still gets its cache entries."""
    model = mythos_model()
    x = ids(batch=1, length=6) % 64
    rule = forced(torch.tensor([[1, 3, 2, 1, 2, 2]]))
    cache = model.new_cache()
    with torch.no_grad(), model.recurrence.context.metering() as used:
        model(x, AdaptiveDepth(5, "convergence", 0.01), cache=cache)
    keys = [cache.layers[cache.slot(t, cache.block_start)].keys[0] for t in range(5)]  # (H, S, D) per pass
    for pos, exit_after in enumerate([1, 3, 2, 1, 2, 2]):
        for t in range(exit_after, 5):
            assert torch.equal(keys[t][:, pos], keys[exit_after - 1][:, pos])
        if exit_after > 1:
            assert not torch.equal(keys[exit_after - 1][:, pos], keys[exit_after - 2][:, pos])
    assert max(rule.passes) == 2, "passes 3 and 4 ran for nobody and were skipped"
    assert [u.tolist() for u in used] == [[2]], "the last position's loops are metered"


def test_convergence_criterion_exits_where_the_change_falls_below_eps() -> None:
    spec = AdaptiveDepth(8, "convergence", 0.1)
    h0 = torch.ones(1, 3, 4)
    run = ExitRun(spec, h0)
    h1 = h0 * torch.tensor([1.05, 1.5, 1.0]).view(1, 3, 1)  # changes 0.05, 0.5, 0.0
    run.begin(0)
    run.update(h0, h1, 0)
    assert run.running.tolist() == [[False, True, False]]
    assert run.steps.tolist() == [[1, 1, 1]]
    run.begin(1)
    run.update(h1, h1 * 2, 1)
    assert run.steps.tolist() == [[1, 2, 1]]
    assert run.frozen(1).tolist() == [[True, False, True]]


def test_kl_criterion_compares_successive_readouts() -> None:
    spec = AdaptiveDepth(8, "kl", 1e-3)
    readout = torch.nn.Identity()
    h0 = torch.zeros(1, 2, 5)
    run = ExitRun(spec, h0, readout=readout)
    h1 = torch.tensor([[[0.0, 0, 0, 0, 0], [3.0, 0, 0, 0, 0]]])
    run.begin(0)
    run.update(h0, h1, 0)
    assert run.running.all(), "no KL before two readouts exist"
    h2 = torch.tensor([[[0.0, 0, 0, 0, 0.001], [0.0, 3, 0, 0, 0]]])
    run.begin(1)
    run.update(h1, h2, 1)
    assert run.running.tolist() == [[False, True]]


def test_act_exit_on_openmythos_uses_the_halting_head_and_stops_when_all_halted() -> None:
    model = mythos_model(act=True)
    with torch.no_grad():
        model.recurrence.halting.proj.bias.fill_(10.0)  # p ≈ 1: every position halts after its first pass
        x = ids(length=8) % 64
        with model.recurrence.context.metering() as used:
            out = model(x, AdaptiveDepth(6, "act", None))
        assert (out - model(x, 1)).abs().max().item() <= 1e-5
    assert used[0].tolist() == [1, 1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("auto:0", "MAX >= 1"),
        ("auto:x", "integer MAX"),
        ("0", "positive integers"),
        ("two", "positive integers"),
        ("", "positive integers"),
    ],
)
def test_bad_loops_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(MythicError, match=message):
        parse_loops(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("convergence:0", "EPS > 0"),
        ("convergence:-1", "EPS > 0"),
        ("kl:nan", "EPS > 0"),
        ("kl:abc", "needs a number"),
        ("kl", "needs a number"),
        ("act:0.5", "no EPS"),
        ("act:foo", "no EPS"),
        ("patience:3", "unknown criterion"),
    ],
)
def test_bad_exit_rules_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(MythicError, match=message):
        parse_exit(text)


def test_act_exit_needs_a_halting_head() -> None:
    x = ids(length=5) % 64
    with pytest.raises(MythicError, match="halting head"):
        mythos_model(act=False)(x, AdaptiveDepth(4, "act", None))
    _, retrofit = wrap("llama")
    with pytest.raises(MythicError, match="halting head"):
        retrofit(ids(length=5), n_loops=AdaptiveDepth(4, "act", None))


def test_parse_loops_mixes_fixed_and_adaptive_rows() -> None:
    rows = parse_loops("1,4,auto:16,auto", "kl:0.001")
    assert rows[:2] == [1, 4]
    assert rows[2] == AdaptiveDepth(16, "kl", 0.001)
    assert rows[3].limit is None and rows[3].bounded(8).limit == 8
    assert rows[2].label == "auto:16" and rows[2].rule == "kl:0.001"
    model = mythos_model()  # max_loop_iters=4: auto without MAX loops at most 4 times
    with torch.no_grad():
        x = ids(length=6) % 64
        never = AdaptiveDepth(None, "convergence", 1e-30)
        assert (model(x, never) - model(x, 4)).abs().max().item() == 0.0


def test_kv_share_keeps_the_last_pass_per_token_and_decodes_from_it() -> None:
    """With kv_share the cache keeps, beyond the first loop, one slot holding each token's last-pass
    keys; a decoded token's pass t attends to them. Reference: the unshared cache with the slots of
    passes 1 … T − 2 overwritten by those of pass T − 1."""
    model = mythos_model()
    x = ids(length=10) % 64
    with torch.no_grad():
        shared, plain = model.new_cache(), model.new_cache()
        slot = lambda t: plain.slot(t, plain.block_start)  # noqa: E731 - pass t's slot of the block
        a = model(x[:, :9], 4, cache=shared, kv_share=True)
        b = model(x[:, :9], 4, cache=plain)
        assert (a - b).abs().max().item() == 0.0, "within one forward nothing is shared"
        assert len(shared.layers) == shared.n_base + 1 and len(plain.layers) == plain.n_base + 3
        assert torch.equal(shared.layers[slot(1)].keys, plain.layers[slot(3)].keys)
        for t in (1, 2):
            plain.layers[slot(t)].keys = plain.layers[slot(3)].keys.clone()
            plain.layers[slot(t)].values = plain.layers[slot(3)].values.clone()
        step_shared = model(x[:, 9:], 4, cache=shared, kv_share=True)
        step_reference = model(x[:, 9:], 4, cache=plain)
        fresh = model.new_cache()
        model(x[:, :9], 4, cache=fresh)
        step_plain = model(x[:, 9:], 4, cache=fresh)
    assert (step_shared - step_reference).abs().max().item() <= 1e-6
    assert (step_shared - step_plain).abs().max().item() > 1e-4, "sharing changes what a decoded token sees"


def test_kv_share_with_two_loops_or_fewer_changes_nothing() -> None:
    model = mythos_model()
    x = ids(batch=1, length=8) % 64
    with torch.no_grad():
        for n in (1, 2):
            shared, plain = model.new_cache(), model.new_cache()
            outs = []
            for cache, share in ((shared, True), (plain, False)):
                pieces = [model(x[:, :5], n, cache=cache, kv_share=share)]
                pieces += [model(x[:, i : i + 1], n, cache=cache, kv_share=share) for i in range(5, 8)]
                outs.append(torch.cat(pieces, 1))
            assert (outs[0] - outs[1]).abs().max().item() == 0.0


@pytest.mark.parametrize("family", ["llama", "deepseek_v2"])
def test_retrofit_kv_share_cache_holds_two_slot_sets_and_matches_its_reference(family: str) -> None:
    _, model = wrap(family, perturb=True)
    x = ids(length=10)
    model.config.kv_share = "last"
    with torch.no_grad():
        shared = model.new_cache()
        model(x[:, :9], n_loops=4, cache=shared, use_cache=True)
        assert shared.n_loop_slots == 2, "loop 0 in the base's slots, every later loop in one set"
        step_shared = model(x[:, 9:], n_loops=4, cache=shared, use_cache=True).logits
        model.config.kv_share = None
        plain = model.new_cache()
        model(x[:, :9], n_loops=4, cache=plain, use_cache=True)
        for j in range(model.config.block_start, model.config.block_end):
            last = plain.layers[plain.slot(3, j)]
            for t in (1, 2):
                plain.layers[plain.slot(t, j)].keys = last.keys.clone()
                plain.layers[plain.slot(t, j)].values = last.values.clone()
        step_reference = model(x[:, 9:], n_loops=4, cache=plain, use_cache=True).logits
    assert (step_shared - step_reference).abs().max().item() <= 1e-5


def test_kv_share_with_an_exit_that_never_fires_is_fixed_depth_kv_share() -> None:
    _, model = wrap("llama", perturb=True)
    model.config.kv_share = "last"
    x = ids(length=8)
    assert torch.equal(
        model.generate(x, max_new_tokens=5, do_sample=False, n_loops=6),
        model.generate(x, max_new_tokens=5, do_sample=False, n_loops=NEVER),
    )
    model.config.kv_share = "first"
    with pytest.raises(MythicError, match="kv_share must be 'last'"):
        model(x, n_loops=2)


@pytest.mark.parametrize("attn_type", ["gqa", "mla"])
def test_passes_for_the_running_tokens_only_equal_the_masked_passes(
    forced, monkeypatch: pytest.MonkeyPatch, attn_type: str
) -> None:
    """Computing a pass for the running tokens alone (gathered, padded per row) gives what the full
    masked pass gives, prefill and decode, rows with no running token included."""
    from mythic.recurrence import exit as exiting

    model = looped(f"openmythos-{attn_type}")
    x = ids(batch=3, length=12) % 64
    depth = AdaptiveDepth(6, "convergence", 0.01)
    exits = depths(3, 12, 6)
    exits[2] = 1  # the last row stops after one loop everywhere: no running token at later passes
    outs = []
    computed: list[tuple[int, int]] = []
    block = model.model.block
    original = type(block).forward
    monkeypatch.setattr(
        block, "forward", lambda h, *a, **k: computed.append(h.shape[:2]) or original(block, h, *a, **k)
    )
    for share in (0.0, 2.0):  # never compact, always compact
        monkeypatch.setattr(exiting, "COMPACT_BELOW", share)
        rule = forced(exits)
        with torch.no_grad():
            full = model(x, n_loops=depth, use_cache=False).logits  # first: decode_pieces moves the rule's offset
            outs.append((full, decode_pieces(model, x, rule, depth, split=8)))
    (full_masked, pieces_masked), (full_compact, pieces_compact) = outs
    assert (full_masked - full_compact).abs().max().item() <= 1e-5
    assert (pieces_masked - pieces_compact).abs().max().item() <= 1e-5
    assert (full_compact - pieces_compact).abs().max().item() <= 1e-5
    half = len(computed) // 2
    assert set(computed[:half]) == {(3, 12), (3, 8), (3, 1)}, "masked: every row and token at every pass"
    assert (2, 1) in computed[half:] and (1, 1) in computed[half:], "decoding: the exited rows leave the pass"
    assert min(r * q for r, q in computed[half:]) < 12, "prefill: rows and tokens gathered"


@pytest.mark.parametrize(
    ("family", "block_end", "separable"),
    [("llama", 3, True), ("deepseek_v2", 3, True), ("gemma4_text", 2, True), ("gemma4_text", 3, False)],
)
def test_retrofit_passes_for_the_running_rows_only_equal_the_masked_passes(
    forced, monkeypatch: pytest.MonkeyPatch, family: str, block_end: int, separable: bool
) -> None:
    """A retrofit pass computed for the rows that still run (hidden states, masks, rotary tables and
    cache rows gathered) gives what the full masked pass gives: a left-padded prefill, then decoding.
    The tiny gemma4's layer 2 stores keys that its layers 4–5 reuse: a block holding it runs whole."""
    from mythic.models.families import batch_separable
    from mythic.recurrence import exit as exiting

    _, model = wrap(family, perturb=True, block_end=block_end)
    assert all(batch_separable(slot.layer) for slot in model.base.model.layers[1:block_end]) == separable
    x = ids(batch=3, length=12)
    padding = torch.ones_like(x)
    padding[1, :3] = 0
    depth = AdaptiveDepth(5, "convergence", 0.01)
    exits = depths(3, 12, 5)
    exits[2] = 1  # the last row stops after one loop everywhere
    exits[0, 7:] = 2  # the first row's decoded tokens stop after two
    first = model.base.model.layers[1].layer
    rows_seen: list[int] = []
    first.register_forward_pre_hook(lambda module, args: rows_seen.append(args[0].shape[0]))
    outs = []
    for share in (0.0, 2.0):  # never gather, always gather
        monkeypatch.setattr(exiting, "COMPACT_BELOW", share)
        rule = forced(exits)
        cache = model.new_cache()
        pieces = []
        with torch.no_grad():
            for start, end in [(0, 8), *((i, i + 1) for i in range(8, 12))]:
                rule.offset = start
                out = model(
                    x[:, start:end], attention_mask=padding[:, :end], n_loops=depth, cache=cache, use_cache=True
                )
                pieces.append(out.logits)
        outs.append(torch.cat(pieces, 1))
    assert (outs[0] - outs[1]).abs().max().item() <= 1e-5
    half = len(rows_seen) // 2
    assert set(rows_seen[:half]) == {3}
    if separable:
        assert {1, 2} <= set(rows_seen[half:]), "the exited rows left the pass"
    else:
        assert set(rows_seen[half:]) == {3}, "layers sharing keys across layers run the whole batch"


def test_batch_rows_indexes_the_batch_dimension_only() -> None:
    from mythic.models.retrofit import batch_rows

    rows = torch.tensor([0, 2])
    call = (torch.arange(12).view(3, 4), {"positions": torch.arange(3), "mask": torch.ones(1, 1, 2, 2)}, [None])
    args, kwargs, rest = batch_rows(call, rows, 3)
    assert args.tolist() == [[0, 1, 2, 3], [8, 9, 10, 11]]
    assert kwargs["positions"].tolist() == [0, 1, 2], "one dim: not a batch"
    assert kwargs["mask"].shape == (1, 1, 2, 2), "broadcast over the batch: kept"
    assert rest == [None]


def test_running_index_pads_rows_with_a_computed_or_an_exited_token() -> None:
    from mythic.recurrence.exit import running_index

    running = torch.tensor([[False, True, False, True], [False, False, False, False], [True, False, False, False]])
    assert running_index(running).tolist() == [[1, 3], [0, 0], [0, 0]]


@pytest.mark.parametrize("kind", LOOPED_KINDS)
def test_per_sequence_depths_compute_the_running_rows_alone_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A training forward with per-sequence depths computes a pass past the shallowest depth for the rows
    that still run (OpenMythos with its loop convolution and padding, truncated backprop): logits as the
    full masked passes give them, every gradient to float32 summation order."""
    from mythic.recurrence import exit as exiting
    from mythic.recurrence import runner

    model = looped_model(kind, act=False) if kind.startswith("openmythos") else looped_model(kind)
    x = ids(batch=4, length=10) % 64
    mask = torch.ones_like(x)
    mask[1, :3] = 0
    depths = torch.tensor([1, 4, 2, 4])
    rows: list[int] = []
    original = runner.compacted
    monkeypatch.setattr(
        runner,
        "compacted",
        lambda block, x, view, frozen, tokens: (
            rows.append(int((~frozen).any(1).sum())) or original(block, x, view, frozen, tokens)
        ),
    )
    results = []
    for share in (0.0, 2.0):  # never compact, always compact
        monkeypatch.setattr(exiting, "COMPACT_BELOW", share)
        model.zero_grad()
        logits = model(x, n_loops=depths, attention_mask=mask, grad_loops=2, use_cache=False).logits
        (logits * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((logits.detach(), grads))
    (full, full_grads), (compact, compact_grads) = results
    assert float(full_grads.abs().max()) > 0
    assert float((full - compact).abs().max()) <= 1e-6
    assert float((full_grads - compact_grads).abs().max()) <= 1e-5 * float(full_grads.abs().max())
    separable = kind != "retrofit-gemma4_text"  # the tiny gemma4 block shares keys across layers: never split
    assert rows == ([3, 2, 2] if separable else []), "passes 1, 2, 3 for the rows of depth > t alone"
