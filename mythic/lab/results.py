"""The experiment's records → mean ± SE over seeds, baselines, the claims as measured differences, a report.

Aggregation, per arm, row (base / T=n / auto) and band (a difficulty range), on each split: each seed's
accuracy over the band's examples, then the mean over seeds with its standard error (``stats.metric``:
the seeds' spread, not the examples'); the same per difficulty (test), with the loop-state dynamics c_t,
r_t (``eval.exact_match.loop_dynamics``) and an adaptive row's loop costs (``COSTS``).

Baselines: the generator's shallow heuristics (``tasks/baselines.py``) scored on the test file, per band
and difficulty; the strongest one per band is what a claim compares against.

``compare`` states the claims, each a difference of test accuracies with the standard error
√(SE_a² + SE_b²) and whether the two seed intervals (mean ± SE) overlap. Every "best" row is chosen on
valid (the mean over seeds there), never on test (the main arm is the first):

- depth extrapolation: the main arm's best T above the trained maximum vs T = the trained maximum;
- overthinking: the main arm at the largest T vs at its best T;
- adaptive depth: each ``auto:MAX`` row of the main arm vs its best fixed T;
- baseline: the main arm's best T vs the strongest shallow heuristic;
- controls: the main arm's best T, and each of its ``auto:MAX`` rows, vs each control's best row.

``write_report`` renders it all: ``results.json``, a Markdown page and its PNG figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from mythic.eval.report import heatmap_figure, metric_text, plot_rows, row_title
from mythic.eval.stats import metric
from mythic.io import write_json
from mythic.lab.experiment import Experiment, Outcome, band_accuracy, point_label
from mythic.recurrence.exit import TOLD
from mythic.tasks.baselines import score, strongest
from mythic.tasks.files import read_tasks
from mythic.tasks.make import generator

COSTS = {  # what an adaptive row's loops cost → its column in the report
    "answer_loops": "answer token",
    "mean_loops": "per generated token (EOS step included)",
    "prompt_token_loops": "prompt token-loops",
}


def per_difficulty(
    seed_rows: list[dict[str, Any]], difficulties: list[int], value: Callable[[dict[str, Any]], float]
) -> dict[str, Any]:
    """Mean ± SE over seeds of ``value(entry)`` of each difficulty's entry of the seeds' rows."""
    return {str(d): metric([value(row["per_difficulty"][str(d)]) for row in seed_rows]) for d in difficulties}


def split_rows(experiment: Experiment, mine: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One split's records of one arm (sorted by seed) → its rows, mean ± SE over seeds per band and difficulty."""
    bands = experiment.band_ranges()
    difficulties = mine[0]["results"]["difficulties"]
    rows = []
    for i, first in enumerate(mine[0]["results"]["rows"]):
        seed_rows = [r["results"]["rows"][i] for r in mine]
        per_band = {name: [band_accuracy(row, band) for row in seed_rows] for name, band in bands.items()}
        row = {
            "label": first["label"],
            "n_loops": first["n_loops"],
            "bands": {name: metric(values) for name, values in per_band.items() if None not in values},
            "per_difficulty": per_difficulty(seed_rows, difficulties, lambda entry: entry["accuracy"]["value"]),
        }
        if first["n_loops"] in ("auto", TOLD):  # adaptive or told: the loops vary by example
            if first["n_loops"] == "auto":
                row["exit"] = first["exit"]
            for cost in COSTS:
                row[cost] = metric([r[cost] for r in seed_rows])
                row[f"{cost}_per_difficulty"] = per_difficulty(seed_rows, difficulties, itemgetter(cost))
        rows.append(row)
    return rows


def experiment_baselines(experiment: Experiment) -> dict[str, Any]:
    """The generator's shallow heuristics scored on the experiment's test file, per band and difficulty."""
    tests = read_tasks(experiment.data_dir / "test.jsonl")
    heuristics = generator(experiment.tasks.generator).baselines
    return score(tests, heuristics, experiment.band_ranges())


