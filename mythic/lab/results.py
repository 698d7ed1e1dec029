"""The experiment's records → mean ± SE over seeds, baselines, the claims as measured differences, a report.

Aggregation, per arm, row (base / T=n / auto) and band (a difficulty range), on each split (valid
and test): each seed's accuracy over the band's examples, then the mean over seeds with its standard
error (``stats.metric``: the seeds' spread, not the examples'); the same per difficulty (test), and
the loop-state dynamics c_t = ‖h_{t+1} − h_t‖ / ‖h_t‖ and r_t = ‖h_t‖ / √dim
(``eval.exact_match.loop_dynamics``). An adaptive row also carries what its loops cost (mean ± SE over
seeds): loops per generated token (the EOS step included), the first answer token's loops and the
prompt's token-loops, overall and per difficulty.

Baselines: the generator's shallow heuristics (``tasks/baselines.py``) scored on the test file, per
band and difficulty, each taking fewer steps than the band's questions need; the strongest one per
band is what a claim compares against.

``compare`` states the claims, each a difference of test accuracies with the standard error
√(SE_a² + SE_b²) and whether the two seed intervals (mean ± SE) overlap. Every "best" row is chosen
on the valid split (the mean over seeds there), never on test (the main arm is the first):

- depth extrapolation: the main arm's best T above the trained maximum vs T = the trained maximum;
- overthinking: the main arm at the largest T vs at its best T;
- adaptive depth: each ``auto:MAX`` row of the main arm vs its best fixed T;
- baseline: the main arm's best T vs the strongest shallow heuristic;
- controls: the main arm's best T vs each control's best row.

``write_report`` renders it all: ``results.json``, a Markdown page and its PNG figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from mythic.eval.report import heatmap_figure
from mythic.eval.stats import metric
from mythic.io import write_json
from mythic.lab.experiment import Experiment, Outcome, point_label
from mythic.tasks.baselines import score, strongest
from mythic.tasks.files import read_tasks
from mythic.tasks.make import generator, parse_difficulty_range

COSTS = ("mean_loops", "answer_loops", "prompt_token_loops")


def band_accuracy(row: dict[str, Any], band: tuple[int, int]) -> float | None:
    """A row's accuracy over the examples whose difficulty lies in ``band`` (None if there are none)."""
    total = correct = 0.0
    for d, entry in row["per_difficulty"].items():
        if band[0] <= int(d) <= band[1]:
            m = entry["accuracy"]
            total += m["n"]
            correct += m["value"] * m["n"]
    return correct / total if total else None


def bands_of(experiment: Experiment) -> dict[str, tuple[int, int]]:
    return {name: parse_difficulty_range(text, f"bands.{name}") for name, text in experiment.bands.items()}


