"""OpenMythos training throughput against the reference's naive layout, side by side in one run.

Same config, same weights, two layouts:
  mythic   grouped MoE dispatch (token/expert pairs sorted by expert, one SwiGLU per expert
           on its contiguous slice, gates applied to the narrow hidden activation), MLA with
           one shared RoPE key, ``scaled_dot_product_attention``
  naive    the reference's code: MoE as a Python loop over top-k × experts with boolean
           masks (one Linear per expert), MLA with the RoPE key expanded to every head and
           a hand-written softmax attention with an additive mask

Rows: the MoE layer alone at 16 experts top-2 with fine-grained experts (expert_dim =
dim·k/E, the reference's sizing rule) and with 4× wider ones, and the whole model
(MLA, 4 loops). Columns: forward+backward tokens/s (best of ``--rounds`` interleaved
rounds, so both layouts see the same machine load), the speed-up, "naive/matmuls" (the
naive time over the bare routed + shared expert matmuls: the speed-up of a dispatch that
costs nothing beyond a per-expert matmul loop), and the peak resident memory that one
training step adds (VmHWM − VmRSS before the step, each in a fresh process). One thread
by default: on a busy 2-core machine, two-thread gathers and scatters stall behind other
processes and swamp the comparison.
Target: ≥ 3× the naive MoE path at 16 experts top-2.

    python benchmarks/openmythos_moe.py [--threads 1] [--rounds 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from mythic.models.openmythos import MythosConfig, OpenMythos
from mythic.models.openmythos.attention import AttentionMask, MLAttention, apply_rope
from mythic.models.openmythos.moe import MoE, MoEStats

CONFIG = dict(
    vocab_size=2048, dim=256, n_heads=8, n_kv_heads=8, max_seq_len=512, max_loop_iters=4,
    prelude_layers=1, coda_layers=1, n_experts=16, n_shared_experts=1, n_experts_per_tok=2,
    expert_dim=32, lora_rank=8, attn_type="mla", kv_lora_rank=64, q_lora_rank=128,
    qk_rope_head_dim=32, qk_nope_head_dim=32, v_head_dim=32,
)  # fmt: skip
BATCH, LENGTH, LOOPS = 4, 256, 4
ROWS = {  # row name: (part, expert_dim)
    "MoE layer, expert_dim 32": ("moe", 32),
    "MoE layer, expert_dim 128": ("moe", 128),
    "whole model, expert_dim 32": ("model", 32),
}


class NaiveMoE(MoE):
    """The reference's dispatch: for each of the top-k slots, for each expert, a masked gather/scatter."""

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, MoEStats]:
        flat = x.reshape(-1, x.shape[-1])
        experts, gates, _ = self.route(flat)
        out = torch.zeros_like(flat)
        w1, w3, w2 = self.w1.unbind(0), self.w3.unbind(0), self.w2.unbind(0)  # one nn.Linear per expert
        for k in range(self.top_k):
            for e in range(self.n_experts):
                mask = experts[:, k] == e
                if not mask.any():
                    continue
                xs = flat[mask]
                y = (F.silu(xs @ w1[e]) * (xs @ w3[e])) @ w2[e]
                out[mask] += gates[mask, k].unsqueeze(-1).to(x.dtype) * y
        if self.shared is not None:
            out = out + self.shared(flat)
        load = torch.bincount(experts.flatten(), minlength=self.n_experts).float()
        return out.view(x.shape), MoEStats(torch.zeros(()), load)


