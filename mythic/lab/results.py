"""The experiment's records → mean ± SE over seeds, the claims as measured differences, a report.

Aggregation, per arm, row (base / T=n) and band (a difficulty range): each seed's accuracy over
the band's examples, then the mean over seeds with its standard error (``stats.metric``: the
seeds' spread, not the examples'); the same per difficulty, and the loop-state dynamics
c_t = ‖h_{t+1} − h_t‖ / ‖h_t‖ and r_t = ‖h_t‖ / √dim (``eval.tasks.loop_dynamics``).
``compare`` states the experiment's claims as measured differences, each with the standard
error √(SE_a² + SE_b²) and whether the two seed intervals (mean ± SE) overlap (the main arm is
the first):

- depth extrapolation: the main arm at its best T above the trained maximum vs at that maximum;
- overthinking: the main arm at the largest T vs at its best T;
- adaptive depth: each ``auto:MAX`` row of the main arm vs its best fixed T;
- controls: the main arm at the trained maximum vs each control at its best row.

An adaptive row also carries its mean loops per generated token (overall and per difficulty),
mean ± SE over seeds.

``write_report`` renders it all: ``results.json``, a Markdown page and its PNG figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from mythic.eval.stats import metric
from mythic.io import write_json
from mythic.lab.experiment import Experiment
from mythic.tasks.make import parse_difficulty_range


def band_accuracy(results: dict[str, Any], row: dict[str, Any], band: tuple[int, int]) -> float | None:
    """A row's accuracy over the examples whose difficulty lies in ``band`` (None if there are none)."""
    total = correct = 0.0
    for d, entry in row["per_difficulty"].items():
        if band[0] <= int(d) <= band[1]:
            m = entry["accuracy"]
            total += m["n"]
            correct += m["value"] * m["n"]
    return correct / total if total else None


