"""Induction heads of a base model, layer by layer: where a block chosen for looping looks a token up.

``--batch`` random sequences of ``--length`` tokens (seed 0) are each repeated twice. A head's induction
score is the attention that a position i of the second copy pays to the token after the first occurrence
of its own token, position i − L + 1, averaged over the second copy and the batch:

    score(layer, head) = mean over b and L ≤ i < 2L of A[b, head, i, i − L + 1]

A head that copies by induction scores near 1; attention spread evenly over the i + 1 visible keys scores
about 1 / (i + 1). The script prints each layer's best head, its score and the layer's mean over heads, and
writes them as JSON. Attention is computed eagerly (``attn_implementation="eager"``) to be returned.

    python benchmarks/induction_heads.py [--base DIR] [--length 40] [--batch 4] [--json out.json]
    python benchmarks/induction_heads.py --tiny --json out.json   # a random tiny llama: the smoke run (the test)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoModelForCausalLM, PreTrainedModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny import tiny_base  # noqa: E402  (the tests' model factory: one definition of every tiny layout)


def induction_scores(attentions: tuple[torch.Tensor, ...] | list[torch.Tensor], length: int) -> torch.Tensor:
    """``[layers, heads]`` induction scores from per-layer attention ``[batch, heads, 2L, 2L]`` (see the module)."""
    query = torch.arange(length, 2 * length)
    key = query - length + 1
    return torch.stack([a[:, :, query, key].float().mean(dim=(0, 2)) for a in attentions])


def probe(model: PreTrainedModel, length: int, batch: int) -> torch.Tensor:
    """The induction scores of ``model`` on ``batch`` random sequences of ``length`` tokens, each seen twice."""
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(0, model.config.vocab_size, (batch, length), generator=generator)
    with torch.no_grad():
        out = model(torch.cat([first, first], dim=1), output_attentions=True, use_cache=False)
    return induction_scores(out.attentions, length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, help="a base model folder (default: the cached embedded SmolLM2-135M)")
    parser.add_argument("--length", type=int, default=40, help="tokens in each random sequence (seen twice)")
    parser.add_argument("--batch", type=int, default=4, help="random sequences")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the scores as JSON here")
    parser.add_argument("--tiny", action="store_true", help="a random tiny llama instead of a base: a smoke run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.tiny:
        name, model = "llama-tiny", tiny_base("llama")
        model.config._attn_implementation = "eager"
    else:
        from mythic.embedded import cached_smollm2

        folder = args.base or cached_smollm2()
        name = str(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    scores = probe(model, args.length, args.batch)
    layers = [
        {"layer": i, "best_head": int(row.argmax()), "best": float(row.max()), "mean": float(row.mean())}
        for i, row in enumerate(scores)
    ]
    table = Table(title=f"induction scores of {name} ({args.batch} × 2 × {args.length} tokens)")
    for column in ("layer", "best head", "best score", "mean over heads"):
        table.add_column(column, justify="right")
    for row in layers:
        table.add_row(str(row["layer"]), str(row["best_head"]), f"{row['best']:.3f}", f"{row['mean']:.3f}")
    Console().print(table)
    if args.json:
        record = {"model": name, "length": args.length, "batch": args.batch, "layers": layers}
        args.json.write_text(json.dumps({**record, "scores": scores.tolist()}, indent=2))


if __name__ == "__main__":
    main()
