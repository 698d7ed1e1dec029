"""Wrapper overhead and loop scaling, measured side by side in one run.

For each model: the base's forward time, the wrapper's forward at T = 1, 2, 4, 8, and
cached decode tokens/s at the same T. The ideal cost ratio of T loops over the base is
(L + (T − 1)·k) / L for L layers and a k-layer block; the script prints the measured
ratio next to it. Targets: wrapper overhead at T = 1 ≤ 3 %, measured/ideal ≤ 1.10. The
decodes at every T are timed in the same alternating rounds, so their ratios to T = 1 compare
runs made next to each other.

Absolute times on a shared CPU drift by 10–20 % between measurements, so the forward is
also timed against the honest reference, measured right next to it: the plain base with
the block's layers unrolled T times in its layer list (same modules, no recurrence code),
``fwd/unrolled``. That ratio isolates what the loop machinery itself costs.

    python benchmarks/loop_overhead.py [--smollm DIR] [--threads 2] [--json out.json]
    python benchmarks/loop_overhead.py --tiny --min-run-time 0.01   # a smoke run (the test)

Models: SmolLM2-135M (the embedded default; built/cached by ``mythic fetch`` machinery
when --smollm is not given) and a random deepseek_v2 of DeepSeek-Coder-V2-Lite layout
with hidden 256. Timings use ``torch.utils.benchmark``: the fastest block of three alternating rounds.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils import benchmark
from transformers import AutoModelForCausalLM, PreTrainedModel

from mythic.models.retrofit import RetrofitForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny import tiny_base  # noqa: E402  (the tests' model factory: one definition of every tiny layout)

LOOPS = (1, 2, 4, 8)


def deepseek_v2(hidden: int = 256, vocab: int = 4096) -> PreTrainedModel:
    """The tests' deepseek_v2 (DeepSeek-Coder-V2-Lite's layout: MLA, first layer dense, shared + routed experts),
    scaled up: 8 layers, 16 experts top-4."""
    return tiny_base(
        "deepseek_v2",
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        max_position_embeddings=2048,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        kv_lora_rank=64,
        qk_rope_head_dim=16,
        qk_nope_head_dim=32,
        v_head_dim=32,
        n_routed_experts=16,
        num_experts_per_tok=4,
        moe_intermediate_size=hidden // 2,
    )


def tiny_llama() -> PreTrainedModel:
    """``--tiny``'s stand-in for SmolLM2: the tests' llama (width 64) with 20 layers, so that block 13:17 fits."""
    return tiny_base("llama", vocab_size=512, intermediate_size=128, num_hidden_layers=20)


def best_seconds(fns: list, min_run_time: float, rounds: int = 3) -> list[float]:
    """Fastest block time of each fn, measured in alternating rounds so drift hits all of them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            timer = benchmark.Timer(stmt="fn()", globals={"fn": fn})
            best[i] = min(best[i], min(timer.blocked_autorange(min_run_time=min_run_time).times))
    return best


