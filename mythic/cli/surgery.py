"""``mythic surgery``: wrap a block of the fetched base in the recurrence and write a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mythic.cli.options import parse_range
from mythic.errors import MythicError
from mythic.hub import default_base_dir
from mythic.models.retrofit import RetrofitConfig
from mythic.recurrence import RULES
from mythic.surgery import surgery as run_surgery


def surgery(
    layer: Annotated[int | None, typer.Option(help="Loop this single layer (same as --block L:L+1).")] = None,
    block: Annotated[str | None, typer.Option(help="Loop layers START:END (half-open), e.g. 4:23.")] = None,
    base: Annotated[
        Path | None, typer.Option(help="Base model folder (default: the last one `mythic fetch base` wrote).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Checkpoint folder to write (default: ckpts/<base>-b<S>-<E>).")
    ] = None,
    max_loops: Annotated[
        int, typer.Option(help="Trained loop maximum: the number of per-loop parameter sets.")
    ] = RetrofitConfig.max_loops,
    loops: Annotated[
        int, typer.Option(help="Default n_loops stored in the checkpoint's config.")
    ] = RetrofitConfig.n_loops,
    rule: Annotated[str, typer.Option(help=f"Update rule: {', '.join(RULES)}.")] = RetrofitConfig.rule,
    drop: Annotated[
        str | None,
        typer.Option(help="Also drop layers A:B between prelude and block (retrofit-paper surgery)."),
    ] = None,
    lora_rank: Annotated[
        int, typer.Option(help="Depth-LoRA rank on the block's q/o projections (0: off).")
    ] = RetrofitConfig.lora_rank,
    lora_alpha: Annotated[
        float, typer.Option(help="Depth-LoRA alpha (scaling alpha/rank).")
    ] = RetrofitConfig.lora_alpha,
    inject_scale: Annotated[
        float, typer.Option(help="Residual rule: weight s of the LTI injection.")
    ] = RetrofitConfig.inject_scale,
    layerscale_init: Annotated[
        float, typer.Option(help="Initial per-loop LayerScale.")
    ] = RetrofitConfig.layerscale_init,
    layerscale_max: Annotated[
        float, typer.Option(help="Upper bound of the LayerScale (ls = max·sigmoid(θ)).")
    ] = RetrofitConfig.layerscale_max,
    gate_bias_init: Annotated[
        float, typer.Option(help="Initial gate bias (sigmoid(0) = 0.5).")
    ] = RetrofitConfig.gate_bias_init,
    loop_embedding: Annotated[
        bool, typer.Option(help="Add a sinusoidal loop-index embedding.")
    ] = RetrofitConfig.loop_embedding,
    dtype: Annotated[str, typer.Option(help="dtype to load the base in: float32, bfloat16, float16.")] = "float32",
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Build the looped wrapper, check T=1 identity with the base, and write a checkpoint folder.

    Every default is RetrofitConfig's own default."""
    if (layer is None) == (block is None):
        raise MythicError("give exactly one of --layer N or --block START:END")
    span = (layer, layer + 1) if layer is not None else parse_range(block or "", "--block")
    base_dir = base if base is not None else default_base_dir()
    target = out if out is not None else Path("ckpts") / f"{base_dir.name}-b{span[0]}-{span[1]}"
    console = Console()
    with console.status(f"surgery on {base_dir} …"):
        report = run_surgery(
            base_dir,
            target,
            block=span,
            drop=parse_range(drop, "--drop") if drop else None,
            dtype=dtype,
            force=force,
            max_loops=max_loops,
            n_loops=loops,
            rule=rule,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            inject_scale=inject_scale,
            layerscale_init=layerscale_init,
            layerscale_max=layerscale_max,
            gate_bias_init=gate_bias_init,
            loop_embedding=loop_embedding,
        )
    table = Table(title=f"surgery → {target}", show_header=False)
    table.add_row("base", report.base)
    table.add_row("block (looped layers)", f"{report.block[0]}:{report.block[1]}")
    if report.drop:
        table.add_row("dropped layers", f"{report.drop[0]}:{report.drop[1]}")
    table.add_row("rule / max loops", f"{report.rule} / {report.max_loops}")
    table.add_row("new parameters", f"{report.new_parameters:,}")
    table.add_row(
        "T=1 identity, max |Δlogit|",
        "n/a (layers dropped)" if report.drop else f"{report.identity_max_abs_diff:g}",
    )
    table.add_row("seconds", f"{report.seconds}")
    console.print(table)
