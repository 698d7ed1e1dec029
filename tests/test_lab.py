"""The depth-reasoning lab: experiment files, mean ± SE over seeds per band, the claims, one tiny end-to-end run."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_runner import run_cli
from test_train_helpers import HOPS_RECIPE

from mythic.errors import MythicError
from mythic.lab.experiment import (
    Experiment,
    Outcome,
    Run,
    arm_recipe,
    load_experiment,
    point_label,
    run_job,
    time_left,
    tuning_score,
)
from mythic.lab.results import aggregate, band_accuracy, compare, write_combined_report
from mythic.train.recipe import recipe_to_yaml


def experiment(**changes: Any) -> Experiment:
    raw = {
        "name": "synthetic",
        "tasks": {"generator": "hops"},
        "seeds": [0, 1, 2],
        "loops": [1, 2, 4, 8],
        "bands": {"in": "1-2", "beyond": "3-4"},
        "arms": [{"name": "looped", "recipe": "r.yaml"}, {"name": "single", "recipe": "r.yaml", "loops": [1]}],
        **changes,
    }
    return Experiment.model_validate(raw)


def record(
    arm: str, seed: int, trained: int, rows: dict[int, list[float]], n: int = 10, split: str = "test"
) -> dict[str, Any]:
    """An eval record whose row T=t has accuracy rows[t][d − 1] at difficulty d, n examples each."""
    built = [
        {
            "label": f"T={t}",
            "n_loops": t,
            "per_difficulty": {
                str(d + 1): {"accuracy": {"value": v, "stderr": None, "n": n}} for d, v in enumerate(values)
            },
        }
        for t, values in rows.items()
    ]
    difficulties = list(range(1, len(next(iter(rows.values()))) + 1))
    results = {"rows": built, "difficulties": difficulties}
    return {"arm": arm, "seed": seed, "point": {}, "split": split, "trained_loops": trained, "results": results}


def test_band_accuracy_weights_difficulties_by_their_examples() -> None:
    row = {
        "per_difficulty": {
            "1": {"accuracy": {"value": 1.0, "n": 10}},
            "2": {"accuracy": {"value": 0.5, "n": 30}},
            "3": {"accuracy": {"value": 0.0, "n": 5}},
        }
    }
    assert band_accuracy(row, (1, 2)) == pytest.approx((10 + 15) / 40)
    assert band_accuracy(row, (3, 8)) == 0.0 and band_accuracy(row, (4, 8)) is None


def outcome(test: list[dict[str, Any]], valid: list[dict[str, Any]]) -> Outcome:
    return Outcome({"test": test, "valid": valid}, {}, 0.0)


BASELINES = {
    "chance": {"overall": 0.25, "per_difficulty": {}, "bands": {"in": 0.25, "beyond": 0.25}},
    "shallow": {"overall": 0.5, "per_difficulty": {}, "bands": {"in": 0.9, "beyond": 0.2}},
}


def test_aggregate_and_claims_are_mean_and_seed_stderr() -> None:
    exp = experiment(loops=[1, 2, 4, 8, 16])
    # looped: T=8 and T=16 beat T=4 beyond training depth in every seed; the control sits at 0.3 beyond
    looped = {
        0: {
            1: [0.9, 0.5, 0.1, 0.1],
            2: [1, 0.8, 0.3, 0.2],
            4: [1, 1, 0.4, 0.3],
            8: [1, 1, 0.8, 0.6],
            16: [1, 1, 0.7, 0.5],
        },
        1: {
            1: [0.9, 0.5, 0.1, 0.1],
            2: [1, 0.8, 0.3, 0.2],
            4: [1, 1, 0.6, 0.5],
            8: [1, 1, 0.9, 0.9],
            16: [1, 1, 0.7, 0.5],
        },
        2: {
            1: [0.9, 0.5, 0.1, 0.1],
            2: [1, 0.8, 0.3, 0.2],
            4: [1, 1, 0.5, 0.4],
            8: [1, 1, 0.7, 0.7],
            16: [1, 1, 0.7, 0.5],
        },
    }
    # on valid T=16 reads best beyond, T=4 best inside: the claims must take those rows, whatever test says
    looped_valid = {1: [0.9, 0.5, 0.1, 0.1], 2: [1, 0.8, 0.3, 0.2], 4: [1, 1, 0.5, 0.4], 8: [1, 0.9, 0.6, 0.6]}
    looped_valid |= {16: [0.9, 0.9, 0.9, 0.9]}
    tests = [record("looped", s, 4, rows) for s, rows in looped.items()]
    tests += [record("single", s, 1, {1: [1, 0.9, 0.3, 0.3]}) for s in (2, 0, 1)]
    valids = [record("looped", s, 4, looped_valid, split="valid") for s in (0, 1, 2)]
    valids += [record("single", s, 1, {1: [1, 0.9, 0.3, 0.3]}, split="valid") for s in (0, 1, 2)]
    summary = aggregate(exp, outcome(tests, valids), BASELINES)
    arm = summary["arms"]["looped"]
    assert arm["seeds"] == [0, 1, 2] and arm["trained_loops"] == 4 and arm["dynamics"] is None
    t4, t8, t16 = arm["rows"][2], arm["rows"][3], arm["rows"][4]
    assert (t4["label"], t8["label"], t16["label"]) == ("T=4", "T=8", "T=16")
    seeds_t4 = [0.35, 0.55, 0.45]  # mean of difficulties 3 and 4 (10 examples each)
    assert t4["bands"]["beyond"]["value"] == pytest.approx(0.45)
    assert t4["bands"]["beyond"]["stderr"] == pytest.approx(0.1 / math.sqrt(3))  # stdev(seeds_t4) = 0.1
    assert t4["bands"]["beyond"]["n"] == len(seeds_t4)
    assert t8["bands"]["beyond"]["value"] == pytest.approx((0.7 + 0.9 + 0.7) / 3)
    assert t16["valid_bands"]["beyond"]["value"] == pytest.approx(0.9) and t16["bands"]["beyond"]["value"] == 0.6
    assert t4["per_difficulty"]["3"]["value"] == pytest.approx(0.5)
    assert t4["bands"]["in"] == {"value": 1.0, "stderr": 0.0, "n": 3}

    claims = {(c["claim"], c["band"]): c for c in compare(summary)}
    deeper = claims[("looped: best T > 4 (on valid) vs T=4", "beyond")]
    assert deeper["rows"] == ["T=16", "T=4"], "the best row is the valid split's, not the test split's (T=8)"
    assert deeper["value"] == pytest.approx(0.6 - 0.45) and deeper["stderr"] == pytest.approx(0.1 / math.sqrt(3))
    assert deeper["overlap"] is False  # 0.15 apart, intervals 0.058 + 0 wide
    control = claims[("looped: best T (on valid) vs single (its best row on valid)", "beyond")]
    assert control["rows"] == ["T=16", "single T=1"] and control["value"] == pytest.approx(0.6 - 0.3)
    inside = claims[("looped: best T (on valid) vs single (its best row on valid)", "in")]
    assert inside["rows"] == ["T=4", "single T=1"] and inside["value"] == pytest.approx(1.0 - 0.95)
    assert ("looped: T=16 (most loops) vs best T (on valid)", "beyond") not in claims  # T=16 is that best row
    flat = claims[("looped: T=16 (most loops) vs best T (on valid)", "in")]
    assert flat["rows"] == ["T=16", "T=4"] and flat["value"] == 0.0 and flat["overlap"] is True
    baseline = claims[("looped: best T (on valid) vs the strongest baseline", "in")]
    assert baseline["rows"] == ["T=4", "shallow"] and baseline["value"] == pytest.approx(1.0 - 0.9)
    assert baseline["stderr"] == 0.0 and baseline["overlap"] is False
    beyond = claims[("looped: best T (on valid) vs the strongest baseline", "beyond")]
    assert beyond["rows"] == ["T=16", "chance"] and beyond["value"] == pytest.approx(0.6 - 0.25)


def test_adaptive_rows_carry_what_their_loops_cost() -> None:
    exp = experiment(loops=[4, "auto:8"])
    tests = []
    for seed, (answer, mean) in enumerate([(3.0, 2.5), (5.0, 3.5)]):
        rec = record("looped", seed, 4, {4: [1, 1, 0.5, 0.5], 8: [1, 1, 0.6, 0.6]})
        auto = rec["results"]["rows"][1]
        auto |= {"label": "auto:8", "n_loops": "auto", "exit": "kl:0.0001", "max_loops": 8}
        cost = {"mean_loops": mean, "answer_loops": answer, "prompt_token_loops": 10 * answer}
        auto |= cost
        for entry in auto["per_difficulty"].values():
            entry |= cost
        tests.append(rec)
    summary = aggregate(exp.model_copy(update={"arms": exp.arms[:1]}), outcome(tests, tests), {})
    auto = summary["arms"]["looped"]["rows"][1]
    assert auto["answer_loops"]["value"] == 4.0 and auto["mean_loops"]["value"] == 3.0
    assert auto["prompt_token_loops"]["value"] == 40.0 and auto["answer_loops_per_difficulty"]["3"]["value"] == 4.0
    claims = compare(summary)
    assert [c["claim"] for c in claims if c["band"] == "beyond"] == [
        "looped: auto:8 kl:0.0001 (adaptive) vs best T (on valid)"
    ]
    controls = [record("single", seed, 1, {1: [1, 0.9, 0.3, 0.4]}) for seed in (0, 1)]
    claims = compare(aggregate(exp, outcome(tests + controls, tests + controls), {}))
    adaptive = [
        c for c in claims if c["claim"] == "looped: auto:8 kl:0.0001 (adaptive) vs single (its best row on valid)"
    ]
    assert [(c["band"], c["rows"]) for c in adaptive] == [
        ("in", ["auto:8", "single T=1"]),
        ("beyond", ["auto:8", "single T=1"]),
    ]
    assert (
        adaptive[0]["value"] == pytest.approx(1.0 - 0.95)
        and adaptive[1]["value"] == pytest.approx(0.6 - 0.35)
        and adaptive[1]["stderr"] == 0.0
    )


def test_a_report_page_keeps_the_sections_of_other_experiments(tmp_path: Path) -> None:
    exp = experiment(arms=[{"name": "looped", "recipe": "r.yaml"}])
    tests = [
        record("looped", s, 4, {1: [1, 1, 0, 0], 2: [1, 1, 0.5, 0.5], 4: [1, 1, 1, 1], 8: [1, 1, 1, 1]})
        for s in (0, 1, 2)
    ]
    summary = aggregate(exp, outcome(tests, tests), BASELINES)
    page = tmp_path / "results.md"
    other = exp.model_copy(update={"name": "other"})
    write_combined_report([(exp, summary, compare(summary), "first")], page)
    write_combined_report([(other, summary, compare(summary), "second")], page)
    write_combined_report([(exp, summary, compare(summary), "third")], page)
    text = page.read_text()
    assert text.count("## synthetic") == 1 and text.count("## other") == 1
    assert "third" in text and "second" in text and "first" not in text
    assert text.index("## synthetic") < text.index("## other")
    assert (tmp_path / "results" / "other" / "accuracy-vs-loops.png").is_file()


def test_time_left_is_the_rate_so_far_applied_to_the_steps_left() -> None:
    assert time_left(120.0, 40, 360) == pytest.approx(1080.0)
    assert time_left(5.0, 0, 100) is None, "no estimate before the first step of this call"


def test_grid_points_and_their_folders() -> None:
    exp = experiment(tune={"grid": {"optim.lr": [0.001, 0.003], "model.config.init_std": [0.06]}, "band": "beyond"})
    assert exp.points() == [
        {"optim.lr": 0.001, "model.config.init_std": 0.06},
        {"optim.lr": 0.003, "model.config.init_std": 0.06},
    ]
    assert point_label(exp.points()[1]) == "lr=0.003,init_std=0.06" and point_label({}) == ""
    with pytest.raises(ValueError, match="tune.band"):
        experiment(tune={"grid": {"optim.lr": [0.001]}, "band": "middle"})


def test_the_final_runs_go_arm_by_arm_after_each_arm_s_grid_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The grid at the first seed, then every seed of the main arm before the next arm's (the main arm is as a rule
    the costliest, so it starts first), each at its own arm's best valid point."""
    import mythic.lab.experiment as lab

    calls: list[tuple[str, list[Run]]] = []

    def fake_execute(exp: Experiment, runs: list[Run], jobs: int, records: Any, on_steps: Any, phase: str) -> Any:
        calls.append((phase, runs))
        score = {0.001: {"looped": 0.9, "single": 0.2}, 0.003: {"looped": 0.5, "single": 0.4}}
        made = {}
        for run in runs:
            value = score[run.point["optim.lr"]][run.arm]
            made[run] = {split: record(run.arm, run.seed, 4, {1: [value] * 4}, split=split) for split in run.splits}
            for split_record in made[run].values():
                split_record["results"]["rows"][0]["metrics"] = {"accuracy": {"value": value}}
        return made

    monkeypatch.setattr(lab, "execute", fake_execute)
    monkeypatch.setattr(lab, "write_task_files", lambda exp: None)
    outcome = lab.run_experiment(experiment(tune={"grid": {"optim.lr": [0.001, 0.003]}}), jobs=2)
    (tuning, grid), (phase, final) = calls
    assert (tuning, phase) == ("tuning", "runs")
    assert [(r.arm, r.point["optim.lr"], r.seed) for r in grid] == [
        ("looped", 0.001, 0),
        ("looped", 0.003, 0),
        ("single", 0.001, 0),
        ("single", 0.003, 0),
    ]
    assert [(r.arm, r.point["optim.lr"], r.seed) for r in final] == [
        ("looped", 0.001, 0),
        ("looped", 0.001, 1),
        ("looped", 0.001, 2),
        ("single", 0.003, 0),
        ("single", 0.003, 1),
        ("single", 0.003, 2),
    ]
    assert [r["seed"] for r in outcome.records["test"]] == [0, 1, 2, 0, 1, 2]


