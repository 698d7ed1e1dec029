"""The depth-reasoning lab: experiment files, mean ± SE over seeds per band, the claims, one tiny end-to-end run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_runner import run_cli
from test_train_helpers import HOPS_RECIPE

from mythic.errors import MythicError
from mythic.lab.experiment import Experiment, load_experiment
from mythic.lab.results import aggregate, band_accuracy, compare


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


def record(arm: str, seed: int, trained: int, rows: dict[int, list[float]], n: int = 10) -> dict[str, Any]:
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
    return {"arm": arm, "seed": seed, "trained_loops": trained, "results": results}


def test_band_accuracy_weights_difficulties_by_their_examples() -> None:
    row = {
        "per_difficulty": {
            "1": {"accuracy": {"value": 1.0, "n": 10}},
            "2": {"accuracy": {"value": 0.5, "n": 30}},
            "3": {"accuracy": {"value": 0.0, "n": 5}},
        }
    }
    assert band_accuracy({}, row, (1, 2)) == pytest.approx((10 + 15) / 40)
    assert band_accuracy({}, row, (3, 8)) == 0.0 and band_accuracy({}, row, (4, 8)) is None


def test_aggregate_and_claims_are_mean_and_seed_stderr() -> None:
    exp = experiment()
    # looped: T=8 beats T=4 beyond training depth in every seed; the control sits at 0.3 beyond
    looped = {
        0: {1: [0.9, 0.5, 0.1, 0.1], 2: [1, 0.8, 0.3, 0.2], 4: [1, 1, 0.4, 0.3], 8: [1, 1, 0.8, 0.6]},
        1: {1: [0.9, 0.5, 0.1, 0.1], 2: [1, 0.8, 0.3, 0.2], 4: [1, 1, 0.6, 0.5], 8: [1, 1, 0.9, 0.9]},
        2: {1: [0.9, 0.5, 0.1, 0.1], 2: [1, 0.8, 0.3, 0.2], 4: [1, 1, 0.5, 0.4], 8: [1, 1, 0.7, 0.7]},
    }
    records = [record("looped", s, 4, rows) for s, rows in looped.items()]
    records += [record("single", s, 1, {1: [1, 0.9, 0.3, 0.3]}) for s in (2, 0, 1)]
    summary = aggregate(exp, records)
    arm = summary["arms"]["looped"]
    assert arm["seeds"] == [0, 1, 2] and arm["trained_loops"] == 4 and arm["dynamics"] is None
    t4, t8 = arm["rows"][2], arm["rows"][3]
    assert (t4["label"], t8["label"]) == ("T=4", "T=8")
    seeds_t4 = [0.35, 0.55, 0.45]  # mean of difficulties 3 and 4 (10 examples each)
    assert t4["bands"]["beyond"]["value"] == pytest.approx(0.45)
    assert t4["bands"]["beyond"]["stderr"] == pytest.approx(0.1 / math.sqrt(3))  # stdev(seeds_t4) = 0.1
    assert t4["bands"]["beyond"]["n"] == len(seeds_t4)
    assert t8["bands"]["beyond"]["value"] == pytest.approx((0.7 + 0.9 + 0.7) / 3)
    assert t4["per_difficulty"]["3"]["value"] == pytest.approx(0.5)
    assert t4["bands"]["in"] == {"value": 1.0, "stderr": 0.0, "n": 3}

    claims = {(c["claim"], c["band"]): c for c in compare(summary)}
    deeper = claims[("looped: best T > 4 vs T=4", "beyond")]
    assert deeper["rows"] == ["T=8", "T=4"]
    assert deeper["value"] == pytest.approx(0.7667 - 0.45, abs=1e-3)
    se8 = math.sqrt(sum((x - 0.7667) ** 2 for x in (0.7, 0.9, 0.7)) / 2 / 3)
    assert deeper["stderr"] == pytest.approx(math.hypot(se8, 0.1 / math.sqrt(3)), abs=1e-3)
    assert deeper["overlap"] is False
    control = claims[("looped T=4 vs single (its best row)", "beyond")]
    assert control["value"] == pytest.approx(0.45 - 0.3) and control["stderr"] == pytest.approx(0.1 / math.sqrt(3))
    assert control["overlap"] is False  # 0.15 apart, intervals 0.058 + 0 wide
    assert claims[("looped T=4 vs single (its best row)", "in")]["value"] == pytest.approx(1.0 - 0.95)
    assert ("looped: T=8 (most loops) vs best T", "beyond") not in claims  # T=8 is the best row there
    flat = claims[("looped: T=8 (most loops) vs best T", "in")]  # T=4 reaches 1.0 first
    assert flat["rows"] == ["T=8", "T=4"] and flat["value"] == 0.0 and flat["overlap"] is True


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


def test_lab_trains_every_arm_and_seed_and_writes_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Two arms × two seeds of a 20-step model: every run's eval.json, the aggregate, the Markdown page."""
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
            "valid_size": 0,
            "test_size": 30,
            "options": {"roots": 2, "chain": 3},
        },
        "seeds": [0, 1],
        "loops": [1, 2, 4],
        "bands": {"in": "1-2", "beyond": "3-3"},
        "convergence_loops": 4,
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
    code, stdout, err = run_cli(monkeypatch, capsys, "lab", "lab/exp.yaml", "--report", "docs/results.md")
    assert code == 0, err
    root = tmp_path / "runs" / "lab" / "tiny"
    for arm in ("looped", "single"):
        for seed in (0, 1):
            rec = json.loads((root / arm / f"seed-{seed}" / "eval.json").read_text())
            assert (rec["arm"], rec["seed"]) == (arm, seed)
            assert sum(r["per_difficulty"]["1"]["accuracy"]["n"] for r in rec["results"]["rows"][:1]) > 0
    assert json.loads((root / "looped" / "seed-0" / "eval.json").read_text())["trained_loops"] == 4
    results = json.loads((root / "report" / "results.json").read_text())
    looped = results["summary"]["arms"]["looped"]
    assert [r["label"] for r in looped["rows"]] == ["T=1", "T=2", "T=4"] and looped["seeds"] == [0, 1]
    assert len(looped["dynamics"]["change"]["all"]) == 3 and len(looped["dynamics"]["rms"]["all"]) == 4  # 4 loops
    assert (tmp_path / "docs" / "results" / "tiny" / "dynamics-looped.png").is_file()
    assert [r["label"] for r in results["summary"]["arms"]["single"]["rows"]] == ["T=1"]
    by_seed = [
        json.loads((root / "looped" / f"seed-{s}" / "eval.json").read_text())["results"]["rows"][0] for s in (0, 1)
    ]
    per_seed = [band_accuracy({}, row, (1, 2)) for row in by_seed]
    assert looped["rows"][0]["bands"]["in"]["value"] == pytest.approx(sum(per_seed) / 2)
    page = (tmp_path / "docs" / "results.md").read_text()
    assert "## tiny" in page and "| looped | T=4 |" in page and "looped T=4 vs single (its best row)" in page
    assert (tmp_path / "docs" / "results" / "tiny" / "accuracy-vs-loops.png").is_file()
    assert "claims" in stdout

    stamp = (root / "looped" / "seed-0" / "eval.json").stat().st_mtime_ns
    code, _, err = run_cli(monkeypatch, capsys, "lab", "lab/exp.yaml", "--arms", "looped", "--seeds", "1")
    assert code == 0, err
    assert (root / "looped" / "seed-0" / "eval.json").stat().st_mtime_ns == stamp  # finished runs are reused
    subset = json.loads((root / "report" / "results.json").read_text())
    assert list(subset["summary"]["arms"]) == ["looped"] and subset["summary"]["arms"]["looped"]["seeds"] == [1]
    assert subset["claims"] and all(c["stderr"] is None and c["overlap"] is None for c in subset["claims"])  # 1 seed
    for option, value, message in [("--arms", "looped,nope", "has no arm 'nope'"), ("--seeds", "x", "--seeds takes")]:
        code, _, err = run_cli(monkeypatch, capsys, "lab", "lab/exp.yaml", option, value)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
