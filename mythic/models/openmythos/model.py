"""OpenMythos: a Recurrent-Depth Transformer trained from scratch.

    x  = Embed(ids)                       (+ the token convolution when cfg.token_conv > 0)
    x  = Prelude(x)                       prelude_layers dense blocks, run once
    e  = RMSNorm(x)                       Parcae: normalised injection signal
    h₀ = e;  h_{t+1} = Block(Conv(Ā ⊙ h_t + B̄ e + γ ⊙ PE(t)))     t = 0 … T−1, one MoE block
                                          (Ā ⊙ RMSNorm(h_t) with cfg.state_norm; Conv the loop
                                          convolution when cfg.loop_conv > 0, else the identity)
    h  = ACT-weighted Σ_t w_t h_{t+1}     (or h_T when cfg.act is False)
    y  = Head(RMSNorm(Coda(h)))           coda_layers dense blocks, head tied to Embed

The block is pre-norm (x + Attn(norm x), then + FFN(norm x)), so h_{t+1} = Ā h_t + B̄ e + Transformer(·):
the shared ``parcae`` rule and ``LTIInjection`` (ρ(Ā) < 1 strictly), with per-loop Depth-LoRA on the
attention's query and output projections, looped by the shared runner (``recurrence/runner.py``) as a
``BlockPass``. KV cache: ``MythosCache``, the shared ``LoopCache`` over the layers prelude (0 … P − 1),
block (P) and coda (P + 1 … P + C), plus the convolutions' last k − 1 inputs (the token convolution's,
and the loop convolution's of each pass).

Init: Linear/Embedding/expert weights ~ N(0, init_std²), output projections (attention wo, FFN and
experts' w2) ~ N(0, (init_std / √(2L))²), L the number of physical blocks; norms 1; the recurrence modules
their own ``reset_parameters`` (Ā ≈ 0.447, LoRA B = 0, loop embedding γ = 0, ACT p = 1/max_loops); the token
convolution ~ N(0, 0.2²), the loop convolution 0 (the block as without it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicLayer
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from mythic.errors import MythicError
from mythic.models.openmythos.attention import LORA_TARGETS, AttentionMask, make_attention, rope_cos_sin
from mythic.models.openmythos.config import MythosConfig
from mythic.models.openmythos.moe import MoE, MoEStats, SwiGLU
from mythic.recurrence.cache import CacheView, LoopCache
from mythic.recurrence.context import LoopContext
from mythic.recurrence.depth_lora import DepthLoRA, LoRADelta
from mythic.recurrence.exit import AdaptiveDepth
from mythic.recurrence.halting import ACTHalting
from mythic.recurrence.injection import LTIInjection
from mythic.recurrence.loop import LoopCount, deepest
from mythic.recurrence.loop_embedding import LoopEmbedding
from mythic.recurrence.rules import ParcaeRule
from mythic.recurrence.runner import Recurrence, Request

Rope = tuple[torch.Tensor, torch.Tensor]


class MythosCache(LoopCache):
    """The model's ``LoopCache`` (prelude layers, the block, coda layers; the block's passes t ≥ 1 get slots
    of their own) plus the convolutions' windows, their last k − 1 inputs (B, k − 1, D): ``windows["tokens"]``
    for the token convolution, ``windows[f"loop{t}"]`` for the loop convolution at pass t."""

    def __init__(self, cfg: MythosConfig) -> None:
        layers = cfg.prelude_layers + 1 + cfg.coda_layers
        super().__init__([(DynamicLayer, {})] * layers, cfg.prelude_layers, cfg.prelude_layers + 1)
        self.windows: dict[str, torch.Tensor] = {}

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self.windows = {k: w.index_select(0, beam_idx.to(w.device)) for k, w in self.windows.items()}

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self.windows = {k: w[indices] for k, w in self.windows.items()}

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self.windows = {k: w.repeat_interleave(repeats, dim=0) for k, w in self.windows.items()}


class CausalConv(nn.Module):
    """A causal depthwise convolution added to its input, reading ``first`` … k − 1 tokens back:

        y_t = x_t + Σ_{j=first}^{k−1} w_j ⊙ x_{t−j}          (per channel; x = 0 before the first token and at padding)

    The token convolution (``token_conv``: first = 0, w ~ N(0, 0.2²)) over the embeddings, so binding a
    token to the ones before it is linear from the first step (the short convolutions of H3 / Mamba,
    Allen-Zhu's "Canon layers"); the loop convolution (``loop_conv``: first = 1, w = 0) over the loop state
    at the block's input, every pass, so a token reads its neighbours' states once per loop and a signal
    travels k − 1 tokens a loop. With a cache, the last k − 1 inputs are carried in ``MythosCache.windows``
    under the caller's ``key``, so decoding one token at a time gives the same result.
    """

    def __init__(self, dim: int, kernel: int, first: int, std: float) -> None:
        super().__init__()
        self.kernel, self.first, self.std = kernel, first, std
        self.weight = nn.Parameter(torch.empty(kernel - first, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.std:
            nn.init.normal_(self.weight, std=self.std)
        else:
            nn.init.zeros_(self.weight)

    def forward(
        self, x: torch.Tensor, padding: torch.Tensor | None, cache: MythosCache | None, key: str
    ) -> torch.Tensor:
        """``x`` (B, T, D); ``padding`` (B, T) 1 = token, 0 = padding (or None); ``key`` the window's name in
        the cache."""
        if padding is not None:
            x = x * padding.unsqueeze(-1).to(x.dtype)
        b, t, d = x.shape
        window = cache.windows.get(key) if cache is not None else None
        if window is None:
            window = x.new_zeros(b, self.kernel - 1, d)
        full = torch.cat([window.to(x.dtype), x], dim=1)
        if cache is not None:
            cache.windows[key] = full[:, full.shape[1] - (self.kernel - 1) :]
        w = self.weight.to(x.dtype)
        back = range(self.first, self.kernel)
        return x + sum(w[j - self.first] * full[:, self.kernel - 1 - j : self.kernel - 1 - j + t] for j in back)


@dataclass
class MythosOutput(CausalLMOutputWithPast):
    """``forward(..., return_aux=True)`` and the transformers wrapper's forward: the usual loss (with
    ``labels``), logits and cache, plus the auxiliary terms a trainer adds to the loss.

    ``aux_losses``: ``moe_balance`` (mean over loops of the MoE balance loss) and, with ACT,
    ``ponder`` (mean N + R); scalars with gradient, unweighted. ``halt_steps`` (B, T): loops
    each position ran before halting (None without ACT).
    """

    aux_losses: dict[str, torch.Tensor] | None = None
    halt_steps: torch.Tensor | None = None


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(norm x), then + FFN(norm x) (dense SwiGLU or MoE).

    Returns (x, MoEStats or None): the balance loss leaves through the block's output, not a side
    channel, because FSDP hooks backward on module outputs (a side-channel loss that reaches a
    looped block's parameters after its post-backward gives wrong gradients).
    """

    def __init__(self, cfg: MythosConfig, moe: bool) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.dim, eps=1e-6)
        self.attn = make_attention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.dim, eps=1e-6)
        self.ffn: MoE | SwiGLU
        if moe:
            self.ffn = MoE(
                cfg.dim,
                cfg.n_experts,
                cfg.n_shared_experts,
                cfg.n_experts_per_tok,
                cfg.expert_dim,
                cfg.router_bias_rate,
            )
        else:
            self.ffn = SwiGLU(cfg.dim, cfg.dense_dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        mask: AttentionMask,
        cache: CacheView | None,
        layer_idx: int,
        token_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, MoEStats | None]:
        x = x + self.drop(self.attn(self.attn_norm(x), rope, mask, cache, layer_idx))
        if isinstance(self.ffn, MoE):
            y, moe_stats = self.ffn(self.ffn_norm(x), token_mask)
            return x + self.drop(y), moe_stats
        return x + self.drop(self.ffn(self.ffn_norm(x))), None


