"""End-of-run PNG: the loss terms over steps (left) and the CE at each loop count T (right).

Input is the run's metrics records (``metrics.jsonl``): loss terms are the keys ``loss``,
``ce*``, ``margin``, ``kl_anchor``, ``self_distill``, ``aux_*``; per-T CE is ``ce_T{t}``.
A term logged only on some steps (the KL anchor) is drawn at those steps only. The left panel
uses a symmetric-log y axis so that terms of 1e-3 show beside a CE of 4.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

PER_T = re.compile(r"^ce_T(\d+)$")
TERMS = re.compile(r"^(loss|ce|ce_lo|ce_hi|ce_hi_unweighted|margin|kl_anchor|self_distill|aux_.+)$")


def series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], float(r[key])) for r in records if key in r]
    return [s for s, _ in points], [v for _, v in points]


def plot_run(records: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Write the two-panel PNG to ``path`` and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = {k for r in records for k in r}
    terms = sorted(k for k in keys if TERMS.match(k))
    per_t = sorted((k for k in keys if PER_T.match(k)), key=lambda k: int(PER_T.match(k).group(1)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key in terms:
        left.plot(*series(records, key), label=key, marker="." if key == "kl_anchor" else None)
    left.set_yscale("symlog", linthresh=1e-3)  # small terms (margin, KL) stay visible beside the CE
    left.set(xlabel="step", ylabel="value (symlog)", title="loss terms")
    for key in per_t:
        right.plot(*series(records, key), label=f"T={PER_T.match(key).group(1)}", marker=".", linestyle="-")
    right.set(xlabel="step", ylabel="cross entropy", title="CE per loop count T")
    for ax in (left, right):
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
