"""DeepSeek-style MoE FFN with aux-loss-free load balancing and grouped dispatch.

Routing (DeepSeek-V3): affinities s = sigmoid(W_r x) per routed expert; the top-k experts are chosen by
s + b (b = ``router_bias``, a buffer with no gradient) and gated by the chosen s renormalised to sum to
1, so b steers selection only. Shared experts (one fused SwiGLU of width n_shared · top_k · expert_dim)
see every token:

    y = Σ_{i ∈ topk(s + b)} g_i · E_i(x) + S(x),    E_i(x) = W2_i (silu(W1_i x) ⊙ W3_i x)

Balancing: ``expert_load`` counts the tokens routed to each expert during training; after each
optimizer step the trainer calls ``update_router_bias``: b_i += γ · sign(mean(load) − load_i), then the
counts reset (all-reduced first under torch.distributed, so every rank keeps the same b). The optional
auxiliary loss (weighted by the trainer; 0 = aux-loss-free only) is the batch-wise L = Σ_i f_i P_i,
f_i = E/(k·N) · #tokens on i, P_i = mean_x s_i / Σ_j s_j.

Dispatch: the N·k (token, expert) pairs are sorted by expert and each expert runs once on its slice (one
``torch._grouped_mm`` call where it exists for the shapes — CPU fp32/bf16, CUDA bf16 on sm90+ — else a
loop), scattered back with ``index_add_``. Every expert weight is used in every call, even with zero
tokens, so FSDP/DDP see the same parameters each step. One routed expert takes every token in order, so
it skips the sort and scatter (the same numbers). Under ``torch.compile`` the expert step is one
custom op (``mythic::grouped_experts``, gradients in ``grouped_experts_backward``): no graph break.
A ``token_mask`` (ACT: halted positions) removes tokens before routing.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class MoEStats(NamedTuple):
    """What one MoE call reports: the auxiliary balance loss and per-expert token counts.

    A NamedTuple, so that a module returning it exposes its tensors to FSDP's backward hooks.
    """

    balance_loss: torch.Tensor
    load: torch.Tensor


class SwiGLU(nn.Module):
    """W2 (silu(W1 x) ⊙ W3 x): the dense FFN of prelude/coda layers and the shared experts."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def grouped_mm_fits(x: torch.Tensor, hidden: int) -> bool:
    """``torch._grouped_mm`` exists and takes these shapes: 16-byte rows; on CUDA, bf16 on sm90+."""
    if not hasattr(torch, "_grouped_mm") or x.dtype not in (torch.float32, torch.bfloat16):
        return False
    if any(n * x.element_size() % 16 for n in (x.shape[-1], hidden)):
        return False
    if x.is_cuda:
        return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (9, 0)
    return x.device.type == "cpu"


def _contiguous_grad(t: torch.Tensor) -> torch.Tensor:
    """``_grouped_mm``'s backward rejects broadcast (stride-0) gradients; make them plain."""
    if t.requires_grad:
        t.register_hook(lambda g: g.contiguous())
    return t


def grouped_matmul(a: torch.Tensor, b: torch.Tensor, counts: torch.Tensor, grouped: bool) -> torch.Tensor:
    """A matmul per group of rows (group sizes ``counts``): a (N, K) @ b (E, K, M) → (N, M); or, with b 2-D,
    a (K, N) @ b (N, M) summed per group → (E, K, M) (weight gradients). One ``_grouped_mm`` call when
    ``grouped``, else a loop over the groups."""
    if grouped:
        return torch._grouped_mm(a, b, offs=counts.cumsum(0).to(torch.int32))
    sizes = counts.tolist()
    if b.ndim == 3:
        # Training keeps every expert in the graph (DDP/FSDP expect each weight every step); inference skips
        # the empty groups.
        keep_all = torch.is_grad_enabled() and b.requires_grad
        used = [(part, w) for part, w in zip(a.split(sizes), b.unbind(0), strict=True) if keep_all or part.shape[0]]
        outs = [part @ w for part, w in used]
        return (outs[0] if len(outs) == 1 else torch.cat(outs)) if outs else a.new_zeros(0, b.shape[-1])
    return torch.stack([p @ q for p, q in zip(a.split(sizes, dim=1), b.split(sizes), strict=True)])