def test_tuning_scores_the_band_and_refuses_a_band_the_valid_split_lacks() -> None:
    valid = record("looped", 0, 4, {1: [1.0, 0.5, 0.0, 0.0], 2: [1.0, 1.0, 0.5, 0.0]}, split="valid")
    assert tuning_score(experiment(tune={"grid": {"optim.lr": [0.001]}, "band": "beyond"}), valid) == 0.25
    narrow = record("looped", 0, 4, {1: [1.0, 0.5]}, split="valid")
    with pytest.raises(MythicError, match="tune.band 'beyond': the valid split has no example"):
        tuning_score(experiment(tune={"grid": {"optim.lr": [0.001]}, "band": "beyond"}), narrow)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tasks": {"generator": "sorting"}}, "unknown task generator"),
        ({"bands": {"in": "4-1"}}, "bands.in"),
        ({"seeds": [0, 0]}, "a seed is listed twice"),
        ({"arms": [{"name": "a", "recipe": "missing.yaml"}]}, "arm a: recipe .*missing.yaml does not exist"),
        ({"arms": [{"name": "a", "recipe": "RECIPE", "set": ["train.steps=0"]}]}, "arm a: recipe"),
    ],
)
def test_experiment_files_are_checked_before_any_work(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    change: dict[str, Any],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "RECIPE").write_text(yaml.safe_dump(HOPS_RECIPE))
    raw = {"name": "x", "tasks": {"generator": "hops"}, "seeds": [0], "loops": [1], "bands": {"in": "1-2"}}
    raw |= {"arms": [{"name": "a", "recipe": "RECIPE"}]} | change
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(MythicError, match=message):
        load_experiment(tmp_path / "exp.yaml")
    code, _, err = run_cli(monkeypatch, capsys, "lab", "exp.yaml")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_a_finished_run_of_another_recipe_is_not_evaluated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run folder whose final model was trained under another recipe (the experiment's recipe file changed
    since) is refused with one line, not evaluated as if it were this run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "RECIPE").write_text(yaml.safe_dump(HOPS_RECIPE))
    raw = {"name": "x", "tasks": {"generator": "hops"}, "seeds": [0], "loops": [1], "bands": {"in": "1-2"}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw | {"arms": [{"name": "a", "recipe": "RECIPE"}]}))
    experiment = load_experiment(tmp_path / "exp.yaml")
    run = Run("a", {}, 0, ("valid",))
    trained = yaml.safe_load(recipe_to_yaml(arm_recipe(experiment, run)))
    trained["optim"]["weight_decay"] = 0.5  # what the folder was trained with
    folder = experiment.run_dir / run.path
    (folder / "final").mkdir(parents=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(trained))
    with pytest.raises(MythicError, match=r"lab run a/seed-0: the recipe's optim.weight_decay differs from the run's"):
        run_job(experiment, run, 1, None)
    assert not (folder / "valid.json").exists()


