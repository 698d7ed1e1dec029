"""Recipe schema: shipped recipes validate, every kind of bad input is one line naming its key path."""

from __future__ import annotations

import copy
import fnmatch
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mythic.errors import MythicError
from mythic.lab.experiment import load_experiment
from mythic.train.recipe import (
    apply_override,
    differing_setting,
    flatten_settings,
    load_recipe,
    recipe_to_yaml,
    validate_recipe,
)

ROOT = Path(__file__).resolve().parents[1]
GOOD = {
    "name": "x",
    "model": {"kind": "surgery", "base": "b", "surgery": {"block_start": 1, "block_end": 3}},
    "data": {"seq_len": 8, "sources": [{"kind": "stdlib"}]},
    "curriculum": {"kind": "stages", "stages": [{"start": 0, "weights": {1: 1.0}}, {"start": 5, "weights": {2: 1.0}}]},
    "optim": {"lr": 1e-3},
    "train": {"steps": 10},
}


def error_of(change: dict | None = None, *, delete: tuple = (), **top: object) -> str:
    data = copy.deepcopy(GOOD)
    data.update(copy.deepcopy(top))
    if delete:
        node = data
        for key in delete[:-1]:
            node = node[key]
        del node[delete[-1]]
    with pytest.raises(MythicError) as err:
        validate_recipe(data)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_validate(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    again = validate_recipe(yaml.safe_load(recipe_to_yaml(recipe)))
    assert again == recipe


@pytest.mark.parametrize("path", sorted((ROOT / "recipes" / "lab").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_experiments_validate(path: Path) -> None:
    """Every lab experiment file loads: its fields, bands, generator, and each arm's recipe with its overrides."""
    experiment = load_experiment(path)
    assert experiment.name == path.stem
    assert all(Path(arm.recipe).is_file() for arm in experiment.arms)


def test_v6h_and_v6k_encode_the_prior_runs() -> None:
    v6h = load_recipe(ROOT / "recipes" / "v6H.yaml")
    v6k = load_recipe(ROOT / "recipes" / "v6K.yaml")
    assert v6h.model.surgery.rule == "residual"
    assert (v6h.model.surgery.layerscale_init, v6h.model.surgery.layerscale_max) == (0.05, 0.5)
    assert v6h.model.surgery.gate_bias_init == 0.0
    assert (v6h.loss.kl_anchor.alpha, v6h.loss.kl_anchor.every) == (0.5, 2)
    assert (v6h.loss.margin.alpha, v6h.loss.margin.m) == (0.10, 0.02)
    assert (v6h.loss.dual_t.t_lo, v6h.curriculum.loops, v6h.train.steps) == (1, 4, 400)
    assert v6h.loss.focal is None and v6k.loss.focal.gamma == 1.0
    assert v6k.model_dump(exclude={"name", "loss"}) == v6h.model_dump(exclude={"name", "loss"})


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ({"optim": {"lr": -1}}, "recipe optim.lr: Input should be greater than 0 (got -1)"),
        ({"optim": {"lr": float("inf")}}, "recipe optim.lr: Input should be a finite number (got inf)"),
        ({"optim": {"lr": 1e-3, "weight_decay": float("nan")}}, "recipe optim.weight_decay: Input should be a finite"),
        ({"optim": {"lr": 1e-3, "lrr": 2}}, "recipe optim.lrr: unknown key"),
        ({"train": {"steps": "many"}}, "recipe train.steps: Input should be a valid integer"),
        ({"model": {"kind": "zzz"}}, "recipe model.kind: expected one of 'retrofit', 'surgery', 'openmythos'"),
        ({"model": {"kind": "retrofit"}}, "recipe model.checkpoint: required field is missing"),
        (
            {"model": {"kind": "surgery", "base": "b", "surgery": {"layerscale_int": 0.1}}},
            "recipe model.surgery.layerscale_int: unknown key",
        ),
        (
            {"model": {"kind": "surgery", "base": "b", "surgery": {"max_loops": "many"}}},
            "recipe model.surgery.max_loops: Input should be a valid integer",
        ),
        (
            {"model": {"kind": "openmythos", "config": {"dimm": 64}, "tokenizer": "t"}},
            "recipe model.config.dimm: unknown key",
        ),
        (
            {"model": {"kind": "openmythos", "config": {"attn_type": "xyz"}, "tokenizer": "t"}},
            "recipe model.config: MythosConfig.attn_type must be one of",
        ),
        ({"data": {"seq_len": 8, "sources": [{"kind": "stdlib", "wieght": 1}]}}, "recipe data.sources.0.wieght:"),
        (
            {"curriculum": {"kind": "stages", "stages": [{"start": 0, "weights": {1: 0.5, 2: 0.4}}]}},
            "recipe curriculum.stages.0.weights: must sum to 1 (they sum to 0.9)",
        ),
        (
            {"curriculum": {"kind": "stages", "stages": [{"start": 0, "weights": {1: 1.5, 2: -0.5}}]}},
            "recipe curriculum.stages.0.weights.2: Input should be greater than or equal to 0 (got -0.5)",
        ),
        (
            {"curriculum": {"kind": "stages", "stages": [{"start": 0, "weights": {}}]}},
            "recipe curriculum.stages.0.weights: Dictionary should have at least 1 item",
        ),
        (
            {"curriculum": {"kind": "stages", "stages": [{"start": 0, "weights": {1: 0.5, 9: 0.5}}]}},
            "recipe curriculum.stages.0.weights: T=9 is above max_loops=8",
        ),
        ({"curriculum": {"kind": "fixed", "loops": 5, "max_loops": 4}}, "recipe curriculum.loops: T=5 is above"),
        ({"curriculum": {"kind": "poisson_lognormal", "mean": 9}}, "recipe curriculum.mean: 9 is above max_loops=8"),
        (
            {
                "curriculum": {
                    "kind": "stages",
                    "stages": [{"start": 0, "weights": {1: 1.0}}, {"start": 20, "weights": {1: 1.0}}],
                }
            },
            "recipe curriculum.stages.1.start: 20 is past train.steps=10",
        ),
        ({"loss": {"margin": {}}}, "recipe loss.margin: needs loss.dual_t"),
        ({"loss": {"dual_t": {"t_lo": 9}}}, "recipe loss.dual_t.t_lo: T=9 is above curriculum.max_loops=8"),
        (
            {"data": {"seq_len": 8, "sources": [{"kind": "stdlib", "weight": 0.5}, {"kind": "stdlib", "weight": 0.4}]}},
            "recipe data.sources: the weights must sum to 1",
        ),
        ({"trainable": {"lora": {"rank": 4}}}, "recipe trainable.lora.target_modules: name at least one"),
        (
            {"model": {"kind": "openmythos", "config": {}, "tokenizer": "t"}, "loss": {"kl_anchor": {"alpha": 0.5}}},
            "recipe loss.kl_anchor: a from-scratch openmythos model has no base to anchor to",
        ),
        (
            {
                "model": {"kind": "surgery", "base": "b", "quantization": {}, "surgery": {}},
                "train": {"steps": 10, "parallel": "fsdp"},
            },
            "recipe train.parallel: fsdp cannot shard a 4-bit base",
        ),
        (
            {"train": {"steps": 10, "parallel": "fsdp", "mixed_precision": "fp16"}},
            "recipe train.mixed_precision: fp16 needs a sharded gradient scaler under fsdp",
        ),
        (
            {"train": {"steps": 10, "parallel": "zero3"}},
            "recipe train.parallel: Input should be 'ddp' or 'fsdp' (got 'zero3')",
        ),
    ],
)
def test_bad_recipes_name_the_key_path(top: dict, expected: str) -> None:
    assert error_of(**top).startswith(expected)


def test_missing_required_section() -> None:
    assert error_of(delete=("optim",)) == "recipe optim: required field is missing"


def test_overrides_apply_before_validation(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    recipe = load_recipe(
        path, ["optim.lr=5e-5", "curriculum.stages.1.weights={2: 0.25, 4: 0.75}", "loss.kl_anchor={alpha: 0.5}"]
    )
    assert recipe.optim.lr == 5e-5
    assert recipe.curriculum.stages[1].weights == {2: 0.25, 4: 0.75}
    assert recipe.loss.kl_anchor.every == 1
    with pytest.raises(MythicError, match=r"^recipe optim.lr: Input should be greater than 0"):
        load_recipe(path, ["optim.lr=-1"])
    with pytest.raises(MythicError, match="expected key.path=value"):
        load_recipe(path, ["optim.lr"])
    data = copy.deepcopy(GOOD)
    with pytest.raises(MythicError, match="is not an index of a list of 1"):
        apply_override(data, "data.sources.3.weight=1")


def test_yaml_problems_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(MythicError, match=r"not valid YAML at line 2"):
        load_recipe(path)
    with pytest.raises(MythicError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_cli_bad_recipe_exits_2_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    bad = copy.deepcopy(GOOD)
    bad["optim"]["lr"] = -0.1
    path.write_text(yaml.safe_dump(bad))
    done = subprocess.run(
        [sys.executable, "-c", "from mythic.cli import main; main()", "train", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == "error: recipe optim.lr: Input should be greater than 0 (got -0.1)"


CHANGES = {
    "optim.lr": 1e-3,
    "train.micro_batch": 7,
    "data.sources.0.path": "elsewhere.jsonl",
    "data.sources.0.weight": 0.5,
    "curriculum.hold.fraction": 0.5,
}


@given(
    changed=st.sets(st.sampled_from(sorted(CHANGES))),
    ignored=st.sets(st.sampled_from(["data.sources.*.path", "optim.*"])),
)
@settings(max_examples=25, deadline=None)
def test_differing_setting_names_the_first_changed_key_not_ignored(changed: set[str], ignored: set[str]) -> None:
    """Between a recipe and itself with some settings changed: the first changed dotted key (sorted) that no
    ignore pattern matches, or None."""
    base = load_recipe(ROOT / "recipes" / "pointer-openmythos-cpu.yaml")
    other = load_recipe(ROOT / "recipes" / "pointer-openmythos-cpu.yaml", [f"{k}={CHANGES[k]}" for k in changed])
    seen = sorted(k for k in changed if not any(fnmatch.fnmatchcase(k, p) for p in ignored))
    assert differing_setting(base, other, tuple(ignored)) == (seen[0] if seen else None)
    assert differing_setting(other, base, tuple(ignored)) == (seen[0] if seen else None)


def test_flatten_settings_spells_keys_as_overrides_do() -> None:
    flat = flatten_settings({"a": {"b": [1, {"c": None}], "d": {}, "e": []}})
    assert flat == {"a.b.0": 1, "a.b.1.c": None, "a.d": {}, "a.e": []}