def aggregate(experiment: Experiment, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± SE over seeds per arm, row and band, and per difficulty; see the module docstring."""
    bands = {name: parse_difficulty_range(text, f"bands.{name}") for name, text in experiment.bands.items()}
    arms: dict[str, Any] = {}
    for arm in experiment.arms:
        mine = sorted((r for r in records if r["arm"] == arm.name), key=lambda r: r["seed"])
        if not mine:
            continue
        labels = [row["label"] for row in mine[0]["results"]["rows"]]
        difficulties = mine[0]["results"]["difficulties"]
        rows = []
        for i, label in enumerate(labels):
            seed_rows = [r["results"]["rows"][i] for r in mine]
            per_band = {}
            for name, band in bands.items():
                values = [band_accuracy(r["results"], row, band) for r, row in zip(mine, seed_rows, strict=True)]
                if all(v is not None for v in values):
                    per_band[name] = metric(values)
            per_difficulty = {
                str(d): metric([row["per_difficulty"][str(d)]["accuracy"]["value"] for row in seed_rows])
                for d in difficulties
            }
            row = {
                "label": label,
                "n_loops": seed_rows[0]["n_loops"],
                "bands": per_band,
                "per_difficulty": per_difficulty,
            }
            if seed_rows[0]["n_loops"] == "auto":
                row["exit"] = seed_rows[0]["exit"]
                row["mean_loops"] = metric([r["mean_loops"] for r in seed_rows])
                row["loops_per_difficulty"] = {
                    str(d): metric([r["per_difficulty"][str(d)]["mean_loops"] for r in seed_rows]) for d in difficulties
                }
            rows.append(row)
        dynamics = None
        if all("dynamics" in r for r in mine):
            dynamics = {
                name: {
                    key: [metric([r["dynamics"][name][key][t] for r in mine]) for t in range(len(values))]
                    for key, values in curves.items()
                }
                for name, curves in mine[0]["dynamics"].items()
            }
        arms[arm.name] = {
            "description": arm.description,
            "seeds": [r["seed"] for r in mine],
            "trained_loops": mine[0]["trained_loops"],
            "difficulties": difficulties,
            "rows": rows,
            "dynamics": dynamics,
        }
    return {"experiment": experiment.name, "bands": experiment.bands, "arms": arms}


def difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """a − b with SE √(SE_a² + SE_b²), and whether the intervals mean ± SE overlap (both None when a side
    has no SE: one seed measures no spread)."""
    value = a["value"] - b["value"]
    sa, sb = a["stderr"], b["stderr"]
    if sa is None or sb is None:
        return {"value": value, "stderr": None, "overlap": None}
    return {"value": value, "stderr": math.sqrt(sa**2 + sb**2), "overlap": abs(value) <= sa + sb}


def overlap_text(claim: dict[str, Any]) -> str:
    """The overlap column: yes / no, or '-' without standard errors."""
    return "-" if claim["overlap"] is None else "yes" if claim["overlap"] else "no"


def best_row(rows: list[dict[str, Any]], band: str, allowed: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    candidates = [r for r in rows if band in r["bands"] and allowed(r)]
    return max(candidates, key=lambda r: r["bands"][band]["value"]) if candidates else None


def compare(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The claims of the module docstring, as measured differences per band (main arm = the first)."""
    arms = summary["arms"]
    if not arms:
        return []
    main_name, main = next(iter(arms.items()))
    trained = main["trained_loops"]
    looped = [r for r in main["rows"] if isinstance(r["n_loops"], int)]
    adaptive = [r for r in main["rows"] if r["n_loops"] == "auto"]
    at_trained = next((r for r in looped if r["n_loops"] == trained), None)
    claims = []
    for band in summary["bands"]:
        deeper = best_row(looped, band, lambda r: r["n_loops"] > trained)
        if at_trained is not None and deeper is not None and band in at_trained["bands"]:
            claims.append(
                {
                    "claim": f"{main_name}: best T > {trained} vs T={trained}",
                    "band": band,
                    "rows": [deeper["label"], at_trained["label"]],
                    **difference(deeper["bands"][band], at_trained["bands"][band]),
                }
            )
        best = best_row(looped, band, lambda r: True)
        last = max(looped, key=lambda r: r["n_loops"], default=None)
        if best is not None and last is not None and last is not best:
            claims.append(
                {
                    "claim": f"{main_name}: T={last['n_loops']} (most loops) vs best T",
                    "band": band,
                    "rows": [last["label"], best["label"]],
                    **difference(last["bands"][band], best["bands"][band]),
                }
            )
        for auto in adaptive:
            if best is not None and band in auto["bands"]:
                claims.append(
                    {
                        "claim": f"{main_name}: {auto['label']} {auto['exit']} (adaptive) vs best T",
                        "band": band,
                        "rows": [auto["label"], best["label"]],
                        **difference(auto["bands"][band], best["bands"][band]),
                    }
                )
        for name, arm in list(arms.items())[1:]:
            control = best_row(arm["rows"], band, lambda r: True)
            if at_trained is not None and control is not None and band in at_trained["bands"]:
                claims.append(
                    {
                        "claim": f"{main_name} T={trained} vs {name} (its best row)",
                        "band": band,
                        "rows": [at_trained["label"], f"{name} {control['label']}"],
                        **difference(at_trained["bands"][band], control["bands"][band]),
                    }
                )
    return claims


def points(m: dict[str, Any]) -> str:
    """A metric in percentage points: '43.1 ± 2.0' (no ± with one seed)."""
    se = f" ± {m['stderr'] * 100:.1f}" if m.get("stderr") is not None else ""
    return f"{m['value'] * 100:.1f}{se}"


def accuracy_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per arm and loop count, one column per band, in points ± SE."""
    bands = list(summary["bands"])
    header = ["arm", "row", *(f"{b} ({summary['bands'][b]})" for b in bands)]
    rows = [
        [name, row_title(row), *(points(row["bands"][b]) if b in row["bands"] else "-" for b in bands)]
        for name, arm in summary["arms"].items()
        for row in arm["rows"]
    ]
    return header, rows


def loops_text(m: dict[str, Any]) -> str:
    """Mean loops as '4.26 ± 0.31' (no ± with one seed)."""
    se = f" ± {m['stderr']:.2f}" if m.get("stderr") is not None else ""
    return f"{m['value']:.2f}{se}"


def row_title(row: dict[str, Any]) -> str:
    """A row's label; an adaptive row's with its exit rule and mean loops ('auto:32 kl:0.001, 4.2 loops')."""
    if row["n_loops"] != "auto":
        return row["label"]
    return f"{row['label']} {row['exit']}, {row['mean_loops']['value']:.1f} loops"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot_bands(summary: dict[str, Any], path: Path) -> None:
    """Accuracy against loops, one panel per band, one line per arm (mean ± SE over seeds)."""
    bands = list(summary["bands"])
    fig = Figure(figsize=(4.2 * len(bands), 3.6))
    axes = fig.subplots(1, len(bands), squeeze=False)[0]
    for ax, band in zip(axes, bands, strict=True):
        for name, arm in summary["arms"].items():
            rows = [r for r in arm["rows"] if isinstance(r["n_loops"], int) and band in r["bands"]]
            for r in arm["rows"]:
                if r["n_loops"] == "auto" and band in r["bands"]:
                    ax.plot(
                        [r["mean_loops"]["value"]],
                        [r["bands"][band]["value"]],
                        marker="*",
                        markersize=12,
                        linestyle="none",
                        color=f"C{list(summary['arms']).index(name)}",
                        label=f"{name} {r['label']} {r['exit']} (at its mean loops)",
                    )
            base = next((r for r in arm["rows"] if r["n_loops"] is None and band in r["bands"]), None)
            if len(rows) > 1:
                ax.errorbar(
                    [r["n_loops"] for r in rows],
                    [r["bands"][band]["value"] for r in rows],
                    yerr=[r["bands"][band]["stderr"] or 0.0 for r in rows],
                    marker="o",
                    capsize=3,
                    label=name,
                )
            elif rows:
                m = rows[0]["bands"][band]
                ax.axhline(m["value"], linestyle="--", color=f"C{list(summary['arms']).index(name)}", label=name)
            if base is not None:
                ax.axhline(base["bands"][band]["value"], linestyle=":", color="gray", label=f"{name} base")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("loops (T)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{band} (difficulty {summary['bands'][band]})", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_heatmap(arm: dict[str, Any], path: Path, title: str) -> None:
    """The arm's mean accuracy, difficulty × row."""
    rows, difficulties = arm["rows"], arm["difficulties"]
    values = [[row["per_difficulty"][str(d)]["value"] for row in rows] for d in difficulties]
    fig = Figure(figsize=(1.5 + 0.6 * len(rows), 1.2 + 0.35 * len(difficulties)))
    ax = fig.subplots()
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", origin="lower")
    for i, line in enumerate(values):
        for j, value in enumerate(line):
            ax.text(j, i, f"{value * 100:.0f}", ha="center", va="center", fontsize=7, color="w" if value < 0.6 else "k")
    ax.set_xticks(range(len(rows)), [row["label"] for row in rows])
    ax.set_yticks(range(len(difficulties)), [str(d) for d in difficulties])
    ax.set_xlabel("loops")
    ax.set_ylabel("difficulty")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="accuracy (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_dynamics(arm: dict[str, Any], path: Path, title: str) -> None:
    """c_t (log y) and r_t against t, one line per difficulty, side by side."""
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    for ax, name, label in (
        (left, "change", "‖h_{t+1} − h_t‖ / ‖h_t‖"),
        (right, "rms", "‖h_t‖ / √dim"),
    ):
        for key, values in arm["dynamics"][name].items():
            ys = [max(v["value"], 1e-8) for v in values]
            ax.plot(range(1, len(ys) + 1), ys, label=key, lw=2 if key == "all" else 1)
        ax.set_xlabel("loop t")
        ax.set_ylabel(label)
    left.set_yscale("log")
    left.set_title(title, fontsize=9)
    right.legend(fontsize=6, ncol=2, title="difficulty")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report_section(
    experiment: Experiment,
    summary: dict[str, Any],
    claims: list[dict[str, Any]],
    folder: Path,
    preamble: str = "",
    prefix: str = "",
    level: int = 1,
) -> str:
    """The experiment's Markdown (figures written into ``folder``, linked as ``prefix`` + name)."""
    folder.mkdir(parents=True, exist_ok=True)
    main_name, main = next(iter(summary["arms"].items()))
    plot_bands(summary, folder / "accuracy-vs-loops.png")
    plot_heatmap(main, folder / f"heatmap-{main_name}.png", f"{experiment.name}: {main_name}, mean over seeds")
    seeds = len(experiment.seeds)
    h1, h2 = "#" * level, "#" * (level + 1)
    lines = [f"{h1} {experiment.name}", "", preamble.strip(), ""] if preamble else [f"{h1} {experiment.name}", ""]
    lines += [f"{h2} Arms", ""]
    lines += [
        markdown_table(
            ["arm", "recipe", "overrides", "what it is"],
            [
                [a.name, f"`{a.recipe}`", "<br>".join(f"`{o}`" for o in a.set) or "-", a.description]
                for a in experiment.arms
            ],
        ),
        "",
        f"{h2} Accuracy by difficulty band (%, mean ± SE over {seeds} seeds; test split)",
        "",
    ]
    lines += [markdown_table(*accuracy_table(summary)), ""]
    lines += [f"![accuracy against loops]({prefix}accuracy-vs-loops.png)", ""]
    lines += [f"{h2} Claims, as measured (percentage points; SE = √(SE_a² + SE_b²))", ""]
    lines += [
        markdown_table(
            ["claim", "band", "rows", "difference", "seed intervals overlap"],
            [[c["claim"], c["band"], " vs ".join(c["rows"]), points(c), overlap_text(c)] for c in claims],
        ),
        "",
        f"{h2} Per difficulty: {main_name} (%, mean ± SE over seeds)",
        "",
    ]
    per_difficulty = [
        [str(d), *(points(r["per_difficulty"][str(d)]) for r in main["rows"])] for d in main["difficulties"]
    ]
    lines += [markdown_table(["difficulty", *(r["label"] for r in main["rows"])], per_difficulty), ""]
    lines += [f"![heatmap]({prefix}heatmap-{main_name}.png)", ""]
    adaptive = [r for r in main["rows"] if r["n_loops"] == "auto"]
    if adaptive:
        lines += [
            f"{h2} Adaptive depth: {main_name}, loops used per generated token (mean ± SE over seeds)",
            "",
            markdown_table(
                ["difficulty", *(f"{r['label']} {r['exit']}" for r in adaptive)],
                [
                    [str(d), *(loops_text(r["loops_per_difficulty"][str(d)]) for r in adaptive)]
                    for d in main["difficulties"]
                ],
            ),
            "",
        ]
    if main["dynamics"] is not None:
        plot_dynamics(main, folder / f"dynamics-{main_name}.png", f"{main_name}: loop state at the answer position")
        change, rms = main["dynamics"]["change"], main["dynamics"]["rms"]
        shown = [t for t in (1, 2, 3, 4, 6, 8, 12, 16, 24, 31, 32) if t <= len(rms["all"])]
        steps = [t for t in shown if t <= len(change["all"])]  # c_t stops one loop before r_t
        lines += [
            f"{h2} Loop state: {main_name} (at the answer position, mean over seeds)",
            "",
            "c_t = ‖h_(t+1) − h_t‖ / ‖h_t‖ (0: a fixed point, more loops change nothing):",
            "",
            markdown_table(
                ["difficulty", *(f"t={t}" for t in steps)],
                [[k, *(f"{v[t - 1]['value']:.2e}" for t in steps)] for k, v in change.items()],
            ),
            "",
            "r_t = ‖h_t‖ / √dim:",
            "",
            markdown_table(
                ["difficulty", *(f"t={t}" for t in shown)],
                [[k, *(f"{v[t - 1]['value']:.3g}" for t in shown)] for k, v in rms.items()],
            ),
            "",
            f"![loop state]({prefix}dynamics-{main_name}.png)",
            "",
        ]
    return "\n".join(lines)


def write_report(
    experiment: Experiment, summary: dict[str, Any], claims: list[dict[str, Any]], folder: Path, preamble: str = ""
) -> Path:
    """``results.json``, ``results.md`` and the figures into ``folder``; returns the Markdown path."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "results.json", {"summary": summary, "claims": claims})
    path = folder / "results.md"
    path.write_text(report_section(experiment, summary, claims, folder, preamble))
    return path


def write_combined_report(
    sections: list[tuple[Experiment, dict[str, Any], list[dict[str, Any]], str]], path: Path, title: str = "Results"
) -> None:
    """One Markdown page for several experiments; figures in ``<page stem>/<experiment>/`` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", ""]
    for experiment, summary, claims, preamble in sections:
        folder = path.parent / path.stem / experiment.name
        prefix = f"{path.stem}/{experiment.name}/"
        parts.append(report_section(experiment, summary, claims, folder, preamble, prefix, level=2))
    path.write_text("\n".join(parts))
