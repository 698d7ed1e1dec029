"""benchmarks/gpu_check.py: the ``--tiny`` CPU run passes every check with the numbers it reports, the
in-memory nf4 path quantises what ``mythic.quant.load_base`` does, and without CUDA it refuses in one line.

Tolerances (bf16 model on the CPU, whose kernels are deterministic):
- T=1 identity: max |Δlogit| exactly 0 (the wrapper runs the base's own layers on the same inputs);
- cached vs uncached: max |Δlogit| ≤ 2e-2 · max |logit| (the script's bf16 target is 5e-2; a few 2⁻⁸ ulps) and
  below a tenth of what looping changes (T=4 vs T=1), so a KV-slot mix-up could not pass;
- grouped vs loop vs naive MoE (float32 on the CPU): relative ≤ 1e-4 on the output and on the w1 gradient;
- compiled (aot_eager under --tiny) vs eager (bf16): relative ≤ 2e-2 (the script's target: 5e-2).

The script runs in this process through ``runpy`` (as ``python benchmarks/gpu_check.py`` would, exit code
included): a second interpreter would spend longer importing torch and transformers than the checks take.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import runpy
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
CHECKS = {"build", "nf4_load", "wrap", "speed", "train_step", "moe", "compile"}


def load_script() -> ModuleType:
    if "gpu_check" in sys.modules:
        return sys.modules["gpu_check"]
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up while they are built
    spec.loader.exec_module(module)
    return module


def run_script(*argv: str) -> tuple[int, str, str]:
    """``python benchmarks/gpu_check.py ARGV`` in this process (no second interpreter to start): exit code,
    stdout, stderr."""
    load_script()  # imports once; the run below re-executes only the script's own top level
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    saved_argv = sys.argv
    sys.argv = [str(SCRIPT), *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(SCRIPT), run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        sys.argv = saved_argv
        torch.set_num_threads(threads)
        torch._dynamo.reset()
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, str, dict[str, Any] | None]:
    """``gpu_check.py --tiny --json OUT``: exit code, the table, stderr, the JSON report."""
    out = tmp_path_factory.mktemp("gpu_check") / "report.json"
    code, stdout, stderr = run_script("--tiny", "--json", str(out))
    return code, stdout, stderr, json.loads(out.read_text()) if out.exists() else None


@pytest.fixture(scope="module")
def report(tiny: tuple[int, str, str, dict[str, Any] | None]) -> dict[str, Any]:
    code, out, err, report = tiny
    assert code == 0, f"--tiny exited {code}\n{out[-4000:]}\n{err[-4000:]}"
    assert report is not None
    return report


def metrics(report: dict[str, Any], name: str) -> dict[str, Any]:
    return report["checks"][name]["metrics"]


def test_tiny_run_passes_every_check_and_prints_the_table(tiny: tuple, report: dict[str, Any]) -> None:
    assert report["mode"] == "tiny" and report["device"] == "cpu" and report["ok"] is True
    assert set(report["checks"]) == CHECKS
    for name, check in report["checks"].items():
        assert check["status"] == "ok", f"{name}: {check['status']}"
        assert check["rows"], f"{name} reported no rows"
        assert check["seconds"] > 0
    table = tiny[1]
    for title in ("phase-0 nf4 load", "T=1 identity", "cached vs uncached", "prefill", "v6K", "MoE", "compile"):
        assert title in table


def test_identity_is_exact_and_cache_matches_the_uncached_forward(report: dict[str, Any]) -> None:
    wrap = metrics(report, "wrap")
    assert wrap["block"] == [2, 3] and wrap["settings"]["lora_rank"] == 8
    assert wrap["identity_max_abs_diff"] == 0.0
    effect = wrap["loop_effect_max_abs_diff"]
    assert effect > 0.05, "the plain repeat must move the logits, or the cache check sees nothing"
    for t in ("1", "4"):
        cache = wrap["cache"][t]
        assert len(cache["tokens"]) == wrap["cache_new_tokens"]
        assert cache["relative"] <= 2e-2
        assert cache["max_abs_diff"] <= 0.1 * effect


def test_nf4_load_quantises_linears_and_experts(report: dict[str, Any]) -> None:
    nf4 = metrics(report, "nf4_load")
    assert nf4["quantized_layers"] > 0 and nf4["quantized_linear"] > 0 and nf4["quantized_cubes"] > 0
    assert nf4["quantized_cubes"] == 2 * (report["model"]["num_hidden_layers"] - 1)  # gate_up + down per MoE layer
    assert nf4["peak_allocated_bytes"] is None and nf4["fits_24gib"] is None  # no CUDA peak on the CPU
    assert abs(nf4["estimate_over_measured"] - 1) < 0.05
    assert nf4["nf4_logits_finite"] is True


def test_v6k_training_step_is_finite(report: dict[str, Any]) -> None:
    train = metrics(report, "train_step")
    assert train["recipe"] == "recipes/v6K.yaml" and train["trainable_parameters"] > 0
    assert train["loss_finite"] is True and math.isfinite(train["loss"])
    first, second = train["steps"]
    assert first["anchor"] and not second["anchor"] and "kl_anchor" in first
    for step in (first, second):
        assert step["n_loops"] == 4 and step["checkpoint_loops"] is True
        assert math.isfinite(step["loss"]) and 0 < step["grad_norm"] < math.inf
        assert {"ce_lo", "ce_hi", "margin"} <= set(step)


def test_speed_rows_carry_the_flop_ideal(report: dict[str, Any]) -> None:
    rows = metrics(report, "speed")["rows"]
    layers = report["model"]["num_hidden_layers"]
    assert [r["T"] for r in rows] == [1, 2, 4, 8]
    for r in rows:
        assert r["ideal"] == pytest.approx((layers + r["T"] - 1) / layers)
        assert r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0
    assert rows[0]["prefill_ratio"] == rows[0]["decode_ratio"] == 1.0


def test_grouped_moe_agrees_with_the_loops(report: dict[str, Any]) -> None:
    moe = metrics(report, "moe")
    assert moe["dtype"] == "torch.float32"
    assert moe["grouped_mm"] is hasattr(torch, "_grouped_mm")
    for other in ("loop", "naive"):
        assert moe["agreement"][other]["output_rel"] <= 1e-4
        assert moe["agreement"][other]["w1_grad_rel"] <= 1e-4
        assert moe[f"{other}_over_auto_forward"] > 0


def test_compiled_block_matches_eager(report: dict[str, Any]) -> None:
    compiled = metrics(report, "compile")
    assert compiled["backend"] == "aot_eager"  # --tiny's default: inductor's cold C++ build would dominate the run
    assert compiled["relative"] <= 2e-2
    assert compiled["first_call_seconds"] > 0 and compiled["compiled_seconds"] > 0


def test_without_cuda_and_without_tiny_it_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine, wherever this runs
    code, out, err = run_script()
    assert code == 2
    assert out == ""
    assert err == "no CUDA device: run with --tiny for the CPU smoke run\n"


def test_in_memory_nf4_quantises_what_load_base_does(tmp_path: Path) -> None:
    gpu_check = load_script()
    results = {}
    for from_disk in (False, True):
        ctx = gpu_check.Context(
            sizes=gpu_check.TINY,
            device=torch.device("cpu"),
            dtype=torch.bfloat16,
            nf4_from_disk=from_disk,
            tmp_dir=tmp_path,
            train_batch=1,
        )
        ctx.config = gpu_check.deepseek_config(gpu_check.TINY)
        ctx.base = gpu_check.build_random_model(ctx.config, ctx.device, ctx.dtype)
        check = gpu_check.Check(1, "nf4_load", "nf4")
        gpu_check.check_nf4(ctx, check)
        assert not check.misses
        results[from_disk] = (check.metrics, ctx.nf4)
    (memory, in_memory), (disk, loaded) = results[False], results[True]
    for key in ("quantized_linear", "quantized_cubes", "model_tensor_bytes"):
        assert memory[key] == disk[key], key
    assert disk["path"].startswith("save_pretrained") and not list(tmp_path.iterdir())  # the temp folder is gone
    ids = torch.randint(0, gpu_check.TINY.deepseek["vocab_size"], (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(in_memory(ids).logits, loaded(ids).logits)


def test_a_failing_or_overrunning_check_is_one_line_and_the_others_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gpu_check = load_script()

    def boom(ctx: Any, check: Any) -> None:
        check.row("partial", "measured before the error")
        raise RuntimeError("boom\nsecond line")

    def slow(ctx: Any, check: Any) -> None:
        import time

        time.sleep(5)

    def fine(ctx: Any, check: Any) -> None:
        check.row("fine", "1")

    monkeypatch.setattr(
        gpu_check, "CHECKS", ((5, "moe", "raises", boom), (6, "compile", "overruns", slow), (3, "speed", "ok", fine))
    )
    monkeypatch.setitem(gpu_check.CHECK_LIMITS_S, "compile", 0.2)
    threads = torch.get_num_threads()
    try:
        code = gpu_check.main(["--tiny", "--json", str(tmp_path / "r.json")])
    finally:
        torch.set_num_threads(threads)
    checks = json.loads((tmp_path / "r.json").read_text())["checks"]
    assert code == 1
    assert checks["moe"]["status"] == "failed: RuntimeError: boom"
    assert checks["moe"]["rows"] == [{"what": "partial", "measured": "measured before the error", "target": ""}]
    assert checks["compile"]["status"] == "failed: CheckTimeout: stopped at its 0.2 s time limit"
    assert checks["compile"]["seconds"] < 2
    assert checks["speed"]["status"] == "ok"
    assert "failed: RuntimeError: boom" in capsys.readouterr().out
