"""Surgery: turn a base folder into a mythic checkpoint (``mythic.loading`` describes and loads it).

The folder also gets a ``surgery-report.json`` and is written through a temp folder renamed at the
end, so a failed surgery leaves nothing. The T = 1 identity check is part of surgery: the base's
logits on a fixed batch of token ids against the wrapper's at ``n_loops=1``; the max abs diff is
reported (0.0 for a fresh wrapper with an identity-preserving rule).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mythic.errors import MythicError
from mythic.io import atomic_dir, write_json
from mythic.loading import DTYPES, base_revision, load_base_config, load_base_model, parse_dtype
from mythic.models.retrofit import RetrofitConfig, RetrofitForCausalLM

REPORT_FILE = "surgery-report.json"


@dataclass
class SurgeryReport:
    base: str
    base_revision: str | None
    block: tuple[int, int]
    drop: tuple[int, int] | None
    rule: str
    max_loops: int
    identity_max_abs_diff: float | None
    new_parameters: int
    base_parameters: int
    seconds: float


def identity_probe(vocab_size: int, batch: int = 2, length: int = 16) -> torch.Tensor:
    """The fixed token batch the identity check runs on."""
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(1234))


def surgery(
    base_dir: Path,
    out: Path,
    *,
    block: tuple[int, int],
    drop: tuple[int, int] | None = None,
    dtype: str = "float32",
    force: bool = False,
    **settings: Any,
) -> SurgeryReport:
    """Wrap ``block`` of the base in ``base_dir`` in the recurrence and write a checkpoint to ``out``."""
    started = time.perf_counter()
    config = load_base_config(base_dir)
    if out.exists() and not force:
        raise MythicError(f"output folder {out} already exists (pass --force to replace it)")
    settings |= {"block_start": block[0], "block_end": block[1], "drop": list(drop) if drop else None}
    RetrofitConfig(text_config=config, **settings).validate_surgery()
    base = load_base_model(base_dir, dtype=DTYPES[parse_dtype(dtype)]).eval()
    probe = identity_probe(config.vocab_size)
    with torch.no_grad():
        expected = base(probe).logits
    model = RetrofitForCausalLM.from_base(
        base, base_name_or_path=str(base_dir.resolve()), base_revision=base_revision(base_dir), **settings
    ).eval()
    with torch.no_grad():
        diff = float((model(probe, n_loops=1).logits - expected).abs().max()) if not drop else None
    report = SurgeryReport(
        base=str(base_dir.resolve()),
        base_revision=model.config.base_revision,
        block=block,
        drop=drop,
        rule=model.config.rule,
        max_loops=model.config.max_loops,
        identity_max_abs_diff=diff,
        new_parameters=sum(p.numel() for _, p in model.recurrence_parameters()),
        base_parameters=sum(p.numel() for p in model.base.parameters()),
        seconds=round(time.perf_counter() - started, 2),
    )
    with atomic_dir(out, force=force) as tmp:
        model.save_recurrence(tmp)
        write_json(tmp / REPORT_FILE, asdict(report))
    return report