def _uses_grouped_mm(x: torch.Tensor, w1: torch.Tensor, backend: str) -> bool:
    """ "auto": ``_grouped_mm`` where it fits, except at inference with fewer (token, expert) rows than
    experts (decoding), where most experts are empty and the loop over the used ones is cheaper."""
    if backend != "auto":
        return backend == "grouped_mm"
    decoding = not torch.is_grad_enabled() and x.shape[0] < w1.shape[0]
    return grouped_mm_fits(x, w1.shape[-1]) and not decoding


def expert_outputs(
    x: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
    counts: torch.Tensor,
    gates: torch.Tensor,
    backend: str = "auto",
) -> torch.Tensor:
    """g · E_i(x) for each expert i on its contiguous slice of ``x`` (rows sorted by expert, ``counts`` per
    expert): ``_grouped_mm`` where it fits (``backend`` "auto" or "grouped_mm"), else a loop over the
    experts ("loop"). The gate scales the narrow hidden activation before W2 (W2 is linear)."""
    grouped = _uses_grouped_mm(x, w1, backend)
    gates = gates.to(x.dtype).unsqueeze(-1)
    gate = _contiguous_grad(grouped_matmul(x, w1, counts, grouped))
    up = _contiguous_grad(grouped_matmul(x, w3, counts, grouped))
    return _contiguous_grad(grouped_matmul(F.silu(gate) * up * gates, w2, counts, grouped))


@torch.library.custom_op("mythic::grouped_experts", mutates_args=())
def grouped_experts(
    x: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
    counts: torch.Tensor,
    gates: torch.Tensor,
    backend: str,
) -> torch.Tensor:
    """``expert_outputs`` as one opaque op for ``torch.compile``: its expert slices have data-dependent
    sizes, which a graph cannot hold. Eager calls ``expert_outputs`` directly."""
    return expert_outputs(x, w1, w3, w2, counts, gates, backend)


@grouped_experts.register_fake
def _grouped_experts_fake(
    x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, *_: Any
) -> torch.Tensor:
    return x.new_empty(x.shape[0], w2.shape[-1])