def test_a_record_is_reused_only_by_the_run_that_made_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record keeps its run's recipe and task files: reused (nothing trained) while they are the run's, also
    from another folder or under a renamed recipe; refused in one line once the experiment's recipe or task
    files change; a record written before records kept them is reused as it is."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "RECIPE").write_text(yaml.safe_dump(HOPS_RECIPE))
    raw = {"name": "x", "tasks": {"generator": "hops"}, "seeds": [0], "loops": [1], "bands": {"in": "1-2"}}
    raw |= {"arms": [{"name": "a", "recipe": "RECIPE"}]}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    run = Run("a", {}, 0, ("valid",))
    made = load_experiment(tmp_path / "exp.yaml")
    moved = made.model_copy(update={"out_dir": str(tmp_path / "elsewhere")})  # its folder and task file move
    recorded = {
        "arm": "a",
        "recipe": arm_recipe(made, run).model_dump(mode="json"),
        "tasks": made.tasks.model_dump(mode="json"),
    }
    path = tmp_path / "records" / run.path / "valid.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(recorded))
    assert run_job(moved, run, 1, tmp_path / "records") == {"valid": recorded}
    assert not (tmp_path / "elsewhere").exists(), "a reused record trains nothing"
    (tmp_path / "RECIPE").write_text(yaml.safe_dump(HOPS_RECIPE | {"name": "kept-as-v2"}))  # a recipe renamed
    assert run_job(load_experiment(tmp_path / "exp.yaml"), run, 1, tmp_path / "records") == {"valid": recorded}

    changed = [
        (yaml.safe_dump(HOPS_RECIPE | {"optim": {"lr": 1e-3}}), raw, "its recipe's optim.lr differs"),
        (yaml.safe_dump(HOPS_RECIPE), raw | {"tasks": {"generator": "hops", "seed": 1}}, "its task files differ"),
    ]
    for recipe, experiment_file, message in changed:
        (tmp_path / "RECIPE").write_text(recipe)
        (tmp_path / "exp.yaml").write_text(yaml.safe_dump(experiment_file))
        expected = rf"record {re.escape(str(path))}: {message} from this run's; give the experiment a new name"
        with pytest.raises(MythicError, match=expected):
            run_job(load_experiment(tmp_path / "exp.yaml"), run, 1, tmp_path / "records")
    legacy = {"arm": "a"}
    path.write_text(json.dumps(legacy))
    assert run_job(load_experiment(tmp_path / "exp.yaml"), run, 1, tmp_path / "records") == {"valid": legacy}
    assert not (tmp_path / "runs").exists()


