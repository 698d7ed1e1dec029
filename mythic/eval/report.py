"""Result rows → a rich table, a per-problem diff table, a JSON file and a PNG plot against loops.

A results dict (``humaneval``, ``perplexity`` and ``tasks`` alike) has ``rows``: one per evaluated setting,
``{"label": "base" | "T=n" | "auto:MAX", "n_loops": None | n | "auto", "metrics": {name: {"value",
"stderr"}}, ...}`` plus row extras (``mean_loops``, ``tokens_per_second``, ``mean_tokens``, ``seconds``;
an adaptive row also ``max_loops`` and ``exit``). The plot draws one metric against n_loops with SE
error bars, each adaptive row as a star at its mean loops, the base row as a line with a ±1 SE band.
Task results add ``per_difficulty`` to every row: a table of rows × difficulties (with the adaptive
rows' mean loops per difficulty) and a heatmap of accuracy (difficulty × row).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from rich.table import Table

from mythic.io import write_json
from mythic.recurrence.exit import TOLD

EXTRAS = ("mean_loops", "tokens_per_second", "mean_tokens", "tokens", "seconds")  # row fields beside the metrics


def metric_text(m: dict[str, Any], scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    """A metric as 'value ± SE' (times ``scale``, ``digits`` decimals; no ± without a standard error)."""
    se = f" ± {m['stderr'] * scale:.{digits}f}" if m.get("stderr") is not None else ""
    return f"{m['value'] * scale:.{digits}f}{unit}{se}"


def results_table(results: dict[str, Any], title: str) -> Table:
    """One line per row; metric columns in the order of the first row, then the extras."""
    rows = results["rows"]
    metrics = list(rows[0]["metrics"]) if rows else []
    extras = [k for k in EXTRAS if any(k in row for row in rows)]
    scales = {m: (100.0, 2, "%") if m.startswith("pass@") or m == "accuracy" else () for m in metrics}
    table = Table("row", title=title)
    for name in [*metrics, *extras]:
        table.add_column(name.replace("_", " ").replace("tokens per second", "tokens/s"), justify="right")
    for row in rows:
        cells = [metric_text(row["metrics"][m], *scales[m]) for m in metrics]
        table.add_row(row_title(row), *cells, *(_extra(row.get(k)) for k in extras))
    return table


def row_title(row: dict[str, Any]) -> str:
    """A row's label; an adaptive row's with its exit rule ('auto:32 kl:0.001')."""
    return f"{row['label']} {row['exit']}" if row["n_loops"] == "auto" else row["label"]


def _extra(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def difficulty_table(results: dict[str, Any], metric: str = "accuracy") -> Table:
    """Rows × difficulties: ``metric`` in percent (± SE) for each row's examples of each difficulty."""
    table = Table(title=f"{metric} per difficulty (%)")
    for name in ["difficulty", *(row["label"] for row in results["rows"])]:
        table.add_column(name, justify="right")
    for d in results["difficulties"]:
        table.add_row(str(d), *(metric_text(row["per_difficulty"][str(d)][metric], 100, 0) for row in results["rows"]))
    return table


def loops_table(results: dict[str, Any]) -> Table | None:
    """Difficulties × adaptive rows: the mean loops each spent per generated token (None without adaptive rows)."""
    adaptive = [row for row in results["rows"] if row["n_loops"] == "auto"]
    if not adaptive or not results["difficulties"]:
        return None
    table = Table(title="mean loops per generated token, adaptive rows")
    for name in ["difficulty", *map(row_title, adaptive)]:
        table.add_column(name, justify="right")
    for d in results["difficulties"]:
        table.add_row(str(d), *(f"{row['per_difficulty'][str(d)]['mean_loops']:.2f}" for row in adaptive))
    return table


def heatmap(results: dict[str, Any], path: str | Path, title: str, metric: str = "accuracy") -> None:
    """``metric`` as colour, difficulty on the y axis and the rows (base, T=1, T=2, …) on the x axis."""
    rows, difficulties = results["rows"], results["difficulties"]
    values = [[row["per_difficulty"][str(d)][metric]["value"] for row in rows] for d in difficulties]
    heatmap_figure(values, [row["label"] for row in rows], difficulties, path, title, metric)


