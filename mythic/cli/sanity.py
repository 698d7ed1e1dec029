"""``mythic sanity``: phase 0 on a base — memory estimate, load (optionally 4-bit), smoke test, layer probe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mythic.cli.bars import progress_bar
from mythic.hub import default_base_dir
from mythic.quant import MemoryEstimate
from mythic.sanity import PROBE_LOOPS, PROMPT, SanityReport
from mythic.sanity import sanity as run_sanity

GB = 1e9


def sanity(
    base: Annotated[
        Path | None, typer.Option(help="Base model folder (default: the last one `mythic fetch base` wrote).")
    ] = None,
    four_bit: Annotated[
        bool,
        typer.Option(
            "--4bit",
            help="Load in 4 bits (bitsandbytes nf4, double quant, bf16 compute; MoE expert weights too).",
        ),
    ] = False,
    layers: Annotated[
        str | None,
        typer.Option(help="Candidate layers / START:END blocks, e.g. 8,10,13,16 (default: 4 middle layers)."),
    ] = None,
    scan: Annotated[bool, typer.Option(help="Probe every single layer.")] = False,
    dtype: Annotated[str, typer.Option(help="dtype without --4bit: float32, bfloat16, float16.")] = "float32",
    device: Annotated[str | None, typer.Option(help="cpu or cuda[:N] (default: cuda when available).")] = None,
    rows: Annotated[int, typer.Option(help="Rows of the held-out sample.")] = 4,
    seq_len: Annotated[int, typer.Option(help="Tokens per row of the held-out sample.")] = 256,
    prompt: Annotated[str | None, typer.Option(help="Prompt of the generation smoke test.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens the smoke test generates.")] = 48,
    out: Annotated[
        Path | None, typer.Option(help="JSON report to write (default: sanity/<base folder name>.json).")
    ] = None,
) -> None:
    """Check a base before any training: does it load and talk, and which block tolerates looping best?

    Estimates the memory first and refuses when the base will not fit.

    Then: a chat-template smoke test, the T=1 identity check of a fresh wrapper per candidate block, and each
    candidate looped 2 and 4 times untrained (held-out loss, hidden-state norm growth); recommends a block.
    """
    base_dir = base if base is not None else default_base_dir()
    target = out if out is not None else Path("sanity") / f"{base_dir.name}.json"
    console = Console()

    def show_estimate(estimate: MemoryEstimate) -> None:
        where = "free on the GPU" if estimate.device.startswith("cuda") else "RAM available"
        console.print(
            f"memory estimate: {estimate.need / GB:.2f} GB on {estimate.device} (weights "
            f"{estimate.weights / GB:.2f} + activations {estimate.activations / GB:.2f}); "
            f"{estimate.available / GB:.2f} GB {where}"
            + (f"; load peak {estimate.load_peak / GB:.2f} GB of RAM" if estimate.quantized else "")
        )

    with progress_bar(console=console, transient=True) as bar:
        task = bar.add_task("sanity", total=None)

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)

        report = run_sanity(
            base_dir,
            quantize=four_bit,
            layers=layers,
            scan=scan,
            dtype=dtype,
            device=device,
            rows=rows,
            seq_len=seq_len,
            prompt=prompt or PROMPT,
            max_new_tokens=max_new_tokens,
            out=target,
            on_estimate=show_estimate,
            progress=progress,
        )

    console.print(summary_table(report, four_bit))
    console.print(candidates_table(report))
    for line in report.skipped:
        console.print(f"skipped {line}")
    console.print(f"recommended: {report.recommendation}")
    console.print(f"report: {target}")


def summary_table(report: SanityReport, four_bit: bool) -> Table:
    """The load, memory and smoke-test half of a sanity report."""
    summary = Table(title=f"sanity: {report.base}", show_header=False)
    summary.add_row("device / weights", f"{report.device} / {report.quantization}")
    summary.add_row("load time", f"{report.load_seconds} s")
    summary.add_row("estimated need", f"{report.estimate['need'] / GB:.3f} GB")
    summary.add_row(report.peak_memory_kind, f"{report.peak_memory / GB:.3f} GB")
    if four_bit:
        summary.add_row("quantised modules / tensors", str(report.quantized_modules))
        summary.add_row("Linear4bit on bnb's generic CPU path", str(len(report.generic_cpu_path)))
        for group in report.unquantized[:6]:
            summary.add_row(f"unquantised {group['name']}", f"{group['values']:,} values: {group['why']}")
    summary.add_row("smoke test prompt", report.generation["prompt"])
    summary.add_row("completion", report.generation["completion"] or "(empty)")
    sample = report.sample
    summary.add_row("held-out sample", f"{sample['rows']}×{sample['seq_len']} tokens of " + ", ".join(sample["files"]))
    return summary


def candidates_table(report: SanityReport) -> Table:
    """The candidate blocks looped untrained: T=1 identity, held-out loss and state growth; ★ the recommended one."""
    table = Table(title="candidate blocks, looped untrained (plain repeat)")
    table.add_column("block")
    table.add_column("T=1 identity |Δ|", justify="right")
    for name in ("loss", "‖h‖/‖e‖"):
        for t in PROBE_LOOPS:
            table.add_column(f"{name} T={t}", justify="right")
    for c in report.candidates:
        mark = " ★" if tuple(c.block) == report.recommended else ""
        table.add_row(
            f"{c.block[0]}:{c.block[1]}{mark}",
            f"{c.identity_max_abs_diff:g}",
            *(f"{c.loss[t]:.4f}" for t in PROBE_LOOPS),
            *(f"{c.norm_growth[t]:.2f}" for t in PROBE_LOOPS),
        )
    return table
