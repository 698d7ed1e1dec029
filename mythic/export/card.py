"""The model card (README.md) of an export: base, recurrence settings, how to load, recipe and evals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mythic.models.retrofit import RetrofitConfig


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k, v in row.items() if not isinstance(v, dict | list)))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def eval_table(data: Any) -> str:
    """A markdown table of an eval JSON: a list of rows, a dict of rows, or a dict of numbers."""
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return _markdown_table(data)
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        return _markdown_table([{"": key, **row} for key, row in data.items()])
    if isinstance(data, dict):
        return _markdown_table([{"metric": k, "value": v} for k, v in data.items() if not isinstance(v, dict | list)])
    return f"```\n{json.dumps(data, indent=2)}\n```"


def model_card(
    config: RetrofitConfig,
    pointer: dict[str, Any],
    *,
    kind: str,
    recipe: Path | None,
    evals: list[Path],
    merged_lora: bool,
) -> str:
    """A retrofit's README.md: base (``pointer``: its repo and commit), recurrence settings, how to load, the
    recipe and the eval tables when present."""
    base_repo, base_commit = pointer["repo_id"], pointer["commit"]
    block = f"{config.block_start}:{config.block_end}"
    body = [
        f"# {(base_repo or str(config.base_name_or_path)).rsplit('/', 1)[-1]} with recurrent depth (mythic)",
        "",
        f"Layers {block} (half-open) of the base run `n_loops` times with the `{config.rule}` update rule; "
        "`n_loops=1` computes the base model.",
        "",
        "| | |",
        "|---|---|",
        f"| base | {base_repo or config.base_name_or_path} |",
        f"| base revision | {base_commit or config.base_revision or 'unknown'} |",
        f"| looped block | {block} |",
        f"| update rule | {config.rule} |",
        f"| trained loops (max_loops) | {config.max_loops} |",
        f"| default n_loops | {config.n_loops} |",
        f"| Depth-LoRA rank / alpha | {config.lora_rank} / {config.lora_alpha} |",
        f"| base LoRA merged | {'yes' if merged_lora else 'no'} |",
        "",
        "## Use",
        "",
    ]
    if kind == "full":
        body += usage("modeling_mythic.py", "def fib(n):")
    else:
        body += [
            "A light export: only the recurrence (and LoRA) weights. Fetch the base named in `base.json`, then:",
            "",
            "```python",
            "from mythic.loading import load_light",
            "",
            'model = load_light("THIS_FOLDER", base_dir="base/FOLDER")',
            "```",
        ]
    return _card(["mythic", "recurrent-depth"], body, recipe, evals, base_model=base_repo)


def usage(modeling_file: str, prompt: str) -> list[str]:
    """How a full export loads and generates with transformers alone."""
    return [
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER_OR_REPO", trust_remote_code=True)',
        'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER_OR_REPO")',
        f'ids = tokenizer({prompt!r}, return_tensors="pt").input_ids',
        "out = model.generate(ids, max_new_tokens=64, do_sample=False, n_loops=4)",
        "```",
        "",
        f"`{modeling_file}` holds the whole model (generated from mythic's source); "
        "only transformers is needed. GGUF / llama.cpp cannot run it: llama.cpp has no recurrent-depth support.",
    ]


def _card(
    tags: list[str], body: list[str], recipe: Path | None, evals: list[Path], base_model: str | None = None
) -> str:
    """A README.md: front matter, ``body``, then the training recipe and the eval tables found beside the checkpoint."""
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation"]
    front += [f"base_model: {base_model}"] if base_model else []
    front += ["tags:", *(f"- {tag}" for tag in tags), "---", ""]
    if recipe is not None:
        body += ["", "## Recipe", "", "```yaml", recipe.read_text().rstrip(), "```"]
    for path in evals:
        body += ["", f"## Evaluation: {path.name}", "", eval_table(json.loads(path.read_text()))]
    return "\n".join(front + body) + "\n"


def openmythos_card(config: Any, *, recipe: Path | None, evals: list[Path]) -> str:
    """An OpenMythos export's README.md: its size and recurrence, how to load, the recipe and evals."""
    body = [
        "# A Recurrent-Depth Transformer trained from scratch (OpenMythos, mythic)",
        "",
        f"{config.prelude_layers} prelude layer(s), one {config.attn_type.upper()} + MoE block run `n_loops` times "
        f"with the LTI-stable injection, {config.coda_layers} coda layer(s).",
        "",
        "| | |",
        "|---|---|",
        f"| dim / heads | {config.dim} / {config.n_heads} |",
        f"| experts (routed, shared, per token) | {config.n_experts}, {config.n_shared_experts}, "
        f"{config.n_experts_per_tok} |",
        f"| trained loops (max_loop_iters) | {config.max_loop_iters} |",
        f"| default n_loops | {config.n_loops or config.max_loop_iters} |",
        f"| loop-state norm | {'yes' if config.state_norm else 'no'} |",
        f"| vocabulary | {config.vocab_size} |",
        "",
        "## Use",
        "",
        *usage("modeling_openmythos.py", "a>b;b>c;?++a"),
    ]
    return _card(["mythic", "openmythos", "recurrent-depth"], body, recipe, evals)