def heatmap_figure(
    values: list[list[float]], columns: list[str], difficulties: list[int], path: str | Path, title: str, label: str
) -> None:
    """A difficulty × column grid of values in [0, 1] as colour, each cell printed in percent."""
    fig = Figure(figsize=(1.2 + 0.7 * len(columns), 1.2 + 0.4 * len(difficulties)), layout="tight")
    ax = fig.subplots()
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", origin="lower")
    for i, line in enumerate(values):
        for j, value in enumerate(line):
            ax.text(j, i, f"{value * 100:.0f}", ha="center", va="center", fontsize=7, color="w" if value < 0.6 else "k")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(difficulties)), [str(d) for d in difficulties])
    ax.set_xlabel("loops")
    ax.set_ylabel("difficulty")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=label)
    fig.savefig(path, dpi=120)


def diff_table(results: dict[str, Any]) -> Table:
    """Which problems each comparison gains and loses."""
    table = Table("from", "to", "gained", "lost", title="per-problem difference")
    for d in results["diffs"]:
        table.add_row(d["from"], d["to"], ", ".join(d["gained"]) or "-", ", ".join(d["lost"]) or "-")
    return table


def plot_rows(
    ax: Axes,
    rows: list[tuple[dict[str, Any], dict[str, Any]]],
    name: str,
    colour: str | None = None,
    star: str = "mean_loops",
) -> None:
    """(row, its metric) pairs against loops on a log2 axis: the fixed rows with SE bars (a dashed line when there is
    one), each adaptive row a star at its ``star`` loops, the base a dotted gray line with a ±1 SE band."""
    fixed = [(r["n_loops"], m) for r, m in rows if isinstance(r["n_loops"], int)]
    if len(fixed) > 1:
        x, y, se = zip(*((n, m["value"], m["stderr"] or 0.0) for n, m in fixed), strict=True)
        ax.errorbar(x, y, se, marker="o", capsize=3, color=colour, label=name)
    elif fixed:
        ax.axhline(fixed[0][1]["value"], linestyle="--", color=colour, label=name)
    for r, m in rows:
        se = m["stderr"] or 0.0
        if r["n_loops"] in ("auto", TOLD) and r.get(star) is not None:
            x = r[star]["value"] if isinstance(r[star], dict) else r[star]  # a float, or a mean ± SE over seeds
            label = f"{name} {row_title(r)} (at its {star.replace('_', ' ')})"
            ax.errorbar([x], [m["value"]], [se], fmt="*", markersize=12, capsize=3, color=colour, label=label)
        elif r["n_loops"] is None:
            ax.axhline(m["value"], color="gray", linestyle=":", label=f"{name} base")
            ax.axhspan(m["value"] - se, m["value"] + se, color="gray", alpha=0.15)
    if any(r["n_loops"] is not None for r, _ in rows):
        ax.set_xscale("log", base=2)
    ax.set_xlabel("loops (T)")


def plot(results: dict[str, Any], metric: str, path: str | Path, title: str) -> None:
    """``metric`` against loops (log2 axis) with SE bars; the base row as a horizontal line and band."""
    fig = Figure(figsize=(6, 4), layout="tight")
    ax = fig.subplots()
    plot_rows(ax, [(r, r["metrics"][metric]) for r in results["rows"]], "mythic")
    fixed = [r["n_loops"] for r in results["rows"] if isinstance(r["n_loops"], int)]
    if fixed:
        ax.set_xticks(fixed, [str(n) for n in fixed])
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend()
    fig.savefig(path, dpi=120)


def save(results: dict[str, Any], folder: str | Path, name: str, metric: str, title: str) -> dict[str, Path]:
    """Write ``{name}.json`` and ``{name}.png`` into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / f"{name}.json", "png": folder / f"{name}.png"}
    write_json(paths["json"], results)
    plot(results, metric, paths["png"], title)
    return paths