def aggregate(experiment: Experiment, outcome: Outcome, baselines: dict[str, Any]) -> dict[str, Any]:
    """Mean ± SE over seeds per arm, row and band on test (and on valid, for choosing), the tuning table, and
    ``baselines`` (``experiment_baselines``); see the module docstring."""
    arms: dict[str, Any] = {}
    for arm in experiment.arms:
        tests, valids = (
            sorted((r for r in outcome.records[split] if r["arm"] == arm.name), key=lambda r: r["seed"])
            for split in ("test", "valid")
        )
        if not tests:
            continue
        rows = split_rows(experiment, tests)
        for row, valid in zip(rows, split_rows(experiment, valids), strict=True):
            row["valid_bands"] = valid["bands"]
        dynamics = None
        if all("dynamics" in r for r in tests):
            dynamics = {
                name: {
                    key: [metric([r["dynamics"][name][key][t] for r in tests]) for t in range(len(values))]
                    for key, values in curves.items()
                }
                for name, curves in tests[0]["dynamics"].items()
            }
        curves = [r["curve"] for r in tests if r.get("curve")]
        arms[arm.name] = {
            "description": arm.description,
            "curves": curves,
            "seeds": [r["seed"] for r in tests],
            "point": tests[0]["point"],
            "trained_loops": tests[0]["trained_loops"],
            "difficulties": tests[0]["results"]["difficulties"],
            "rows": rows,
            "dynamics": dynamics,
            "tuning": [{"point": p, "valid": s} for p, s in outcome.tuning.get(arm.name, [])],
        }
    return {"experiment": experiment.name, "bands": experiment.bands, "arms": arms, "baselines": baselines}


def difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """a − b with SE √(SE_a² + SE_b²), and whether the intervals mean ± SE overlap (both None when a side
    has no SE: one seed measures no spread)."""
    value = a["value"] - b["value"]
    sa, sb = a.get("stderr"), b.get("stderr")
    if sa is None or sb is None:
        return {"value": value, "stderr": None, "overlap": None}
    return {"value": value, "stderr": math.sqrt(sa**2 + sb**2), "overlap": abs(value) <= sa + sb}


def best_row(
    rows: list[dict[str, Any]], band: str, allowed: Callable[[dict[str, Any]], bool] = lambda r: True
) -> dict[str, Any] | None:
    """The allowed row with the highest mean valid accuracy on ``band`` (the first of a tie)."""
    candidates = [r for r in rows if band in r["valid_bands"] and band in r["bands"] and allowed(r)]
    return max(candidates, key=lambda r: r["valid_bands"][band]["value"]) if candidates else None