@torch.library.custom_op("mythic::grouped_experts_backward", mutates_args=())
def grouped_experts_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
    counts: torch.Tensor,
    gates: torch.Tensor,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of ``grouped_experts`` (x, W1, W3, W2, gates), from a = x W1, b = x W3, s = silu(a),
    m = s ⊙ b ⊙ g, y = m W2:  dm = dy W2ᵀ,  dW2 = mᵀ dy,  dg = Σ dm ⊙ s ⊙ b,
    da = dm ⊙ g ⊙ b ⊙ σ(a)(1 + a(1 − σ(a))),  db = dm ⊙ g ⊙ s,  dx = da W1ᵀ + db W3ᵀ,  dW1 = xᵀ da,  dW3 = xᵀ db,
    each matmul per expert group (the activations are recomputed, not kept)."""
    grouped = _uses_grouped_mm(x, w1, backend)
    g = gates.to(x.dtype).unsqueeze(-1)
    a = grouped_matmul(x, w1, counts, grouped)
    b = grouped_matmul(x, w3, counts, grouped)
    sig = torch.sigmoid(a)
    s = a * sig
    dm = grouped_matmul(grad, w2.transpose(1, 2), counts, grouped)
    dw2 = grouped_matmul((s * b * g).t(), grad, counts, grouped)
    dgates = (dm * s * b).sum(-1).to(gates.dtype)
    da = dm * g * b * sig * (1 + a * (1 - sig))
    db = dm * g * s
    dx = grouped_matmul(da, w1.transpose(1, 2), counts, grouped) + grouped_matmul(
        db, w3.transpose(1, 2), counts, grouped
    )
    dw1 = grouped_matmul(x.t(), da, counts, grouped)
    dw3 = grouped_matmul(x.t(), db, counts, grouped)
    return dx, dw1, dw3, dw2, dgates


@grouped_experts_backward.register_fake
def _grouped_experts_backward_fake(grad: torch.Tensor, *inputs: Any) -> tuple[torch.Tensor, ...]:
    x, w1, w3, w2, _, gates, _ = inputs
    return tuple(torch.empty_like(t) for t in (x, w1, w3, w2, gates))


def _setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    *tensors, ctx.backend = inputs
    ctx.save_for_backward(*tensors)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x, w1, w3, w2, counts, gates = ctx.saved_tensors
    dx, dw1, dw3, dw2, dgates = grouped_experts_backward(grad.contiguous(), x, w1, w3, w2, counts, gates, ctx.backend)
    return dx, dw1, dw3, dw2, None, dgates, None


grouped_experts.register_autograd(_backward, setup_context=_setup)


class MoE(nn.Module):
    """Routed + shared experts; see the module docstring.

    ``backend``: "auto" (``_grouped_mm`` where it fits, else the expert loop), "grouped_mm" or "loop".
    ``expert_load`` is not saved; ``router_bias`` is. Under DDP pass ``broadcast_buffers=False``
    so that each rank keeps its own counts until ``update_router_bias`` all-reduces them.
    """

    def __init__(
        self, dim: int, n_experts: int, n_shared: int, top_k: int, expert_dim: int, bias_rate: float = 1e-3
    ) -> None:
        super().__init__()
        self.n_experts, self.top_k, self.bias_rate = n_experts, top_k, bias_rate
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.w1 = nn.Parameter(torch.empty(n_experts, dim, expert_dim))
        self.w3 = nn.Parameter(torch.empty(n_experts, dim, expert_dim))
        self.w2 = nn.Parameter(torch.empty(n_experts, expert_dim, dim))
        self.shared = SwiGLU(dim, n_shared * top_k * expert_dim) if n_shared else None
        self.register_buffer("router_bias", torch.zeros(n_experts))
        self.register_buffer("expert_load", torch.zeros(n_experts), persistent=False)
        self.backend = "auto"

    def reset_parameters(self, std: float, out_std: float) -> None:
        nn.init.normal_(self.w1, std=std)
        nn.init.normal_(self.w3, std=std)
        nn.init.normal_(self.w2, std=out_std)
        nn.init.zeros_(self.router_bias)
        nn.init.zeros_(self.expert_load)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(top-k expert ids (N, k), gates (N, k) float32, affinities (N, E) float32)."""
        scores = torch.sigmoid(self.router(x).float())
        experts = (scores + self.router_bias.float()).topk(self.top_k, dim=-1).indices
        gates = scores.gather(-1, experts)
        return experts, gates / gates.sum(-1, keepdim=True), scores

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, MoEStats]:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        keep = None if token_mask is None else token_mask.reshape(-1).nonzero().squeeze(1)
        xs = flat if keep is None else flat.index_select(0, keep)
        n = xs.shape[0]
        experts, gates, scores = self.route(xs)
        experts_step = grouped_experts if torch.compiler.is_compiling() else expert_outputs  # same result
        if self.n_experts == 1:  # one expert takes every token in order: the dispatch below is the identity
            counts = torch.full((1,), n, dtype=torch.long, device=xs.device)
            routed = experts_step(xs, self.w1, self.w3, self.w2, counts, gates.reshape(-1), self.backend)
        else:
            pairs = experts.reshape(-1)
            order = pairs.argsort(stable=True)
            token = order // self.top_k
            counts = torch.zeros(self.n_experts, dtype=torch.long, device=pairs.device).index_add_(
                0, pairs, torch.ones_like(pairs)
            )  # bincount's shape depends on the data: not traceable
            y = experts_step(
                xs.index_select(0, token), self.w1, self.w3, self.w2, counts, gates.reshape(-1)[order], self.backend
            )
            routed = xs.new_zeros(xs.shape, dtype=y.dtype).index_add_(0, token, y)
        if self.shared is not None:
            routed = routed + self.shared(xs)
        out = routed if keep is None else flat.new_zeros(flat.shape, dtype=routed.dtype).index_copy_(0, keep, routed)
        load = counts.float()
        share = load * self.n_experts / max(self.top_k * n, 1)
        prob = (scores / scores.sum(-1, keepdim=True)).mean(0) if n else torch.zeros_like(load)
        return out.view(shape), MoEStats((share * prob).sum(), load)

    @torch.no_grad()
    def update_router_bias(self) -> dict[str, float]:
        """b_i += γ · sign(mean(load) − load_i) from the counts since the last call; returns load stats."""
        load = self.expert_load.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(load)
        mean = load.mean()
        ratio = float(load.max() / mean) if mean > 0 else 1.0
        self.router_bias.add_(self.bias_rate * torch.sign(mean - load))
        self.expert_load.zero_()
        return {"max_over_mean_load": ratio, "router_bias_abs_max": float(self.router_bias.abs().max())}