def split_rows(experiment: Experiment, mine: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One split's records of one arm (sorted by seed) → its rows, mean ± SE over seeds per band and difficulty."""
    bands = bands_of(experiment)
    difficulties = mine[0]["results"]["difficulties"]
    rows = []
    for i, first in enumerate(mine[0]["results"]["rows"]):
        seed_rows = [r["results"]["rows"][i] for r in mine]
        per_band = {}
        for name, band in bands.items():
            values = [band_accuracy(row, band) for row in seed_rows]
            if all(v is not None for v in values):
                per_band[name] = metric(values)  # type: ignore[arg-type]
        row = {
            "label": first["label"],
            "n_loops": first["n_loops"],
            "bands": per_band,
            "per_difficulty": {
                str(d): metric([row["per_difficulty"][str(d)]["accuracy"]["value"] for row in seed_rows])
                for d in difficulties
            },
        }
        if first["n_loops"] == "auto":
            row["exit"] = first["exit"]
            for cost in COSTS:
                row[cost] = metric([r[cost] for r in seed_rows])
                row[f"{cost}_per_difficulty"] = {
                    str(d): metric([r["per_difficulty"][str(d)][cost] for r in seed_rows]) for d in difficulties
                }
        rows.append(row)
    return rows


def experiment_baselines(experiment: Experiment) -> dict[str, Any]:
    """The generator's shallow heuristics scored on the experiment's test file, per band and difficulty."""
    tests = read_tasks(experiment.data_dir / "test.jsonl")
    heuristics = generator(experiment.tasks.generator).baselines
    return score(tests, heuristics, bands_of(experiment))


def aggregate(experiment: Experiment, outcome: Outcome, baselines: dict[str, Any]) -> dict[str, Any]:
    """Mean ± SE over seeds per arm, row and band on test (and on valid, for choosing), the tuning table, and
    ``baselines`` (``experiment_baselines``); see the module docstring."""
    arms: dict[str, Any] = {}
    for arm in experiment.arms:
        tests = sorted((r for r in outcome.records["test"] if r["arm"] == arm.name), key=lambda r: r["seed"])
        valids = sorted((r for r in outcome.records["valid"] if r["arm"] == arm.name), key=lambda r: r["seed"])
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


def overlap_text(claim: dict[str, Any]) -> str:
    """The overlap column: yes / no, or '-' without standard errors."""
    return "-" if claim["overlap"] is None else "yes" if claim["overlap"] else "no"


def best_row(rows: list[dict[str, Any]], band: str, allowed: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """The allowed row with the highest mean valid accuracy on ``band`` (the first of a tie)."""
    candidates = [r for r in rows if band in r["valid_bands"] and band in r["bands"] and allowed(r)]
    return max(candidates, key=lambda r: r["valid_bands"][band]["value"]) if candidates else None


def claim(text: str, band: str, a: dict[str, Any], b: dict[str, Any], rows: list[str]) -> dict[str, Any]:
    return {"claim": text, "band": band, "rows": rows, **difference(a, b)}


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
        best = best_row(looped, band, lambda r: True)
        if best is None:
            continue
        deeper = best_row(looped, band, lambda r: r["n_loops"] > trained)
        if at_trained is not None and deeper is not None:
            claims.append(
                claim(
                    f"{main_name}: best T > {trained} (on valid) vs T={trained}",
                    band,
                    deeper["bands"][band],
                    at_trained["bands"][band],
                    [deeper["label"], at_trained["label"]],
                )
            )
        last = max(looped, key=lambda r: r["n_loops"])
        if last is not best:
            claims.append(
                claim(
                    f"{main_name}: T={last['n_loops']} (most loops) vs best T (on valid)",
                    band,
                    last["bands"][band],
                    best["bands"][band],
                    [last["label"], best["label"]],
                )
            )
        for auto in adaptive:
            if band in auto["bands"]:
                claims.append(
                    claim(
                        f"{main_name}: {auto['label']} {auto['exit']} (adaptive) vs best T (on valid)",
                        band,
                        auto["bands"][band],
                        best["bands"][band],
                        [auto["label"], best["label"]],
                    )
                )
        if summary["baselines"]:
            name, value = strongest(summary["baselines"], band)
            claims.append(
                claim(
                    f"{main_name}: best T (on valid) vs the strongest baseline",
                    band,
                    best["bands"][band],
                    {"value": value, "stderr": 0.0},
                    [best["label"], name],
                )
            )
        for name, arm in list(arms.items())[1:]:
            control = best_row(arm["rows"], band, lambda r: True)
            if control is not None:
                claims.append(
                    claim(
                        f"{main_name}: best T (on valid) vs {name} (its best row on valid)",
                        band,
                        best["bands"][band],
                        control["bands"][band],
                        [best["label"], f"{name} {control['label']}"],
                    )
                )
    return claims


def points(m: dict[str, Any]) -> str:
    """A metric in percentage points: '43.1 ± 2.0' (no ± with one seed or an exact value)."""
    se = f" ± {m['stderr'] * 100:.1f}" if m.get("stderr") else ""
    return f"{m['value'] * 100:.1f}{se}"


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


def loops_text(m: dict[str, Any]) -> str:
    """Mean loops as '4.26 ± 0.31' (no ± with one seed)."""
    se = f" ± {m['stderr']:.2f}" if m.get("stderr") is not None else ""
    return f"{m['value']:.2f}{se}"


def row_title(row: dict[str, Any]) -> str:
    """A row's label; an adaptive row's with its exit rule ('auto:32 kl:0.001')."""
    return f"{row['label']} {row['exit']}" if row["n_loops"] == "auto" else row["label"]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot_bands(summary: dict[str, Any], path: Path) -> None:
    """Accuracy against loops, one panel per band, one line per arm (mean ± SE over seeds); adaptive rows as
    stars at their loops per answer token; the strongest baseline as a dotted line."""
    bands = list(summary["bands"])
    fig = Figure(figsize=(4.2 * len(bands), 3.6))
    axes = fig.subplots(1, len(bands), squeeze=False)[0]
    for ax, band in zip(axes, bands, strict=True):
        for index, (name, arm) in enumerate(summary["arms"].items()):
            colour = f"C{index}"
            rows = [r for r in arm["rows"] if isinstance(r["n_loops"], int) and band in r["bands"]]
            for r in arm["rows"]:
                if r["n_loops"] == "auto" and band in r["bands"]:
                    ax.plot(
                        [r["answer_loops"]["value"]],
                        [r["bands"][band]["value"]],
                        marker="*",
                        markersize=12,
                        linestyle="none",
                        color=colour,
                        label=f"{name} {r['label']} {r['exit']} (at its answer loops)",
                    )
            if len(rows) > 1:
                ax.errorbar(
                    [r["n_loops"] for r in rows],
                    [r["bands"][band]["value"] for r in rows],
                    yerr=[r["bands"][band]["stderr"] or 0.0 for r in rows],
                    marker="o",
                    capsize=3,
                    color=colour,
                    label=name,
                )
            elif rows:
                ax.axhline(rows[0]["bands"][band]["value"], linestyle="--", color=colour, label=name)
            base = next((r for r in arm["rows"] if r["n_loops"] is None and band in r["bands"]), None)
            if base is not None:
                ax.axhline(base["bands"][band]["value"], linestyle=":", color="gray", label=f"{name} base")
        if summary["baselines"]:
            heuristic, value = strongest(summary["baselines"], band)
            ax.axhline(value, linestyle=":", color="black", label=f"baseline: {heuristic}")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("loops (T)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{band} (difficulty {summary['bands'][band]})", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_curves(summary: dict[str, Any], path: Path) -> bool:
    """Training loss against step, one line per arm and seed (the arm's colour); False when no record has one."""
    if not any(arm["curves"] for arm in summary["arms"].values()):
        return False
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for index, (name, arm) in enumerate(summary["arms"].items()):
        for seed, curve in enumerate(arm["curves"]):
            steps, losses = zip(*curve, strict=True)
            ax.plot(steps, losses, color=f"C{index}", lw=1, alpha=0.8, label=name if seed == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("training cross-entropy (mean over logged steps)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


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


def tuning_lines(summary: dict[str, Any], h2: str) -> list[str]:
    """The tuning table: every arm's grid points with their valid score, the chosen one marked."""
    tuned = {name: arm["tuning"] for name, arm in summary["arms"].items() if arm["tuning"]}
    if not tuned:
        return []
    table = [
        [name, point_label(entry["point"]).replace(",", ", "), f"{entry['valid'] * 100:.1f}", "yes" if i == 0 else ""]
        for name, entries in tuned.items()
        for i, entry in enumerate(entries)
    ]
    return [
        f"{h2} Tuning (valid split, first seed; every arm the same grid)",
        "",
        markdown_table(["arm", "point", "valid accuracy % (best fixed row)", "chosen"], table),
        "",
    ]


def adaptive_lines(main_name: str, main: dict[str, Any], h2: str) -> list[str]:
    """What the adaptive rows' loops cost, per difficulty."""
    adaptive = [r for r in main["rows"] if r["n_loops"] == "auto"]
    if not adaptive:
        return []
    header = ["difficulty"]
    for r in adaptive:
        header += [f"{r['label']}: answer token", f"{r['label']}: per generated token (EOS step included)"]
        header += [f"{r['label']}: prompt token-loops"]
    body = [
        [
            str(d),
            *(
                loops_text(r[f"{cost}_per_difficulty"][str(d)])
                for r in adaptive
                for cost in ("answer_loops", "mean_loops", "prompt_token_loops")
            ),
        ]
        for d in main["difficulties"]
    ]
    body.append(
        [
            "all",
            *(loops_text(r[cost]) for r in adaptive for cost in ("answer_loops", "mean_loops", "prompt_token_loops")),
        ]
    )
    return [
        f"{h2} Adaptive depth: {main_name}, the loops it spends (mean ± SE over seeds)",
        "",
        "The answer token's loops are those of the prompt's forward; the mean per generated token also counts the "
        "EOS step; every prompt token loops as long as the prompt's last one, so the prompt's token-loops are its "
        "tokens × the answer token's loops.",
        "",
        markdown_table(header, body),
        "",
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
    """The experiment's Markdown (figures written into ``folder``, linked as ``prefix`` + name)."""
    folder.mkdir(parents=True, exist_ok=True)
    main_name, main = next(iter(summary["arms"].items()))
    plot_bands(summary, folder / "accuracy-vs-loops.png")
    heatmap_figure(
        [[row["per_difficulty"][str(d)]["value"] for row in main["rows"]] for d in main["difficulties"]],
        [row["label"] for row in main["rows"]],
        main["difficulties"],
        folder / f"heatmap-{main_name}.png",
        f"{experiment.name}: {main_name}, mean over seeds",
        "accuracy (mean over seeds)",
    )
    seeds = len(experiment.seeds)
    h1, h2 = "#" * level, "#" * (level + 1)
    lines = [f"{h1} {experiment.name}", "", preamble.strip(), ""] if preamble else [f"{h1} {experiment.name}", ""]
    lines += [f"{h2} Arms", ""]
    lines += [
        markdown_table(
            ["arm", "recipe", "overrides", "chosen on valid", "what it is"],
            [
                [
                    a.name,
                    f"`{a.recipe}`",
                    "<br>".join(f"`{o}`" for o in a.set) or "-",
                    point_label(summary["arms"][a.name]["point"]).replace(",", ", ") or "-",
                    a.description,
                ]
                for a in experiment.arms
                if a.name in summary["arms"]
            ],
        ),
        "",
    ]
    lines += tuning_lines(summary, h2)
    lines += [f"{h2} Accuracy by difficulty band (%, test split, mean ± SE over {seeds} seeds)", ""]
    lines += [
        "Baseline rows are shallow heuristics scored on the same test file (expected accuracy); a heuristic takes "
        "fewer steps than any question of the band needs (`resolve_then_guess` walks lo − 1 steps of a band "
        "lo–hi, then guesses).",
        "",
    ]
    lines += [markdown_table(*accuracy_table(summary)), ""]
    lines += [f"![accuracy against loops]({prefix}accuracy-vs-loops.png)", ""]
    if plot_curves(summary, folder / "learning-curves.png"):
        lines += [
            "Training cross-entropy of every run (one line per seed; the answer and EOS tokens):",
            "",
            f"![learning curves]({prefix}learning-curves.png)",
            "",
        ]
    lines += [f"{h2} Claims, as measured on test (percentage points; SE = √(SE_a² + SE_b²); best rows chosen on valid)"]
    lines += [
        "",
        markdown_table(
            ["claim", "band", "rows", "difference", "seed intervals overlap"],
            [[c["claim"], c["band"], " vs ".join(c["rows"]), points(c), overlap_text(c)] for c in claims],
        ),
        "",
        f"{h2} Per difficulty: {main_name} (%, test, mean ± SE over seeds), and the baselines",
        "",
    ]
    per_difficulty = [
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
    header = ["difficulty", *(r["label"] for r in main["rows"]), *summary["baselines"]]
    lines += [markdown_table(header, per_difficulty), ""]
    lines += [f"![heatmap]({prefix}heatmap-{main_name}.png)", ""]
    lines += adaptive_lines(main_name, main, h2)
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


SECTION = "<!-- experiment: {} -->"


def write_combined_report(
    sections: list[tuple[Experiment, dict[str, Any], list[dict[str, Any]], str]], path: Path, title: str = "Results"
) -> None:
    """One Markdown page for several experiments, figures in ``<page stem>/<experiment>/`` beside it. A page
    that exists keeps the sections of experiments not given here (each section starts with a marker line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kept: dict[str, str] = {}
    if path.is_file():
        pieces = path.read_text().split(SECTION.format("")[:-4])
        for piece in pieces[1:]:
            name, _, body = piece.partition(" -->\n")
            kept[name] = body
    for experiment, summary, claims, preamble in sections:
        folder = path.parent / path.stem / experiment.name
        prefix = f"{path.stem}/{experiment.name}/"
        kept[experiment.name] = report_section(experiment, summary, claims, folder, preamble, prefix, level=2)
    parts = [f"# {title}", ""]
    for name, body in kept.items():
        parts += [SECTION.format(name), body.rstrip("\n"), ""]
    path.write_text("\n".join(parts))
