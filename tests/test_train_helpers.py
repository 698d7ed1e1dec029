"""Shared builders for the training tests (no tests here): a tiny base folder, a corpus, a recipe.

The tiny base itself is ``tiny.write_tiny_base``. ``write_corpus``
writes text files of counting sequences (learnable, so the loss falls within a few steps).
``tiny_recipe`` is a raw recipe mapping for that base and corpus; tests override parts of it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any


def write_corpus(folder: Path, n_docs: int = 12) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(n_docs):
        start = (7 * d) % 61
        (folder / f"doc{d:02d}.txt").write_text(" ".join(f"w{(start + i) % 61}" for i in range(40 + d)))
    return folder


TINY_RECIPE: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "model": {"kind": "surgery", "base": "", "surgery": {"block_start": 1, "block_end": 3, "max_loops": 4}},
    "data": {"seq_len": 16, "sources": [{"kind": "files", "paths": []}]},
    "curriculum": {"kind": "stages", "max_loops": 4, "stages": [{"start": 0, "weights": {1: 0.5, 3: 0.5}}]},
    "loss": {"dual_t": {"t_lo": 1}, "margin": {"alpha": 0.1, "m": 0.02}, "kl_anchor": {"alpha": 0.5, "every": 2}},
    "optim": {"lr": 0.01, "warmup_steps": 1},
    "train": {"steps": 6, "micro_batch": 2, "grad_accum": 2},
    "checkpoint": {"every": 2, "keep": 2},
    "log": {"every": 1, "plot": False},
}


def tiny_recipe(base: Path, corpus: Path, out_dir: Path, **sections: Any) -> dict[str, Any]:
    """The tiny recipe with its paths filled in and top-level sections replaced by ``sections``."""
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["model"]["base"] = str(base)
    recipe["data"]["sources"][0]["paths"] = [str(corpus / "*.txt")]
    recipe["out_dir"] = str(out_dir)
    recipe.update(copy.deepcopy(sections))
    return recipe


# A tiny from-scratch OpenMythos on task files with a char tokenizer (seconds on a CPU); set the source path.
HOPS_RECIPE = {
    "name": "hops-tiny",
    "seed": 0,
    "model": {
        "kind": "openmythos",
        "tokenizer": "chars",
        "config": {
            "dim": 32,
            "n_heads": 4,
            "n_kv_heads": 4,
            "max_seq_len": 64,
            "max_loop_iters": 4,
            "prelude_layers": 1,
            "coda_layers": 1,
            "n_experts": 1,
            "n_shared_experts": 0,
            "n_experts_per_tok": 1,
            "expert_dim": 42,
            "lora_rank": 0,
            "attn_type": "gqa",
            "act": False,
            "init_std": 0.18,
            "token_conv": 4,
        },
    },
    "data": {"seq_len": 24, "sources": [{"kind": "tasks", "path": "", "difficulty_ramp": 20}]},
    "curriculum": {"kind": "stages", "max_loops": 4, "stages": [{"start": 0, "weights": {1: 0.5, 4: 0.5}}]},
    "optim": {"lr": 3e-3, "warmup_steps": 5},
    "train": {"steps": 60, "micro_batch": 16},
    "checkpoint": {"every": 30, "keep": 1},
    "log": {"every": 10, "plot": False},
}
