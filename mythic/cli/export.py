"""``mythic export``: a mythic checkpoint as a Hugging Face folder (full or light), optionally pushed to the hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mythic.errors import MythicError
from mythic.export.exporter import export as run_export
from mythic.export.push import push_to_hub as run_push


def export(
    ckpt: Annotated[Path, typer.Argument(help="A mythic checkpoint folder (surgery output, or a run's final/).")],
    out: Annotated[Path, typer.Option(help="Folder to write.")],
    dtype: Annotated[
        str,
        typer.Option(
            help="dtype of the base weights: bf16, fp16, fp32 (or bfloat16, float16, float32); "
            "the recurrence weights stay float32, as in mythic."
        ),
    ] = "bf16",
    loops: Annotated[
        int | None, typer.Option(help="Default n_loops of the exported model (default: the checkpoint's).")
    ] = None,
    merge_lora: Annotated[
        bool,
        typer.Option(
            help="Fold the checkpoint's peft LoRA on the base (base_lora.safetensors, rank/alpha in "
            "base_lora.json beside it) into the exported base weights; required for a full export of such a "
            "checkpoint. Depth-LoRA is per loop, so it is never merged: it stays in the recurrence weights."
        ),
    ] = False,
    push_to_hub: Annotated[
        str | None, typer.Option(help="Also upload the folder to this hub repo (owner/name) at $HF_ENDPOINT.")
    ] = None,
    private: Annotated[bool, typer.Option(help="Create the hub repo as private.")] = False,
    light: Annotated[
        bool,
        typer.Option(
            help="Only the recurrence (and LoRA) weights plus a pointer to the base repo and revision; "
            "loads with mythic on top of a fetched base."
        ),
    ] = False,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Write CKPT as a folder that loads with AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True).

    The modeling code, generated from mythic's own source, travels in the folder: mythic need not be installed.

    Weights are sharded safetensors; the tokenizer, a generation config and a model card come along.

    GGUF / llama.cpp is out of scope: llama.cpp has no recurrent-depth support.
    """
    if private and not push_to_hub:
        raise MythicError("--private only applies with --push-to-hub")
    console = Console()
    with console.status(f"exporting {ckpt} …") as status:
        report = run_export(
            ckpt,
            out,
            dtype=dtype,
            n_loops=loops,
            light=light,
            merge_lora=merge_lora,
            force=force,
            progress=lambda done, total, stage: status.update(f"{stage} ({done + 1}/{total}) …"),
        )
    table = Table(title=f"export → {report.out}", show_header=False)
    table.add_row("kind", report.kind)
    table.add_row("base", f"{report.base} @ {report.base_revision or 'unknown revision'}")
    if report.dtype:
        table.add_row("dtype", report.dtype)
    table.add_row("default n_loops", str(report.n_loops))
    table.add_row("base LoRA merged", "yes" if report.merged_lora else "no")
    table.add_row("files", str(len(report.files)))
    table.add_row("bytes written / estimated", f"{report.bytes_written:,} / {report.bytes_estimated:,}")
    table.add_row("seconds", str(report.seconds))
    if push_to_hub:
        with console.status(f"pushing to {push_to_hub} …"):
            pushed = run_push(Path(report.out), push_to_hub, private=private or None)
        table.add_row("pushed", f"{pushed.url} ({pushed.files} files, commit {pushed.commit[:12]})")
    console.print(table)