@dataclass
class BlockPass:
    """OpenMythos' looped block as the runner calls it (``recurrence/runner.py``) in one forward: the rotary
    tables, mask, padding and cached length are this forward's; each pass's MoE statistics are kept in
    ``stats``. A pass can be computed for chosen rows, whole or some of their tokens (``subset``: their rotary
    rows and mask rows; a loop convolution takes whole rows only, and no cache: it refuses adaptive depth). With
    a loop convolution, every pass first mixes each token's state with its left neighbours', its window in
    ``cache`` under the pass's index."""

    block: Block
    layer_idx: int
    rope: Rope
    mask: AttentionMask
    past: int
    conv: CausalConv | None = None
    padding: torch.Tensor | None = None
    cache: MythosCache | None = None
    context: LoopContext | None = None
    stats: list[MoEStats | None] = field(default_factory=list)
    positions = True
    separable = True

    def __call__(self, x: torch.Tensor, view: CacheView | None, token_mask: torch.Tensor | None) -> torch.Tensor:
        out, moe_stats = self.block(self.mix(x), self.rope, self.mask, view, self.layer_idx, token_mask)
        self.stats.append(moe_stats)
        return out

    def mix(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The loop convolution at this pass (the identity without one), over all rows or the batch rows ``rows``."""
        if self.conv is None:
            return x
        assert self.context is not None, "a loop convolution reads the pass index from the loop context"
        padding = self.padding if self.padding is None or rows is None else self.padding[rows]
        return self.conv(x, padding, self.cache, f"loop{self.context.loop}")

    def subset(
        self, x: torch.Tensor, view: CacheView | None, rows: torch.Tensor, index: torch.Tensor | None
    ) -> torch.Tensor:
        """The pass for the batch rows ``rows`` and in them the tokens ``index`` (None: whole rows, the only
        subset a loop convolution takes, and only without a cache, whose windows hold every row)."""
        batch, length, width = x.shape
        rope = tuple(r.expand(batch, *r.shape[1:])[rows] for r in self.rope)
        if index is None:
            assert self.conv is None or self.cache is None, "a loop convolution's cached windows hold every row"
            picked = self.mix(x[rows], rows)
        else:
            assert self.conv is None, "a loop convolution reads every token's neighbours: it refuses token subsets"
            picked = x[rows].gather(1, index.unsqueeze(-1).expand(-1, -1, width))
            rope = tuple(
                r.gather(2, index.view(len(rows), 1, -1, 1).expand(-1, r.shape[1], -1, r.shape[-1])) for r in rope
            )
        out, moe_stats = self.block(picked, rope, self.mask.rows(rows, index, self.past, length), view, self.layer_idx)
        self.stats.append(moe_stats)
        return out


class OpenMythos(nn.Module):
    """``OpenMythos(cfg)``; ``model(ids, n_loops)`` → logits (B, T, V); see the module docstring."""

    def __init__(self, cfg: MythosConfig) -> None:
        super().__init__()
        cfg.check()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.token_conv = CausalConv(cfg.dim, cfg.token_conv, 0, 0.2) if cfg.token_conv else None
        self.prelude = nn.ModuleList(Block(cfg, moe=False) for _ in range(cfg.prelude_layers))
        self.e_norm = nn.RMSNorm(cfg.dim, eps=1e-6)
        self.block = Block(cfg, moe=True)
        self.loop_conv = CausalConv(cfg.dim, cfg.loop_conv, 1, 0.0) if cfg.loop_conv else None
        self.recurrence = Recurrence(
            ParcaeRule(cfg.dim, state_norm=cfg.state_norm),
            cfg.max_loop_iters,
            embedding=LoopEmbedding(cfg.dim),
            lora=DepthLoRA(cfg.max_loop_iters, cfg.lora_rank, float(cfg.lora_rank)) if cfg.lora_rank else None,
            halting=ACTHalting(cfg.dim, cfg.act_threshold, cfg.max_loop_iters) if cfg.act else None,
        )
        if self.recurrence.lora is not None:
            self.recurrence.lora.attach(nn.ModuleList([self.block]), LORA_TARGETS, self.recurrence.context)
        self.coda = nn.ModuleList(Block(cfg, moe=False) for _ in range(cfg.coda_layers))
        self.norm = nn.RMSNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.head.weight = self.embed.weight
        self.init_weights()

    # ------------------------------------------------------------------ parameters

    def init_weights(self) -> None:
        """The initialisation scheme of the module docstring."""
        for module in self.modules():
            self.init_module(module)

    def init_module(self, module: nn.Module) -> None:
        """Initialise one module's own parameters (the unit transformers' ``_init_weights`` works in)."""
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * (self.cfg.prelude_layers + self.cfg.coda_layers + 1))
        if any(module is m for m in self.recurrence.modules()):  # they initialise themselves
            if isinstance(module, LTIInjection | LoopEmbedding | LoRADelta | ACTHalting | nn.RMSNorm):
                module.reset_parameters()
        elif isinstance(module, CausalConv):
            module.reset_parameters()
        elif isinstance(module, MoE):
            module.reset_parameters(std, out_std)
        elif isinstance(module, nn.Linear | nn.Embedding):
            is_out = any(module is m for name, m in self.named_modules() if name.endswith((".wo", ".w2")))
            nn.init.normal_(module.weight, std=out_std if is_out else std)
        elif isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)

    @torch.no_grad()
    def update_router_bias(self) -> dict[str, float]:
        """Aux-loss-free balancing step; call once after every optimizer step. Returns load stats."""
        stats: dict[str, float] = {}
        for i, moe in enumerate(m for m in self.modules() if isinstance(m, MoE)):
            stats.update({f"moe{i}/{k}": v for k, v in moe.update_router_bias().items()})
        return stats

    # --------------------------------------------------------------------- forward

    def new_cache(self) -> MythosCache:
        """An empty KV cache: one slot per prelude layer, the block and each coda layer; the block's later
        passes get slots of their own on first use."""
        return MythosCache(self.cfg)

    def forward(
        self,
        input_ids: torch.Tensor,
        n_loops: LoopCount | AdaptiveDepth | None = None,
        *,
        cache: MythosCache | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_aux: bool = False,
        grad_loops: int | None = None,
        checkpoint_loops: bool = False,
        logits_to_keep: int | torch.Tensor = 0,
        kv_share: bool = False,
    ) -> torch.Tensor | MythosOutput:
        """Logits (B, T, V), or a ``MythosOutput`` with ``return_aux``.

        ``n_loops``: int or LongTensor (B,) of per-sequence depths (default max_loop_iters), or an
        ``AdaptiveDepth``. ``kv_share``: every pass beyond the first keeps one KV slot (``SharedPass``).
        ``cache``: a ``DynamicCache`` continued in place. ``attention_mask`` (B, past + T):
        1 for tokens, 0 for padding; positions then count tokens only. ``logits_to_keep``: the last N
        positions' logits (0: all), or the positions to keep as transformers' ``slice_logits_to_keep``
        takes them (a (B, L) bool mask gives the kept positions flattened, (N, V)).
        """
        n_loops = self.cfg.max_loop_iters if n_loops is None else n_loops
        if isinstance(n_loops, AdaptiveDepth):
            if self.loop_conv is not None:
                raise MythicError(
                    "adaptive depth is not supported with loop_conv: a token that exits skips passes whose "
                    "states its right neighbours would read; evaluate at fixed loop counts"
                )
            n_loops = n_loops.bounded(self.cfg.max_loop_iters)
            cache = self.new_cache() if cache is None else cache  # fill-forward keys live in a cache
        if cache is not None and not isinstance(cache, MythosCache):
            raise MythicError("OpenMythos needs its own cache: create it with model.new_cache()")
        b, t = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if past + t > self.cfg.max_seq_len:
            raise MythicError(
                f"sequence of {past + t} tokens exceeds max_seq_len={self.cfg.max_seq_len}: shorten the input"
            )
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                position_ids = torch.arange(past, past + t, device=input_ids.device).expand(b, t)
        rope = rope_cos_sin(position_ids, self.cfg.rope_dim, self.cfg.rope_theta)
        mask = AttentionMask.build(past, t, attention_mask, input_ids.device)

        x = self.embed(input_ids)
        padding = attention_mask[:, past:] if attention_mask is not None else None
        if self.token_conv is not None:
            x = self.token_conv(x, padding, cache, "tokens")
        for i, layer in enumerate(self.prelude):
            x, _ = layer(x, rope, mask, cache, i)
        idx, context = self.cfg.prelude_layers, self.recurrence.context
        block = BlockPass(self.block, idx, rope, mask, past, self.loop_conv, padding, cache, context)
        request = Request(n_loops, grad_loops, checkpoint_loops, kv_share, logits_to_keep)
        x, halting = self.recurrence.run(block, self.e_norm(x), request, cache, past, self.readout)
        for j, layer in enumerate(self.coda):
            x, _ = layer(x, rope, mask, cache, self.cfg.prelude_layers + 1 + j)
        logits = self.head(self.norm(slice_logits_to_keep(x, logits_to_keep)))

        stats = [s for s in block.stats if s is not None]
        if self.training and stats:
            with torch.no_grad():
                self.block.ffn.expert_load.add_(torch.stack([s.load for s in stats]).sum(0))
        if not return_aux:
            return logits
        passes = n_loops.limit if isinstance(n_loops, AdaptiveDepth) else deepest(n_loops)
        aux = {"moe_balance": torch.stack([s.balance_loss for s in stats[:passes]]).mean()}
        if halting is not None:
            aux["ponder"] = halting.ponder_cost()
        return MythosOutput(logits=logits, aux_losses=aux, halt_steps=halting.steps if halting is not None else None)

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """Next-token logits read straight off a loop state: Head(Norm(h)), the coda skipped (the logit lens)."""
        return self.head(self.norm(h))

    # -------------------------------------------------------------------- generate

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        n_loops: LoopCount | AdaptiveDepth | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample up to ``max_new_tokens`` tokens with a KV cache; (B, T + new).

        ``temperature=0`` is greedy. A sequence that emitted ``eos_token_id`` is padded with
        it, and generation stops once every sequence has. ``n_loops`` may be a LongTensor (B,)
        (continuous depth-wise batching) or an ``AdaptiveDepth`` (each token loops until its exit
        criterion fires; a step stops looping once every token of the batch has exited). Longer
        than ``max_seq_len`` is refused (MythicError).
        """
        if temperature < 0:
            raise MythicError(f"temperature must be >= 0, got {temperature}")
        if input_ids.shape[1] + max_new_tokens > self.cfg.max_seq_len:
            raise MythicError(
                f"prompt ({input_ids.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds "
                f"max_seq_len={self.cfg.max_seq_len}"
            )
        cache = self.new_cache()
        out = input_ids
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        step_ids = input_ids
        for _ in range(max_new_tokens):
            logits = self(step_ids, n_loops, cache=cache, logits_to_keep=1)[:, -1].float()
            token = sample(logits, temperature, top_k, generator)
            if eos_token_id is not None:
                token = torch.where(done, torch.full_like(token, eos_token_id), token)
                done = done | (token == eos_token_id)
            out = torch.cat([out, token.unsqueeze(1)], dim=1)
            if eos_token_id is not None and bool(done.all()):
                break
            step_ids = token.unsqueeze(1)
        return out


def sample(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Greedy at temperature 0, else softmax(logits / temperature) restricted to the top k."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)