def compare(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The claims of the module docstring, as measured test differences per band (main arm = the first)."""
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
        best = best_row(looped, band)
        if best is None:
            continue
        pairs = []  # (claim, row a, row b): the claim is a − b
        deeper = best_row(looped, band, lambda r: r["n_loops"] > trained)
        if at_trained is not None and deeper is not None:
            pairs.append((f"best T > {trained} (on valid) vs T={trained}", deeper, at_trained))
        last = max(looped, key=lambda r: r["n_loops"])
        if last is not best:
            pairs.append((f"T={last['n_loops']} (most loops) vs best T (on valid)", last, best))
        for auto in adaptive:
            if band in auto["bands"]:
                pairs.append((f"{row_title(auto)} (adaptive) vs best T (on valid)", auto, best))
        if summary["baselines"]:
            name, value = strongest(summary["baselines"], band)
            heuristic = {"label": name, "bands": {band: {"value": value, "stderr": 0.0}}}
            pairs.append(("best T (on valid) vs the strongest baseline", best, heuristic))
        for name, arm in list(arms.items())[1:]:
            control = best_row(arm["rows"], band)
            if control is not None:
                control = control | {"label": f"{name} {control['label']}"}
                pairs.append((f"best T (on valid) vs {name} (its best row on valid)", best, control))
                pairs += [
                    (f"{row_title(auto)} (adaptive) vs {name} (its best row on valid)", auto, control)
                    for auto in adaptive
                    if band in auto["bands"]
                ]
        claims += [
            {
                "claim": f"{main_name}: {text}",
                "band": band,
                "rows": [a["label"], b["label"]],
                **difference(a["bands"][band], b["bands"][band]),
            }
            for text, a, b in pairs
        ]
    return claims


def points(m: dict[str, Any]) -> str:
    """A metric in percentage points: '43.1 ± 2.0' (no ± with one seed or an exact value: SE 0)."""
    return metric_text(m if m.get("stderr") else {"value": m["value"]}, 100, 1)


def accuracy_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per arm and loop count, then each shallow baseline; one column per band
    (test accuracy in points ± SE)."""
    bands = list(summary["bands"])
    header = ["arm", "row", *(f"{b} ({summary['bands'][b]})" for b in bands)]
    rows = [
        [name, row_title(row), *(points(row["bands"][b]) if b in row["bands"] else "-" for b in bands)]
        for name, arm in summary["arms"].items()
        for row in arm["rows"]
    ]
    rows += [
        ["baseline", name, *(points({"value": entry["bands"][b]}) if b in entry["bands"] else "-" for b in bands)]
        for name, entry in summary["baselines"].items()
    ]
    return header, rows


def claims_table(claims: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per claim, its difference in points and whether the seed intervals overlap
    (yes / no, or '-' without standard errors)."""
    header = ["claim", "band", "rows", "difference", "seed intervals overlap"]
    overlap = {None: "-", True: "yes", False: "no"}
    return header, [[c["claim"], c["band"], " vs ".join(c["rows"]), points(c), overlap[c["overlap"]]] for c in claims]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot_bands(summary: dict[str, Any], path: Path) -> None:
    """Accuracy against loops, one panel per band, one line per arm (mean ± SE over seeds; ``report.plot_rows``):
    adaptive rows as stars at their loops per answer token; the strongest baseline as a dotted black line."""
    bands = list(summary["bands"])
    fig = Figure(figsize=(4.2 * len(bands), 3.6), layout="tight")
    axes = fig.subplots(1, len(bands), squeeze=False)[0]
    for ax, band in zip(axes, bands, strict=True):
        for index, (name, arm) in enumerate(summary["arms"].items()):
            shown = [(r, r["bands"][band]) for r in arm["rows"] if band in r["bands"]]
            plot_rows(ax, shown, name, f"C{index}", star="answer_loops")
        if summary["baselines"]:
            heuristic, value = strongest(summary["baselines"], band)
            ax.axhline(value, linestyle=":", color="black", label=f"baseline: {heuristic}")
        ax.set(ylim=(0.0, 1.02), ylabel="accuracy")
        ax.set_title(f"{band} (difficulty {summary['bands'][band]})", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=120)


def plot_curves(summary: dict[str, Any], path: Path) -> bool:
    """Training loss against step, one line per arm and seed (the arm's colour); False when no record has one."""
    if not any(arm["curves"] for arm in summary["arms"].values()):
        return False
    fig = Figure(figsize=(6.5, 4), layout="tight")
    ax = fig.subplots()
    for index, (name, arm) in enumerate(summary["arms"].items()):
        for seed, curve in enumerate(arm["curves"]):
            steps, losses = zip(*curve, strict=True)
            ax.plot(steps, losses, color=f"C{index}", lw=1, alpha=0.8, label=name if seed == 0 else None)
    ax.set(yscale="log", xlabel="training step", ylabel="training cross-entropy (mean over logged steps)")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    return True


def plot_dynamics(arm: dict[str, Any], path: Path, title: str) -> None:
    """c_t (log y) and r_t against t, one line per difficulty, side by side."""
    fig = Figure(figsize=(11, 4), layout="tight")
    left, right = fig.subplots(1, 2)
    for ax, name, label in ((left, "change", "‖h_{t+1} − h_t‖ / ‖h_t‖"), (right, "rms", "‖h_t‖ / √dim")):
        for key, values in arm["dynamics"][name].items():
            ys = [max(v["value"], 1e-8) for v in values]
            ax.plot(range(1, len(ys) + 1), ys, label=key, lw=2 if key == "all" else 1)
        ax.set(xlabel="loop t", ylabel=label)
    left.set_yscale("log")
    left.set_title(title, fontsize=9)
    right.legend(fontsize=6, ncol=2, title="difficulty")
    fig.savefig(path, dpi=120)


def tuning_blocks(summary: dict[str, Any], h2: str) -> list[str]:
    """The tuning table: every arm's grid points with their valid score, the chosen one marked."""
    table = [
        [name, point_label(entry["point"]).replace(",", ", "), f"{entry['valid'] * 100:.1f}", "yes" if i == 0 else ""]
        for name, arm in summary["arms"].items()
        for i, entry in enumerate(arm["tuning"])
    ]
    if not table:
        return []
    return [
        f"{h2} Tuning (valid split, first seed; every arm the same grid)",
        markdown_table(["arm", "point", "valid accuracy % (best fixed row)", "chosen"], table),
    ]


def adaptive_blocks(main_name: str, main: dict[str, Any], h2: str) -> list[str]:
    """What the adaptive rows' loops cost, per difficulty."""
    adaptive = [r for r in main["rows"] if r["n_loops"] == "auto"]
    if not adaptive:
        return []
    header = ["difficulty", *(f"{r['label']}: {column}" for r in adaptive for column in COSTS.values())]
    body = [
        [str(d), *(metric_text(r[f"{cost}_per_difficulty"][str(d)]) for r in adaptive for cost in COSTS)]
        for d in main["difficulties"]
    ]
    body.append(["all", *(metric_text(r[cost]) for r in adaptive for cost in COSTS)])
    return [
        f"{h2} Adaptive depth: {main_name}, the loops it spends (mean ± SE over seeds)",
        "The answer token's loops are those of the prompt's forward; the mean per generated token also counts the "
        "EOS step; the prompt's token-loops count every pass of every prompt token: its tokens × the answer "
        "token's loops where every prompt token loops as long as the last (the hidden-state rules), its tokens "
        "− 1 + the answer token's loops where only the last loops (the token rule).",
        markdown_table(header, body),
    ]


def report_section(
    experiment: Experiment,
    summary: dict[str, Any],
    claims: list[dict[str, Any]],
    folder: Path,
    preamble: str = "",
    prefix: str = "",
    level: int = 1,
) -> str:
    """The experiment's Markdown, blocks separated by blank lines (figures written into ``folder``, linked as
    ``prefix`` + name)."""
    folder.mkdir(parents=True, exist_ok=True)
    main_name, main = next(iter(summary["arms"].items()))
    plot_bands(summary, folder / "accuracy-vs-loops.png")
    values = [[row["per_difficulty"][str(d)]["value"] for row in main["rows"]] for d in main["difficulties"]]
    title = f"{experiment.name}: {main_name}, mean over seeds"
    labels = [row["label"] for row in main["rows"]]
    heatmap_figure(
        values, labels, main["difficulties"], folder / f"heatmap-{main_name}.png", title, "accuracy (mean over seeds)"
    )
    h1, h2 = "#" * level, "#" * (level + 1)
    arms = [
        [
            a.name,
            f"`{a.recipe}`",
            "<br>".join(f"`{o}`" for o in a.set) or "-",
            point_label(summary["arms"][a.name]["point"]).replace(",", ", ") or "-",
            a.description,
        ]
        for a in experiment.arms
        if a.name in summary["arms"]
    ]
    blocks = [f"{h1} {experiment.name}", *([preamble.strip()] if preamble else []), f"{h2} Arms"]
    blocks += [markdown_table(["arm", "recipe", "overrides", "chosen on valid", "what it is"], arms)]
    blocks += tuning_blocks(summary, h2)
    blocks += [
        f"{h2} Accuracy by difficulty band (%, test split, mean ± SE over {len(experiment.seeds)} seeds)",
        "Baseline rows are shallow heuristics scored on the same test file (expected accuracy); a heuristic takes "
        "fewer steps than any question of the band needs (`resolve_then_guess` walks lo − 1 steps of a band "
        "lo–hi, then guesses).",
        markdown_table(*accuracy_table(summary)),
        f"![accuracy against loops]({prefix}accuracy-vs-loops.png)",
    ]
    if plot_curves(summary, folder / "learning-curves.png"):
        blocks += [
            "Training cross-entropy of every run (one line per seed; every labelled token: the answer, EOS and "
            "any intermediate answer):",
            f"![learning curves]({prefix}learning-curves.png)",
        ]
    difficulty_rows = [
        [
            str(d),
            *(points(r["per_difficulty"][str(d)]) for r in main["rows"]),
            *(
                points({"value": b["per_difficulty"][str(d)]}) if str(d) in b["per_difficulty"] else "-"
                for b in summary["baselines"].values()
            ),
        ]
        for d in main["difficulties"]
    ]
    blocks += [
        f"{h2} Claims, as measured on test (percentage points; SE = √(SE_a² + SE_b²); best rows chosen on valid)",
        markdown_table(*claims_table(claims)),
        f"{h2} Per difficulty: {main_name} (%, test, mean ± SE over seeds), and the baselines",
        markdown_table(["difficulty", *(r["label"] for r in main["rows"]), *summary["baselines"]], difficulty_rows),
        f"![heatmap]({prefix}heatmap-{main_name}.png)",
    ]
    blocks += adaptive_blocks(main_name, main, h2)
    if main["dynamics"] is not None:
        plot_dynamics(main, folder / f"dynamics-{main_name}.png", f"{main_name}: loop state at the answer position")
        blocks += [f"{h2} Loop state: {main_name} (at the answer position, mean over seeds)"]
        for name, caption, spec in (
            ("change", "c_t = ‖h_(t+1) − h_t‖ / ‖h_t‖ (0: a fixed point, more loops change nothing):", ".2e"),
            ("rms", "r_t = ‖h_t‖ / √dim:", ".3g"),
        ):
            curves = main["dynamics"][name]
            shown = [t for t in (1, 2, 3, 4, 6, 8, 12, 16, 24, 31, 32) if t <= len(curves["all"])]
            rows = [[k, *(f"{v[t - 1]['value']:{spec}}" for t in shown)] for k, v in curves.items()]
            blocks += [caption, markdown_table(["difficulty", *(f"t={t}" for t in shown)], rows)]
        blocks += [f"![loop state]({prefix}dynamics-{main_name}.png)"]
    return "\n\n".join(blocks) + "\n"


def write_report(
    experiment: Experiment, summary: dict[str, Any], claims: list[dict[str, Any]], folder: Path, preamble: str = ""
) -> Path:
    """``results.json``, ``results.md`` and the figures into ``folder``; returns the Markdown path."""
    path = folder / "results.md"
    path.write_text(report_section(experiment, summary, claims, folder, preamble))
    write_json(folder / "results.json", {"summary": summary, "claims": claims})
    return path


SECTION = "<!-- experiment: {} -->"


def write_combined_report(
    sections: list[tuple[Experiment, dict[str, Any], list[dict[str, Any]], str]], path: Path, title: str = "Results"
) -> None:
    """One Markdown page for several experiments, figures in ``<page stem>/<experiment>/`` beside it. A page
    that exists keeps the sections of experiments not given here (each section starts with a marker line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pieces = path.read_text().split(SECTION.format("")[:-4])[1:] if path.is_file() else []
    kept = {name: body for name, _, body in (piece.partition(" -->\n") for piece in pieces)}
    for experiment, summary, claims, preamble in sections:
        folder = path.parent / path.stem / experiment.name
        prefix = f"{path.stem}/{experiment.name}/"
        kept[experiment.name] = report_section(experiment, summary, claims, folder, preamble, prefix, level=2)
    parts = [f"# {title}", ""]
    for name, body in kept.items():
        parts += [SECTION.format(name), body.rstrip("\n"), ""]
    path.write_text("\n".join(parts))