def test_lab_tunes_trains_every_arm_and_seed_and_writes_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Two arms, a two-point grid, two seeds of a 20-step model: the tuning runs on valid, every final run's
    valid and test records, the aggregate with its baselines, the Markdown page; records rebuild it."""
    monkeypatch.chdir(tmp_path)
    recipe = json.loads(json.dumps(HOPS_RECIPE)) | {"train": {"steps": 20, "micro_batch": 8}}
    recipe["data"]["seq_len"] = 40
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "recipe.yaml").write_text(yaml.safe_dump(recipe))  # found beside the experiment file
    exp = {
        "name": "tiny",
        "tasks": {
            "generator": "hops",
            "train_difficulty": "1-2",
            "test_difficulty": "1-3",
            "train_size": 200,
            "valid_size": 24,
            "test_size": 30,
            "options": {"roots": 2, "chain": 3},
        },
        "seeds": [0, 1],
        "loops": [1, 2, 4],
        "bands": {"in": "1-2", "beyond": "3-3"},
        "convergence_loops": 4,
        "tune": {"grid": {"optim.lr": [0.0001, 0.003]}},
        "arms": [
            {"name": "looped", "recipe": "recipe.yaml"},
            {
                "name": "single",
                "recipe": "recipe.yaml",
                "set": ["curriculum={kind: fixed, loops: 1, max_loops: 1}"],
                "loops": [1],
            },
        ],
    }
    (tmp_path / "lab" / "exp.yaml").write_text(yaml.safe_dump(exp))
    code, stdout, err = run_cli(
        monkeypatch, capsys, "lab", "lab/exp.yaml", "--records", "records", "--report", "docs/results.md"
    )
    assert code == 0, err
    root, records = tmp_path / "runs" / "lab" / "tiny", tmp_path / "records" / "tiny"
    results = json.loads((root / "report" / "results.json").read_text())
    for arm in ("looped", "single"):
        tuning = results["summary"]["arms"][arm]["tuning"]
        scores = {point_label(t["point"]): t["valid"] for t in tuning}
        assert set(scores) == {"lr=0.0001", "lr=0.003"} and tuning[0]["valid"] == max(scores.values())
        chosen = point_label(tuning[0]["point"])
        for point in scores:  # every grid point trained at the first seed and read on valid only
            assert (root / arm / point / "seed-0" / "final").is_dir()
            valid = json.loads((records / arm / point / "seed-0" / "valid.json").read_text())
            assert (valid["split"], valid["point"]) == ("valid", {"optim.lr": float(point.split("=")[1])})
            assert (records / arm / point / "seed-0" / "test.json").is_file() == (point == chosen)
        assert not (root / arm / point / "seed-0" / "valid.json").exists(), "records go to --records"
        for seed in (0, 1):
            rec = json.loads((records / arm / chosen / f"seed-{seed}" / "test.json").read_text())
            assert (rec["arm"], rec["seed"], rec["split"], rec["train_steps"]) == (arm, seed, "test", 20)
            kept = (rec["recipe"]["seed"], rec["recipe"]["train"]["steps"], rec["tasks"]["train_size"])
            assert kept == (seed, 20, 200)
            steps = [step for step, _ in rec["curve"]]  # the training loss its metrics.jsonl logged
            assert steps == sorted(steps) and steps[-1] == 20 and all(loss > 0 for _, loss in rec["curve"])
            assert sum(r["per_difficulty"]["1"]["accuracy"]["n"] for r in rec["results"]["rows"][:1]) > 0
        assert not (root / arm / ("lr=0.003" if chosen == "lr=0.0001" else "lr=0.0001") / "seed-1").exists()
    looped = results["summary"]["arms"]["looped"]
    assert looped["trained_loops"] == 4 and looped["seeds"] == [0, 1]
    assert [r["label"] for r in looped["rows"]] == ["T=1", "T=2", "T=4"]
    assert len(looped["dynamics"]["change"]["all"]) == 3 and len(looped["dynamics"]["rms"]["all"]) == 4  # 4 loops
    assert [r["label"] for r in results["summary"]["arms"]["single"]["rows"]] == ["T=1"]
    chosen = point_label(looped["point"])
    by_seed = [
        json.loads((records / "looped" / chosen / f"seed-{s}" / "test.json").read_text())["results"]["rows"][0]
        for s in (0, 1)
    ]
    per_seed = [band_accuracy(row, (1, 2)) for row in by_seed]
    assert looped["rows"][0]["bands"]["in"]["value"] == pytest.approx(sum(per_seed) / 2)
    baselines = results["summary"]["baselines"]
    assert set(baselines) == {
        "chance",
        "first_digit",
        "longest_chain",
        "resolve_then_guess",
        "resolve_then_guess_weighted",
    }
    assert baselines["chance"]["bands"]["beyond"] == pytest.approx(0.5)  # two roots
    assert baselines["resolve_then_guess"]["bands"]["in"] == 0.5  # it walks no step of the 1–2 band: a guess
    page = (tmp_path / "docs" / "results.md").read_text()
    assert "## tiny" in page and "| looped | T=4 |" in page and "| baseline | chance | 50.0 | 50.0 |" in page
    assert "looped: best T (on valid) vs single (its best row on valid)" in page and "Tuning (valid split" in page
    assert (tmp_path / "docs" / "results" / "tiny" / "accuracy-vs-loops.png").is_file()
    assert (tmp_path / "docs" / "results" / "tiny" / "dynamics-looped.png").is_file()
    assert (tmp_path / "docs" / "results" / "tiny" / "learning-curves.png").is_file() and "learning curves" in page
    assert "claims" in stdout
    # the bars count training steps: 4 tuning runs of 20, then 4 final runs (the first seed's 2 reused)
    assert re.search(r"tiny tuning: training steps .* 80/80 .* left ≈ 0 s", stdout)
    assert re.search(r"tiny runs: training steps .* 80/80", stdout)

    # the records alone rebuild the report: no run folder, no training
    shutil.rmtree(root / "looped")
    shutil.rmtree(root / "single")
    code, _, err = run_cli(monkeypatch, capsys, "lab", "lab/exp.yaml", "--records", "records", "--arms", "looped")
    assert code == 0, err
    assert not (root / "looped").exists()
    rebuilt = json.loads((root / "report" / "results.json").read_text())
    assert rebuilt["summary"]["arms"]["looped"]["rows"] == looped["rows"]
    subset = run_cli(
        monkeypatch, capsys, "lab", "lab/exp.yaml", "--records", "records", "--arms", "single", "--seeds", "1"
    )
    assert subset[0] == 0, subset[2]
    one = json.loads((root / "report" / "results.json").read_text())
    assert list(one["summary"]["arms"]) == ["single"] and one["summary"]["arms"]["single"]["seeds"] == [1]
    assert one["claims"] and all(c["stderr"] is None and c["overlap"] is None for c in one["claims"])  # 1 seed
    for option, value, message in [
        ("--arms", "looped,nope", "has no arm 'nope'"),
        ("--seeds", "x", "--seeds takes"),
        ("--jobs", "64", "more than the"),
    ]:
        code, _, err = run_cli(monkeypatch, capsys, "lab", "lab/exp.yaml", option, value)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1


KILLED_PARENT = """
import multiprocessing, sys, time
from concurrent.futures import ProcessPoolExecutor
from mythic.lab.experiment import exit_with_parent
import os

def worker(path):
    open(path, "w").write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=exit_with_parent,
                               initargs=(os.getpid(),))
    pool.submit(worker, sys.argv[1])
    time.sleep(120)
"""


def test_a_killed_lab_leaves_no_worker_running(tmp_path: Path) -> None:
    """``exit_with_parent``, the initializer of every lab pool worker (``execute``): SIGKILL the process that
    made the pool (a pool does not stop its workers then) and its worker, mid-job, ends within a few seconds."""
    script, pid_file = tmp_path / "lab.py", tmp_path / "worker.pid"
    script.write_text(KILLED_PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker), "the worker outlived its lab process"
    finally:
        parent.kill()


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, reaped by nobody here, counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"
