"""``mythic surgery`` / ``mythic generate`` end to end on a tiny base folder, and strict checkpoint loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from safetensors.torch import load_file, save_file
from tiny import save_tiny_base

from mythic.errors import MythicError
from mythic.loading import load_checkpoint
from mythic.models.retrofit import RECURRENCE_FILE, RetrofitForCausalLM
from mythic.recurrence.exit import AdaptiveDepth
from mythic.surgery import identity_probe


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("base") / "tiny-llama"
    save_tiny_base(folder)
    return folder


@pytest.fixture(scope="module")
def ckpt(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mythic.surgery import surgery

    out = tmp_path_factory.mktemp("ckpts") / "b2-4"
    surgery(base_dir, out, block=(2, 4), max_loops=4)
    return out


def test_surgery_cli_writes_a_checkpoint_with_only_new_parameters_and_exact_identity(
    base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ckpt"
    code, stdout, _ = run_cli(monkeypatch, capsys, "surgery", "--base", base_dir, "--layer", 3, "--out", out)
    assert code == 0, stdout
    assert "T=1 identity" in stdout
    report = json.loads((out / "surgery-report.json").read_text())
    assert report["identity_max_abs_diff"] == 0.0
    assert report["block"] == [3, 4]
    tensors = load_file(out / RECURRENCE_FILE)
    assert all(name.startswith("recurrence.") for name in tensors)
    assert sum(t.numel() for t in tensors.values()) == report["new_parameters"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "mythic" and config["base_name_or_path"] == str(base_dir.resolve())
    assert config["text_config"]["model_type"] == "llama"


def test_load_checkpoint_brings_back_base_and_recurrence(base_dir: Path, ckpt: Path) -> None:
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    model = load_checkpoint(ckpt)
    x = identity_probe(base.config.vocab_size)
    with torch.no_grad():
        assert (model(x, n_loops=1).logits - base(x).logits).abs().max().item() == 0.0
        rule = model.recurrence.rule
        rule.scale.set(0.3)
        model.save_recurrence(ckpt.parent / "trained")
        again = load_checkpoint(ckpt.parent / "trained")
        assert (again(x, n_loops=3).logits - model(x, n_loops=3).logits).abs().max().item() == 0.0
    with pytest.raises(MythicError, match="is a mythic checkpoint .* load it with mythic.loading.load_checkpoint"):
        RetrofitForCausalLM.from_pretrained(ckpt)  # the model class knows no loader: no import cycle


def _copy_ckpt(ckpt: Path, to: Path) -> Path:
    to.mkdir()
    for f in ckpt.iterdir():
        (to / f.name).write_bytes(f.read_bytes())
    return to


def test_loading_is_strict_about_loops_tensors_hidden_size_and_base_revision(ckpt: Path, tmp_path: Path) -> None:
    longer = _copy_ckpt(ckpt, tmp_path / "longer")
    config = json.loads((longer / "config.json").read_text())
    config["max_loops"] = 8
    (longer / "config.json").write_text(json.dumps(config))
    with pytest.raises(MythicError, match=r"tensor recurrence\.\S+ has shape \(4, 1\) .* expects \(8, 1\)"):
        load_checkpoint(longer)

    missing = _copy_ckpt(ckpt, tmp_path / "missing")
    tensors = load_file(missing / RECURRENCE_FILE)
    tensors.pop("recurrence.rule.gate.value")
    save_file(tensors, missing / RECURRENCE_FILE)
    with pytest.raises(MythicError, match=r"lacks tensor recurrence\.rule\.gate\.value"):
        load_checkpoint(missing)

    extra = _copy_ckpt(ckpt, tmp_path / "extra")
    tensors = load_file(extra / RECURRENCE_FILE)
    tensors["recurrence.rule.bogus"] = torch.zeros(1)
    save_file(tensors, extra / RECURRENCE_FILE)
    with pytest.raises(MythicError, match=r"has tensor recurrence\.rule\.bogus"):
        load_checkpoint(extra)

    wider = _copy_ckpt(ckpt, tmp_path / "wider")
    config = json.loads((wider / "config.json").read_text())
    config["text_config"]["hidden_size"] = 128
    (wider / "config.json").write_text(json.dumps(config))
    with pytest.raises(MythicError, match="not the architecture"):
        load_checkpoint(wider)

    other_revision = _copy_ckpt(ckpt, tmp_path / "revision")
    config = json.loads((other_revision / "config.json").read_text())
    config["base_revision"] = "0123abcd"
    (other_revision / "config.json").write_text(json.dumps(config))
    base = Path(config["base_name_or_path"])
    (base / "mythic-manifest.json").write_text(json.dumps({"commit": "feedbeef", "files": []}))
    try:
        with pytest.raises(MythicError, match="made on base revision 0123abcd, but .* is revision feedbeef"):
            load_checkpoint(other_revision)
    finally:
        (base / "mythic-manifest.json").unlink()
    with pytest.raises(MythicError, match="is revision unknown"):
        load_checkpoint(other_revision)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer", "6"], "block start 6 is out of range"),
        (["--block", "4:2"], "block end 2 must be greater than block start 4"),
        (["--block", "4"], "--block takes START:END"),
        (["--layer", "1", "--block", "1:2"], "exactly one of --layer"),
        (["--layer", "1", "--rule", "magic"], "unknown update rule 'magic'"),
    ],
)
def test_bad_surgery_input_is_one_line_exit_2_and_writes_nothing(
    base_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "surgery", "--base", base_dir, "--out", out, *args)
    assert code == 2
    assert message in stderr and "Traceback" not in stderr + stdout
    assert len(stderr.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_missing_base_and_foreign_architecture_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, stderr = run_cli(monkeypatch, capsys, "surgery", "--base", tmp_path / "nope", "--layer", "1")
    assert code == 2 and "has no config.json" in stderr
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "foo"}))
    code, stdout, stderr = run_cli(monkeypatch, capsys, "surgery", "--base", unknown, "--layer", "1")
    assert code == 2 and f"cannot read the config of {unknown}" in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stdout + stderr
    from transformers import AutoConfig, AutoModelForCausalLM

    gpt2 = tmp_path / "gpt2"
    AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", n_layer=2, n_embd=32, n_head=2)).save_pretrained(gpt2)
    code, _, stderr = run_cli(monkeypatch, capsys, "surgery", "--base", gpt2, "--layer", "1", "--out", tmp_path / "o")
    assert code == 2 and "unsupported architecture 'gpt2'" in stderr
    assert not (tmp_path / "o").exists()


def test_generate_prints_completions_side_by_side(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mythic.eval.generate import complete_at_loops
    from mythic.loading import load_tokenizer

    code, stdout, _ = run_cli(
        monkeypatch, capsys, "generate", "--ckpt", ckpt, "--loops", "1,2", "--max-new-tokens", "8", "hello"
    )
    assert code == 0
    assert "T=1" in stdout and "T=2" in stdout and "base" in stdout
    model = load_checkpoint(ckpt)
    never = AdaptiveDepth(2, "convergence", 1e-30)
    rows = {
        label: (used, text)
        for label, used, text in complete_at_loops(model, load_tokenizer(ckpt), "hello", [1, 2, never], 8)
    }
    assert rows["T=1"][1] == rows["base"][1], "a fresh checkpoint at T=1 completes exactly like the base"
    assert rows["auto:2"] == (2.0, rows["T=2"][1]), "an exit that never fires is T=MAX, every token using MAX loops"
    assert rows["base"][0] is None and rows["T=1"][0] == 1.0