class NaiveMLA(MLAttention):
    """The reference's MLA: RoPE key expanded to every head, softmax attention by hand."""

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: AttentionMask, cache: Any, slot: int
    ) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.n_heads
        q = self.query(x).view(b, t, h, self.nope + self.rope_dim).transpose(1, 2)
        q_nope, q_pe = q.split([self.nope, self.rope_dim], dim=-1)
        q = torch.cat([q_nope, apply_rope(q_pe, *rope)], dim=-1)
        c, k_pe = self.wkv_a(x).split([self.rank, self.rope_dim], dim=-1)
        k_pe = apply_rope(k_pe.unsqueeze(1).expand(b, h, t, self.rope_dim).contiguous(), *rope)
        kv = self.wkv_b(self.kv_norm(c)).view(b, t, h, self.nope + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        k = torch.cat([k_nope, k_pe], dim=-1)
        scores = (q @ k.transpose(-2, -1)) * self.scale
        scores = scores + torch.full((t, t), float("-inf"), device=x.device).triu(1)
        out = F.softmax(scores.float(), dim=-1).to(v.dtype) @ v
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


def build(layout: str, expert_dim: int) -> OpenMythos:
    """The model with seed-0 weights; "naive" swaps the MoE and MLA modules' classes in place (same weights)."""
    torch.manual_seed(0)
    model = OpenMythos(MythosConfig(**{**CONFIG, "expert_dim": expert_dim})).train()
    if layout == "naive":
        for module in model.modules():
            if type(module) is MoE:
                module.__class__ = NaiveMoE
            elif type(module) is MLAttention:
                module.__class__ = NaiveMLA
    return model


def training_step(layout: str, part: str, expert_dim: int) -> tuple[Callable[[], None], int]:
    """A forward+backward closure and the number of tokens it processes."""
    model = build(layout, expert_dim)
    gen = torch.Generator().manual_seed(0)
    if part == "moe":
        moe = model.block.ffn
        x = torch.randn(BATCH, LENGTH, CONFIG["dim"], generator=gen)

        def moe_step() -> None:
            moe.zero_grad(set_to_none=True)
            moe(x)[0].square().mean().backward()

        return moe_step, BATCH * LENGTH
    ids = torch.randint(0, CONFIG["vocab_size"], (BATCH, LENGTH), generator=gen)

    def model_step() -> None:
        model.zero_grad(set_to_none=True)
        logits = model(ids[:, :-1], LOOPS)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()

    return model_step, BATCH * (LENGTH - 1)


def expert_matmuls(expert_dim: int) -> Callable[[], None]:
    """The bare SwiGLU matmuls of the MoE layer, forward+backward: routed (equal slices) and shared."""
    moe = build("mythic", expert_dim).block.ffn
    tokens = torch.randn(BATCH * LENGTH, CONFIG["dim"], generator=torch.Generator().manual_seed(0))
    x = tokens.repeat(CONFIG["n_experts_per_tok"], 1)
    sizes = [x.shape[0] // CONFIG["n_experts"]] * CONFIG["n_experts"]

    def step() -> None:
        moe.zero_grad(set_to_none=True)
        weights = zip(moe.w1.unbind(0), moe.w3.unbind(0), moe.w2.unbind(0), strict=True)
        ys = [(F.silu(c @ w1) * (c @ w3)) @ w2 for c, (w1, w3, w2) in zip(x.split(sizes), weights, strict=True)]
        (torch.cat(ys).square().mean() + moe.shared(tokens).square().mean()).backward()

    return step


def best_seconds(steps: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Best time of each step over ``rounds`` interleaved rounds (after one warm-up round)."""
    best = dict.fromkeys(steps, float("inf"))
    for r in range(rounds + 1):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if r:
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_mb(layout: str, part: str, expert_dim: int, threads: int) -> float:
    """Runs in a fresh process: resident memory added by one training step, in MB."""
    torch.set_num_threads(threads)
    step, _ = training_step(layout, part, expert_dim)
    before = rss_kb("VmRSS")
    step()
    return (rss_kb("VmHWM") - before) / 1024


def measure(threads: int, rounds: int) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    results = []
    for row, (part, expert_dim) in ROWS.items():
        steps, tokens = {}, 0
        for layout in ("mythic", "naive"):
            steps[layout], tokens = training_step(layout, part, expert_dim)
        if part == "moe":
            steps["matmuls"] = expert_matmuls(expert_dim)
        seconds = best_seconds(steps, rounds)
        memory = {}
        for layout in ("mythic", "naive"):
            with ctx.Pool(1) as pool:
                memory[layout] = pool.apply(peak_mb, (layout, part, expert_dim, threads))
        results.append(
            {
                "row": row,
                "tokens": tokens,
                "mythic_tok_s": tokens / seconds["mythic"],
                "naive_tok_s": tokens / seconds["naive"],
                "speedup": seconds["naive"] / seconds["mythic"],
                "naive_over_matmuls": seconds["naive"] / seconds["matmuls"] if "matmuls" in seconds else None,
                "mythic_peak_mb": memory["mythic"],
                "naive_peak_mb": memory["naive"],
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=8, help="interleaved timing rounds (best of)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = measure(args.threads, args.rounds)
    title = (
        f"OpenMythos fwd+bwd on CPU ({args.threads} threads): {CONFIG['n_experts']} experts top-"
        f"{CONFIG['n_experts_per_tok']}, dim {CONFIG['dim']}, batch {BATCH}×{LENGTH}, MLA, {LOOPS} loops"
    )
    table = Table(title=title)
    for col in ("", "mythic tok/s", "naive tok/s", "speed-up", "naive/matmuls", "mythic peak MB", "naive peak MB"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["row"],
            f"{r['mythic_tok_s']:.0f}",
            f"{r['naive_tok_s']:.0f}",
            f"{r['speedup']:.2f}×",
            "—" if r["naive_over_matmuls"] is None else f"{r['naive_over_matmuls']:.2f}×",
            f"{r['mythic_peak_mb']:.0f}",
            f"{r['naive_peak_mb']:.0f}",
        )
    console = Console()
    console.print(table)
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (build("mythic", 32)(ids, LOOPS) - build("naive", 32)(ids, LOOPS)).abs().max().item()
    console.print(f"same function: max |logits(mythic) − logits(naive)| = {diff:.2e}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