def measure(
    name: str, base: PreTrainedModel, block: tuple[int, int], batch: int, length: int, decode: int, min_run_time: float
) -> list[dict]:
    layers = base.config.num_hidden_layers
    k = block[1] - block[0]
    ids = torch.randint(0, base.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    plain = copy.deepcopy(base)
    plain_layers = list(plain.model.layers)
    with torch.no_grad():
        (base_fwd,) = best_seconds([lambda: base(ids, use_cache=False)], min_run_time)
        model = RetrofitForCausalLM.from_base(base, block_start=block[0], block_end=block[1], max_loops=8).eval()
        rows = []
        for t in LOOPS:
            plain.model.layers = torch.nn.ModuleList(
                plain_layers[: block[0]] + plain_layers[block[0] : block[1]] * t + plain_layers[block[1] :]
            )
            plain.config.num_hidden_layers = len(plain.model.layers)
            unrolled, fwd = best_seconds(
                [lambda: plain(ids, use_cache=False), lambda t=t: model(ids, n_loops=t, use_cache=False)], min_run_time
            )

            ideal = (layers + (t - 1) * k) / layers
            rows.append(
                {
                    "model": name,
                    "T": t,
                    "ideal": ideal,
                    "forward_s": fwd,
                    "forward_vs_unrolled": fwd / unrolled,
                    "forward_ratio": fwd / base_fwd,
                    "forward_vs_ideal": fwd / base_fwd / ideal,
                }
            )

        def run_decode(t: int) -> None:
            model.generate(ids[:1, :16], max_new_tokens=decode, min_new_tokens=decode, do_sample=False, n_loops=t)

        decodes = best_seconds([lambda t=t: run_decode(t) for t in LOOPS], min_run_time)
    for row, dec in zip(rows, decodes, strict=True):
        row.update(
            decode_tok_s=decode / dec,
            decode_ratio=dec / decodes[0],
            decode_vs_ideal=dec / decodes[0] / row["ideal"],
        )
    return rows


def identity_overhead(
    base: PreTrainedModel, block: tuple[int, int], length: int, min_run_time: float
) -> dict[str, float]:
    """T = 1 forward of the wrapper over the plain base, with and without Depth-LoRA, in alternating rounds."""
    ids = torch.randint(0, base.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(0))
    with_lora = RetrofitForCausalLM.from_base(copy.deepcopy(base), block_start=block[0], block_end=block[1]).eval()
    without = RetrofitForCausalLM.from_base(
        copy.deepcopy(base), block_start=block[0], block_end=block[1], lora_rank=0
    ).eval()
    with torch.no_grad():
        plain, lora, no_lora = best_seconds(
            [
                lambda: base(ids, use_cache=False),
                lambda: with_lora(ids, n_loops=1, use_cache=False),
                lambda: without(ids, n_loops=1, use_cache=False),
            ],
            min_run_time,
            rounds=4,
        )
    return {"T1_with_depth_lora": lora / plain, "T1_without_depth_lora": no_lora / plain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smollm", type=Path, help="SmolLM2-135M folder (default: the cached embedded build)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds of repeats per measurement")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--tiny", action="store_true", help="tiny random models and sizes: a smoke run of seconds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.tiny:
        first_name, first, second_name, second = "llama-tiny", tiny_llama(), "deepseek_v2-h64", deepseek_v2(64, 512)
        batch, length, decode = 1, 16, 4
    else:
        from mythic.embedded import cached_smollm2

        first_name, first = "smollm2-135m", AutoModelForCausalLM.from_pretrained(args.smollm or cached_smollm2()).eval()
        second_name, second = "deepseek_v2-h256", deepseek_v2()
        batch, length, decode = 2, 128, 16
    overhead = identity_overhead(first, (13, 17), length, args.min_run_time)
    rows = measure(first_name, first, (13, 17), batch, length, decode, args.min_run_time)
    rows += measure(second_name, second, (3, 5), batch, length, decode, args.min_run_time)

    table = Table(title="mythic loop overhead (ratios: lower is better; *_vs_ideal target ≤ 1.10, T=1 ≤ 1.03)")
    columns = (
        "model",
        "T",
        "ideal",
        "fwd/base",
        "fwd vs ideal",
        "fwd/unrolled",
        "decode tok/s",
        "decode T/T1",
        "decode vs ideal",
    )
    for col in columns:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["model"],
            str(r["T"]),
            f"{r['ideal']:.3f}",
            f"{r['forward_ratio']:.3f}",
            f"{r['forward_vs_ideal']:.3f}",
            f"{r['forward_vs_unrolled']:.3f}",
            f"{r['decode_tok_s']:.1f}",
            f"{r['decode_ratio']:.3f}",
            f"{r['decode_vs_ideal']:.3f}",
        )
    console = Console(width=140)
    console.print(table)
    console.print(
        f"{first_name}, T=1 forward over the base, interleaved (target ≤ 1.03): "
        f"with rank-8 Depth-LoRA {overhead['T1_with_depth_lora']:.3f}, "
        f"without {overhead['T1_without_depth_lora']:.3f}"
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "identity_overhead": overhead}, indent=2))


if __name__ == "__main__":
    main()
