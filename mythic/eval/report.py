"""Result rows → a rich table, a per-problem diff table, a JSON file and a PNG plot against loops.

A results dict (``humaneval``, ``perplexity`` and ``tasks`` alike) has ``rows``: one per evaluated
setting, ``{"label": "base" | "T=n" | "auto:MAX", "n_loops": None | n | "auto", "metrics": {name:
{"value", "stderr"}}, ...}`` plus row extras (``mean_loops``, ``tokens_per_second``, ``mean_tokens``,
``seconds``; an adaptive row also ``max_loops`` and ``exit``); the plot draws one metric against
n_loops with its standard error as error bars, each adaptive row as a star at its mean loops, and
the base row as a horizontal line with a ±1 SE band. Task results add ``per_difficulty`` to every
row: a table of rows × difficulties (with the adaptive rows' mean loops per difficulty) and a
heatmap of accuracy (difficulty × row).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from rich.table import Table

from mythic.io import write_json


def _fmt(metric: dict[str, Any], percent: bool) -> str:
    scale, unit = (100.0, "%") if percent else (1.0, "")
    text = f"{metric['value'] * scale:.2f}{unit}"
    if metric.get("stderr") is not None:
        text += f" ± {metric['stderr'] * scale:.2f}"
    return text


def results_table(results: dict[str, Any], title: str) -> Table:
    """One line per row; metric columns in the order of the first row, then the extras."""
    rows = results["rows"]
    metrics = list(rows[0]["metrics"]) if rows else []
    extras = [
        k
        for k in ("mean_loops", "tokens_per_second", "mean_tokens", "tokens", "seconds")
        if any(k in row for row in rows)
    ]
    table = Table(title=title)
    table.add_column("row")
    for name in [*metrics, *extras]:
        table.add_column(name.replace("_", " ").replace("tokens per second", "tokens/s"), justify="right")
    for row in rows:
        cells = [_fmt(row["metrics"][m], m.startswith("pass@") or m == "accuracy") for m in metrics]
        cells += [_extra(row.get(k)) for k in extras]
        label = f"{row['label']} {row['exit']}" if "exit" in row else row["label"]
        table.add_row(label, *cells)
    return table


def _extra(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def difficulty_table(results: dict[str, Any], metric: str = "accuracy") -> Table:
    """Rows × difficulties: ``metric`` in percent (± SE) for each row's examples of each difficulty."""
    table = Table(title=f"{metric} per difficulty (%)")
    table.add_column("difficulty", justify="right")
    for row in results["rows"]:
        table.add_column(row["label"], justify="right")
    for d in results["difficulties"]:
        cells = []
        for row in results["rows"]:
            m = row["per_difficulty"][str(d)][metric]
            se = f" ± {m['stderr'] * 100:.0f}" if m["stderr"] is not None else ""
            cells.append(f"{m['value'] * 100:.0f}{se}")
        table.add_row(str(d), *cells)
    return table


def loops_table(results: dict[str, Any]) -> Table | None:
    """Difficulties × adaptive rows: the mean loops each spent per generated token (None without adaptive rows)."""
    adaptive = [row for row in results["rows"] if row["n_loops"] == "auto"]
    if not adaptive or not results["difficulties"]:
        return None
    table = Table(title="mean loops per generated token, adaptive rows")
    table.add_column("difficulty", justify="right")
    for row in adaptive:
        table.add_column(f"{row['label']} {row['exit']}", justify="right")
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
    fig = Figure(figsize=(1.2 + 0.7 * len(columns), 1.2 + 0.4 * len(difficulties)))
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def diff_table(results: dict[str, Any]) -> Table:
    """Which problems each comparison gains and loses."""
    table = Table(title="per-problem difference")
    for name in ("from", "to", "gained", "lost"):
        table.add_column(name)
    for d in results.get("diffs", []):
        table.add_row(d["from"], d["to"], ", ".join(d["gained"]) or "-", ", ".join(d["lost"]) or "-")
    return table


def plot(results: dict[str, Any], metric: str, path: str | Path, title: str) -> None:
    """``metric`` against loops (log2 axis) with SE bars; the base row as a horizontal line and band."""
    loop_rows = [r for r in results["rows"] if isinstance(r["n_loops"], int)]
    adaptive = [r for r in results["rows"] if r["n_loops"] == "auto" and r.get("mean_loops") is not None]
    base = next((r for r in results["rows"] if r["n_loops"] is None), None)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    if loop_rows:
        ax.errorbar(
            [r["n_loops"] for r in loop_rows],
            [r["metrics"][metric]["value"] for r in loop_rows],
            yerr=[r["metrics"][metric]["stderr"] or 0.0 for r in loop_rows],
            marker="o",
            capsize=3,
            label="mythic",
        )
    for row in adaptive:
        ax.errorbar(
            [row["mean_loops"]],
            [row["metrics"][metric]["value"]],
            yerr=[row["metrics"][metric]["stderr"] or 0.0],
            marker="*",
            markersize=12,
            capsize=3,
            linestyle="none",
            label=f"{row['label']} {row['exit']} (at its mean loops)",
        )
    if loop_rows or adaptive:
        ax.set_xscale("log", base=2)
    if loop_rows:
        ax.set_xticks([r["n_loops"] for r in loop_rows], [str(r["n_loops"]) for r in loop_rows])
    if base is not None:
        value, se = base["metrics"][metric]["value"], base["metrics"][metric]["stderr"] or 0.0
        ax.axhline(value, color="gray", linestyle="--", label="base")
        ax.axhspan(value - se, value + se, color="gray", alpha=0.15)
    ax.set_xlabel("loops (T)")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def save(results: dict[str, Any], folder: str | Path, name: str, metric: str, title: str) -> dict[str, Path]:
    """Write ``{name}.json`` and ``{name}.png`` into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / f"{name}.json", "png": folder / f"{name}.png"}
    write_json(paths["json"], results)
    plot(results, metric, paths["png"], title)
    return paths
