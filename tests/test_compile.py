"""torch.compile: OpenMythos and the retrofit wrapper compile without graph breaks, for a training step and
for cached decoding, and the compiled model computes what the eager one does.

The default suite compiles with the ``aot_eager`` backend (dynamo's graph capture and AOT autograd,
eager kernels: seconds); the slow tests run inductor, the backend ``--compile`` and ``train.compile`` use.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo as dynamo
from test_retrofit import ids, wrap
from tiny import tiny_mythos
from torch._dynamo.testing import CompileCounterWithBackend

from mythic.models.openmythos import OpenMythosConfig, OpenMythosForCausalLM
from mythic.models.openmythos.moe import expert_outputs, grouped_experts

TOLERANCE = 1e-5
"""fp32: reassociation inside fused graphs moves results by a few ulps, never more."""


@pytest.fixture(autouse=True)
def fresh_dynamo() -> None:
    dynamo.reset()


def mythos(attn: str) -> OpenMythosForCausalLM:
    torch.manual_seed(0)
    return OpenMythosForCausalLM(
        OpenMythosConfig.from_mythos(tiny_mythos(attn, vocab_size=128, act=False, init_std=0.2))
    )


def models(kind: str) -> torch.nn.Module:
    if kind.startswith("openmythos"):
        return mythos(kind.split("-")[1])
    return wrap(kind, perturb=True)[1]


SLOW = pytest.mark.slow
TRAIN_KINDS = ["openmythos-gqa", "openmythos-mla", "llama", "deepseek_v2", pytest.param("gemma4_text", marks=SLOW)]
DECODE_KINDS = [
    "openmythos-gqa",
    "llama",
    *(pytest.param(kind, marks=SLOW) for kind in ("openmythos-mla", "deepseek_v2", "gemma4_text")),
]


def train_step(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    loss = model(x, labels=x, n_loops=3, use_cache=False).loss
    loss.backward()
    return loss.detach()


def graphs(counter: CompileCounterWithBackend) -> int:
    """Graphs compiled so far (dynamo's empty wrapper frames left out): one per call means no graph break."""
    return sum(len(g.graph.nodes) > 0 for g in counter.graphs)


@pytest.mark.parametrize("kind", TRAIN_KINDS)
def test_a_training_step_compiles_whole_and_matches_eager(kind: str) -> None:
    eager = models(kind).train()
    compiled = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("aot_eager")
    x = ids(seed=3)
    expected = train_step(eager, x)
    got = train_step(torch.compile(compiled, backend=counter), x)
    assert graphs(counter) == 1, "no graph break"
    assert abs(float(got - expected)) <= TOLERANCE
    pairs = [(a.grad, b.grad) for a, b in zip(eager.parameters(), compiled.parameters(), strict=True)]
    assert sum(a is not None for a, _ in pairs) > 10
    assert max(float((a - b).abs().max()) for a, b in pairs if a is not None) <= TOLERANCE


@pytest.mark.parametrize("kind", DECODE_KINDS)
def test_cached_decoding_compiles_whole_once_and_matches_eager(kind: str) -> None:
    eager = models(kind).eval()
    compiled = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("aot_eager")
    compiled.compile(backend=counter, dynamic=True)
    prompt = ids(batch=1, length=10, seed=5)  # past gemma4_text's sliding window (8): no switch while decoding
    with torch.no_grad():
        caches = []
        for model in (eager, compiled):
            out = model(prompt, n_loops=3, use_cache=True)
            caches.append((out.cache, out.logits[:, -1:].argmax(-1)))
        (cache, token), (compiled_cache, _) = caches
        assert graphs(counter) == 1, "the prefill compiles whole"
        for _ in range(4):
            expected = eager(token, cache=cache, n_loops=3, use_cache=True).logits
            got = compiled(token, cache=compiled_cache, n_loops=3, use_cache=True).logits
            assert float((got - expected).abs().max()) <= TOLERANCE
            token = expected[:, -1:].argmax(-1)
    assert graphs(counter) == 2, "one graph for every decode step: the growing cache does not recompile"


@pytest.mark.parametrize("backend", ["grouped_mm", "loop"])
def test_the_compiled_expert_op_and_its_written_out_gradients_are_the_eager_ones(backend: str) -> None:
    torch.manual_seed(0)
    n, dim, hidden, experts = 20, 16, 8, 4
    counts = torch.tensor([6, 0, 9, 5])
    x = torch.randn(n, dim, requires_grad=True)
    weights = [torch.randn(experts, dim, hidden, requires_grad=True) for _ in range(2)]
    w2 = torch.randn(experts, hidden, dim, requires_grad=True)
    gates = torch.rand(n, requires_grad=True)
    inputs = [x, *weights, w2, gates]
    grad = torch.randn(n, dim)
    expected = torch.autograd.grad(expert_outputs(x, *weights, w2, counts, gates, backend), inputs, grad)
    out = grouped_experts(x, *weights, w2, counts, gates, backend)
    assert float((out - expert_outputs(x, *weights, w2, counts, gates, backend)).abs().max()) == 0.0
    got = torch.autograd.grad(out, inputs, grad)
    for a, b in zip(got, expected, strict=True):
        assert float((a - b).abs().max()) <= TOLERANCE * float(b.abs().max())
    torch.library.opcheck(grouped_experts, (x, *weights, w2, counts, gates, backend))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["openmythos-mla", "deepseek_v2"])
def test_inductor_training_step_and_decoding_match_eager(kind: str) -> None:
    eager = models(kind).train()
    compiled = copy.deepcopy(eager)
    compiled.compile()
    x = ids(seed=3)
    expected, got = train_step(eager, x), train_step(compiled, x)
    assert abs(float(got - expected)) <= 1e-4
    pairs = [(a.grad, b.grad) for a, b in zip(eager.parameters(), compiled.parameters(), strict=True)]
    assert max(float((a - b).abs().max()) for a, b in pairs if a is not None) <= 1e-4
    eager.eval()
    compiled.eval()
    with torch.no_grad():
        prompt = ids(batch=1, length=7, seed=5)
        expected = eager.generate(prompt, max_new_tokens=6, do_sample=False, n_loops=3)
        got = compiled.generate(prompt, max_new_tokens=6, do_sample=False, n_loops=3)
    assert torch.equal(got, expected)
