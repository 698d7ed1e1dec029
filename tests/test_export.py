"""``mythic export``: a self-contained folder that loads without mythic, light exports, LoRA merge, push, refusals."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
import yaml
from cli_runner import run_cli
from hubserver_upload import UploadHub
from safetensors import safe_open
from tiny import save_tiny_base

from mythic.errors import MythicError
from mythic.export.bundle import RETROFIT, bundle_order, bundle_source
from mythic.export.exporter import export
from mythic.export.push import push_to_hub
from mythic.hub import download_repo, write_manifest
from mythic.io import sha256_file
from mythic.loading import BASE_LORA, load_checkpoint, load_light, save_base_lora
from mythic.models.retrofit import RECURRENCE_FILE, RetrofitForCausalLM
from mythic.surgery import surgery
from mythic.train.model import add_lora
from mythic.train.recipe import Lora

COMMIT = "c0ffee" * 6 + "beef"
IDS = [[5, 17, 42, 9, 88, 3, 61, 30]]
LORA = {"rank": 4, "alpha": 8.0, "target_modules": ["q_proj", "gate_proj", "down_proj"], "layers": [0, 2]}

# What every script run in the clean environment starts with: mythic must not be importable there.
CLEAN_PREAMBLE = r"""
import json, sys
try:
    import mythic
except ImportError:
    pass
else:
    sys.exit("mythic is importable in the clean environment")
import torch
"""
CLEAN_LOAD = (
    CLEAN_PREAMBLE
    + r"""
from transformers import AutoModelForCausalLM

request = json.loads(sys.argv[1])
x = torch.tensor(request["ids"])
results = {}
for folder in request["folders"]:
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(x, n_loops=4).logits.float()
    settings = dict(max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True)
    looped, default = model.generate(x, n_loops=4, **settings), model.generate(x, **settings)
    results[folder] = {
        "class": type(model).__module__ + "." + type(model).__name__,
        "dtype": str(model.dtype),
        "tokens": looped.sequences.tolist(),
        "scores": torch.stack(looped.scores).float().tolist(),
        "default_tokens": default.sequences.tolist(),
        "default_scores": torch.stack(default.scores).float().tolist(),
        "logits": logits.tolist(),
    }
print(json.dumps(results))
"""
)


def load_without_mythic(folders: list[Path], scratch: Path) -> dict[str, dict]:
    """Load exported folders in a Python whose path holds site-packages but no mythic (no .pth, no repo)."""
    paths = sysconfig.get_paths()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(scratch),
        "HF_HOME": str(scratch / "hf"),
        "PYTHONPATH": os.pathsep.join(dict.fromkeys([paths["purelib"], paths["platlib"]])),
        "OMP_NUM_THREADS": "1",
    }
    request = json.dumps({"folders": [str(f) for f in folders], "ids": IDS})
    done = subprocess.run(
        [sys.executable, "-S", "-c", CLEAN_LOAD, request], cwd=scratch, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def mythic_outputs(model: RetrofitForCausalLM) -> dict[str, object]:
    """What CLEAN_LOAD reports, from mythic's own model (scores as tensors)."""
    x = torch.tensor(IDS)
    with torch.no_grad():
        logits = model(x, n_loops=4).logits.float()
    settings = dict(max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True)
    looped, default = model.generate(x, n_loops=4, **settings), model.generate(x, **settings)
    return {
        "logits": logits,
        "tokens": looped.sequences.tolist(),
        "scores": torch.stack(looped.scores).float(),
        "default_tokens": default.sequences.tolist(),
        "default_scores": torch.stack(default.scores).float(),
    }


def to_lists(outputs: dict[str, object]) -> dict[str, object]:
    """``mythic_outputs`` in the JSON form CLEAN_LOAD prints."""
    return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in outputs.items()}


def assert_same(got: dict, mine: dict, logits: float = 0.0, scores: float = 1e-6) -> None:
    """Exported model (from the clean process) vs mythic's own: forward logits, generate scores, tokens.

    The forward logits agree bit for bit; the cached decode steps of ``generate`` may differ in the last
    float32 bit (CPU kernels for one-token matmuls depend on the tensors' memory alignment), hence ``scores``.
    """
    assert (torch.tensor(got["logits"]) - mine["logits"]).abs().max().item() <= logits
    for key in ("scores", "default_scores"):
        assert (torch.tensor(got[key]) - mine[key]).abs().max().item() <= scores, key
    assert got["tokens"] == mine["tokens"] and got["default_tokens"] == mine["default_tokens"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export") / "tiny-llama"
    save_tiny_base(folder, "llama")
    write_manifest(folder, repo_id="mythic-test/tiny-llama", revision="main", commit=COMMIT)
    return folder


@pytest.fixture(scope="module")
def run_dir(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training run folder: final/ (perturbed recurrence), recipe.yaml and an eval JSON."""
    run = tmp_path_factory.mktemp("runs") / "run"
    surgery(base_dir, run / "final", block=(2, 4), max_loops=4, n_loops=2, lora_rank=4)
    model = load_checkpoint(run / "final")
    torch.manual_seed(3)
    with torch.no_grad():
        for _, p in model.recurrence_parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.recurrence.rule.scale.set(0.5)
        model.recurrence.rule.gate.value.fill_(2.0)
    model.save_recurrence(run / "final")
    (run / "recipe.yaml").write_text(yaml.safe_dump({"name": "tiny", "model": {"kind": "retrofit"}}))
    (run / "humaneval.json").write_text(json.dumps([{"loops": 1, "pass@1": 0.25}, {"loops": 4, "pass@1": 0.375}]))
    return run


@pytest.fixture(scope="module")
def lora_run(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RetrofitForCausalLM]:
    """The same run with a trained peft LoRA on the base (as the trainer saves it), and the unmerged model."""
    run = tmp_path_factory.mktemp("runs") / "lora-run"
    shutil.copytree(run_dir / "final", run / "final")
    model = load_checkpoint(run / "final")
    add_lora(model, Lora(**LORA))
    adapted = {int(n.split(".layers.")[1].split(".")[0]) for n, _ in model.named_parameters() if "lora_" in n}
    assert adapted == {0, 2}  # trainable.lora.layers reaches peft's layers_to_transform
    torch.manual_seed(4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    save_base_lora(run / "final", lora, Lora(**LORA).model_dump())
    return run, model.eval()


def test_bundle_is_mythic_source_with_only_imports_and_registration_edited() -> None:
    order = bundle_order()
    assert order[0] == "mythic.errors" and order[-1] == "mythic.models.retrofit"
    assert "mythic.recurrence.runner" in order and "mythic.models.openmythos.model" not in order
    source = bundle_source()
    tree = ast.parse(source)
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("mythic")]
    bundle_lines = set(source.splitlines())
    edited = ("from mythic", "from __future__", "AutoConfig.register", "AutoModelForCausalLM.register")
    kept = removed = 0
    for name in order:
        for line in inspect.getsource(importlib.import_module(name)).splitlines():
            if line.strip().startswith(edited) or line.strip() == "if TYPE_CHECKING:":
                removed += 1
            else:
                assert line in bundle_lines, f"{name}: {line!r} is missing from the bundle"
                kept += 1
    assert kept > 900 and removed < 0.03 * kept, "only import lines are edited"


@pytest.fixture(scope="module")
def exports(
    run_dir: Path, lora_run: tuple[Path, RetrofitForCausalLM], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Full exports: float32 in small shards, bfloat16 (the default), float32 with the base LoRA merged."""
    root = tmp_path_factory.mktemp("exports")
    export(run_dir, root / "fp32", dtype="float32", max_shard_size="100KB")
    export(run_dir / "final", root / "bf16")
    export(lora_run[0], root / "merged", dtype="fp32", merge_lora=True)
    return {name: root / name for name in ("fp32", "bf16", "merged")}


def load_bundled(folder: Path) -> torch.nn.Module:
    """The exported folder through its own modeling_mythic.py, imported from the file (not from mythic)."""
    spec = importlib.util.spec_from_file_location(f"bundled_{folder.name}", folder / RETROFIT.file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    model = module.RetrofitForCausalLM.from_pretrained(folder).eval()
    assert type(model).__module__ == spec.name
    return model


def test_full_export_folder_files_config_and_model_card(run_dir: Path, exports: dict[str, Path]) -> None:
    fp32 = exports["fp32"]
    files = {p.name for p in fp32.iterdir()}
    shards = sorted(f for f in files if f.startswith("model-") and f.endswith(".safetensors"))
    assert len(shards) >= 5 and "model.safetensors.index.json" in files
    assert {RETROFIT.file, "config.json", "generation_config.json", "tokenizer.json", "README.md"} <= files
    config = json.loads((fp32 / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_mythic.RetrofitForCausalLM"
    assert config["n_loops"] == 2 and config["base_revision"] == COMMIT and config["dtype"] == "float32"
    assert json.loads((fp32 / "generation_config.json").read_text())["mythic_n_loops"] == 2
    assert json.loads((exports["bf16"] / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(exports["bf16"] / "model.safetensors", "pt") as f:
        dtypes = {name.split(".")[0]: f.get_slice(name).get_dtype() for name in f.keys()}  # noqa: SIM118
    assert dtypes == {"base": "BF16", "recurrence": "F32"}, "the recurrence stays float32, as mythic keeps it"
    card = (fp32 / "README.md").read_text()
    assert "base_model: mythic-test/tiny-llama" in card and COMMIT in card
    assert "## Recipe" in card and "name: tiny" in card
    assert "| loops | pass@1 |" in card and "| 4 | 0.375 |" in card
    assert "base LoRA merged | yes" in (exports["merged"] / "README.md").read_text()
    report = export(run_dir, fp32.parent / "again", dtype="float32", max_shard_size="100KB")
    assert report.bytes_written <= report.bytes_estimated <= report.bytes_written + (1 << 20)
    assert report.bytes_written == sum(p.stat().st_size for p in fp32.iterdir())


def test_bundled_model_matches_mythic(
    run_dir: Path, lora_run: tuple[Path, RetrofitForCausalLM], exports: dict[str, Path]
) -> None:
    mine = mythic_outputs(load_checkpoint(run_dir / "final"))
    assert (mine["scores"] - mine["default_scores"]).abs().max().item() > 1e-2, "n_loops=4 must differ from 2"
    assert_same(to_lists(mythic_outputs(load_bundled(exports["fp32"]))), mine)
    bf16 = exports["bf16"]
    assert_same(to_lists(mythic_outputs(load_bundled(bf16))), mythic_outputs(RetrofitForCausalLM.from_pretrained(bf16)))
    with_lora = mythic_outputs(lora_run[1])
    assert_same(to_lists(mythic_outputs(load_bundled(exports["merged"]))), with_lora, logits=1e-5, scores=1e-5)
    assert (with_lora["logits"] - mine["logits"]).abs().max().item() > 1e-2, "the base LoRA must matter"


@pytest.mark.slow
def test_full_exports_load_without_mythic_in_a_clean_process(
    run_dir: Path, lora_run: tuple[Path, RetrofitForCausalLM], exports: dict[str, Path], tmp_path: Path
) -> None:
    clean = load_without_mythic(list(exports.values()), tmp_path)
    for got in clean.values():
        assert got["class"].startswith("transformers_modules.")
        assert got["class"].endswith("modeling_mythic.RetrofitForCausalLM")
    assert_same(clean[str(exports["fp32"])], mythic_outputs(load_checkpoint(run_dir / "final")))
    assert clean[str(exports["bf16"])]["dtype"] == "torch.bfloat16"
    bf16 = mythic_outputs(RetrofitForCausalLM.from_pretrained(exports["bf16"]))
    assert_same(clean[str(exports["bf16"])], bf16)
    assert_same(clean[str(exports["merged"])], mythic_outputs(lora_run[1]), logits=1e-5, scores=1e-5)


def test_light_export_is_small_and_loads_on_a_fetched_base(
    run_dir: Path, lora_run: tuple[Path, RetrofitForCausalLM], base_dir: Path, tmp_path: Path
) -> None:
    light = tmp_path / "light"
    report = export(run_dir, light, light=True)
    assert set(report.files) == {"config.json", RECURRENCE_FILE, "base.json", "README.md"}
    assert report.bytes_written < 40_000
    pointer = json.loads((light / "base.json").read_text())
    assert pointer["repo_id"] == "mythic-test/tiny-llama" and pointer["commit"] == COMMIT
    fetched = tmp_path / "elsewhere" / "tiny-llama"
    shutil.copytree(base_dir, fetched)
    logits = mythic_outputs(load_checkpoint(run_dir / "final"))["logits"]
    for model in (load_light(light, base_dir=fetched), load_checkpoint(light)):
        assert (mythic_outputs(model)["logits"] - logits).abs().max().item() == 0.0

    write_manifest(fetched, repo_id="mythic-test/tiny-llama", revision="main", commit="f" * 40)
    with pytest.raises(MythicError, match=f"needs mythic-test/tiny-llama at revision {COMMIT}, but .* is revision f+"):
        load_light(light, base_dir=fetched)

    light_lora = tmp_path / "light-lora"
    report = export(lora_run[0], light_lora, light=True)
    assert {BASE_LORA, "base_lora.json"} <= set(report.files)
    lora_logits = mythic_outputs(lora_run[1])["logits"]
    assert (mythic_outputs(load_light(light_lora))["logits"] - lora_logits).abs().max().item() == 0.0


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("revision", "was made on base revision 0123abcd, but .* is revision c0ffee"),
        ("exists", "already exists \\(pass --force to replace it\\)"),
        ("disk", "not enough disk space for .*: the export needs \\d+ bytes"),
        ("not-a-checkpoint", "is not a mythic checkpoint"),
        ("merge-without-lora", "--merge-lora: .* has no base LoRA .* Depth-LoRA is per loop"),
        ("lora-without-merge", "has a peft LoRA on the base .* pass --merge-lora"),
        ("light-and-merge", "--merge-lora does not apply to --light"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    case: str,
    message: str,
    run_dir: Path,
    lora_run: tuple[Path, RetrofitForCausalLM],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ckpt, out, extra = run_dir, tmp_path / "out" / "export", []
    if case == "revision":
        ckpt = _copy(run_dir / "final", tmp_path / "ckpt")
        config = json.loads((ckpt / "config.json").read_text())
        (ckpt / "config.json").write_text(json.dumps({**config, "base_revision": "0123abcd"}))
    elif case == "exists":
        out.mkdir(parents=True)
        (out / "keep.txt").write_text("mine")
    elif case == "disk":
        real = shutil.disk_usage
        monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=4096))
    elif case == "not-a-checkpoint":
        ckpt = tmp_path
    elif case == "merge-without-lora":
        extra = ["--merge-lora"]
    elif case == "lora-without-merge":
        ckpt = lora_run[0]
    else:
        ckpt, extra = lora_run[0], ["--light", "--merge-lora"]
    code, stdout, stderr = run_cli(monkeypatch, capsys, "export", ckpt, "--out", out, *extra)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stdout + stderr
    assert re.search(message, stderr), stderr
    if case == "exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    parent = tmp_path / "out"
    assert not parent.exists() or not list(parent.glob(".*")), "no temp folder left behind"


def test_missing_tokenizer_is_refused_and_force_replaces(tmp_path: Path, run_dir: Path) -> None:
    base = tmp_path / "bare"
    save_tiny_base(base, "llama", with_tokenizer=False)
    surgery(base, tmp_path / "ckpt", block=(1, 2), max_loops=2)
    with pytest.raises(MythicError, match="no tokenizer found in"):
        export(tmp_path / "ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    report = export(run_dir, tmp_path / "out", light=True, force=True)
    assert not (tmp_path / "out" / "old.txt").exists() and report.kind == "light"


@pytest.fixture
def upload_hub(monkeypatch: pytest.MonkeyPatch) -> UploadHub:
    server = UploadHub()
    monkeypatch.setenv("HF_ENDPOINT", server.start())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    yield server
    server.close()


def test_push_to_hub_arrives_byte_identical_and_reads_back(
    run_dir: Path,
    tmp_path: Path,
    upload_hub: UploadHub,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "export"
    code, stdout, _ = run_cli(
        monkeypatch, capsys, "export", run_dir, "--out", out, "--dtype", "fp32", "--push-to-hub", "me/tiny-mythic"
    )
    assert code == 0, stdout
    local = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    remote = upload_hub.repos["me/tiny-mythic"]["main"].files
    assert remote.keys() == local.keys() and all(remote[k] == local[k] for k in local)
    assert upload_hub.puts() == sum(1 for k in local if k.endswith(".safetensors")), "LFS files go through PUT"
    back = tmp_path / "back"
    download_repo("me/tiny-mythic", back)
    assert all(sha256_file(back / k) == sha256_file(out / k) for k in local)
    again = push_to_hub(out, "me/tiny-mythic")
    assert again.commit == upload_hub.repos["me/tiny-mythic"]["main"].commit
    assert upload_hub.puts() == sum(1 for k in local if k.endswith(".safetensors")), "nothing re-uploaded"
    with pytest.raises(MythicError, match="--push-to-hub takes a repo id"):
        push_to_hub(out, "not a repo id")


@pytest.mark.slow
def test_smollm2_export_loads_without_mythic_and_generates_the_same_tokens(smollm2_dir: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    surgery(smollm2_dir, ckpt, block=(12, 16), max_loops=4)
    model = load_checkpoint(ckpt)
    torch.manual_seed(0)
    with torch.no_grad():
        model.recurrence.rule.scale.set(0.3)
        for _, p in model.recurrence_parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.save_recurrence(ckpt)
    report = export(ckpt, tmp_path / "out", max_shard_size="100MB")
    assert sum(f.endswith(".safetensors") for f in report.files) >= 3
    got = load_without_mythic([tmp_path / "out"], tmp_path)[str(tmp_path / "out")]
    assert_same(got, mythic_outputs(RetrofitForCausalLM.from_pretrained(tmp_path / "out").eval()))


def test_a_training_checkpoint_with_a_base_lora_loads_it_strictly(lora_run: tuple[Path, RetrofitForCausalLM]) -> None:
    run, trained = lora_run
    loaded = load_checkpoint(run / "final")
    x = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (loaded(x, n_loops=2).logits - trained(x, n_loops=2).logits).abs().max().item() == 0.0


def test_a_base_lora_without_its_spec_is_refused_not_guessed(
    lora_run: tuple[Path, RetrofitForCausalLM], tmp_path: Path
) -> None:
    run, _ = lora_run
    bare = tmp_path / "bare"
    shutil.copytree(run / "final", bare)
    (bare / "base_lora.json").unlink()
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"trainable": {"recurrence": True, "lora": LORA}}))
    with pytest.raises(MythicError, match=r"has base_lora\.safetensors but no base_lora\.json"):
        load_checkpoint(bare)


@pytest.mark.parametrize(
    ("source", "refusal"),
    [
        ("import mythic.errors as errors\n", r"mythic\.fake line 1: `import mythic\.errors`"),
        ("def f():\n    import mythic.io\n", r"mythic\.fake line 2: `import mythic\.io`"),
        ("from mythic.recurrence import rules\n", r"`from mythic\.recurrence import rules` imports a module"),
        ("from . import errors\n", r"mythic\.fake line 1: a relative import"),
    ],
)
def test_the_bundler_refuses_imports_it_cannot_rewrite(
    source: str, refusal: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mythic.export.bundle as bundle

    real = bundle._module_source
    monkeypatch.setattr(bundle, "_module_source", lambda name: source if name == "mythic.fake" else real(name))
    with pytest.raises(RuntimeError, match=refusal):
        bundle.bundle_order("mythic.fake")
    fine = "from mythic.recurrence import RULES\nfrom mythic.errors import MythicError\n"
    monkeypatch.setattr(bundle, "_module_source", lambda name: fine if name == "mythic.fake" else real(name))
    assert bundle.bundle_order("mythic.fake") == ["mythic.recurrence", "mythic.errors", "mythic.fake"]


def test_the_bundler_refuses_a_function_level_import_of_a_module_it_does_not_bundle() -> None:
    import mythic.export.bundle as bundle

    lazy = "from mythic.errors import MythicError\n\n\ndef f():\n    from mythic.io import write_json\n"
    assert (
        bundle._strip(lazy.replace("mythic.io", "mythic.errors"), {"mythic.errors"}, "mythic.fake").count("import") == 0
    )
    with pytest.raises(RuntimeError, match=r"mythic\.fake line 5 imports mythic\.io, which is not bundled"):
        bundle._strip(lazy, {"mythic.errors"}, "mythic.fake")


CLEAN_TASKS = (
    CLEAN_PREAMBLE
    + r"""
from transformers import AutoModelForCausalLM, AutoTokenizer

request = json.loads(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(request["folder"], trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(request["folder"], trust_remote_code=True)
tokenizer.padding_side = "left"
answers = {}
for loops in request["loops"]:
    enc = tokenizer(request["prompts"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, n_loops=loops, max_new_tokens=request["budget"], do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    new = out[:, enc.input_ids.shape[1]:]
    answers[str(loops)] = [tokenizer.decode(ids, skip_special_tokens=True) for ids in new]
default = model.generate(**enc, max_new_tokens=1, do_sample=False, pad_token_id=tokenizer.pad_token_id)
print(json.dumps({"answers": answers, "class": type(model).__name__, "default": default[:, -1].tolist()}))
"""
)


def test_an_openmythos_model_exports_and_answers_as_mythic_at_every_loop_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A from-scratch OpenMythos (a run's final/: save_pretrained + its char tokenizer) exports whole and, in a
    Python without mythic, answers every task prompt as ``mythic eval tasks`` does, at every loop count."""
    from tiny import tiny_mythos

    from mythic.eval.exact_match import answer_budget, predict
    from mythic.models.openmythos import OpenMythosConfig, OpenMythosForCausalLM
    from mythic.tasks import pointer
    from mythic.tasks.tokenizer import char_tokenizer

    rng = np.random.default_rng(0)
    tasks = [pointer.example(rng, 1 + i % 4, pointer.PointerOptions(6)) for i in range(12)]
    tokenizer = char_tokenizer(tasks)
    config = tiny_mythos(
        vocab_size=len(tokenizer),
        max_seq_len=128,
        token_conv=4,
        loop_conv=2,
        state_norm=True,
        lora_rank=0,
        init_std=0.8,
    )  # init_std 0.8: a random model whose answers differ from prompt to prompt and from loop count to loop count
    torch.manual_seed(5)
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    model = OpenMythosForCausalLM(OpenMythosConfig.from_mythos(config, **ids)).eval()
    with torch.no_grad():
        model.model.loop_conv.weight.normal_(0, 0.5)  # zero at init: give the loop convolution something to do
    final = tmp_path / "run" / "final"
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    (tmp_path / "run" / "recipe.yaml").write_text(yaml.safe_dump({"name": "tiny", "model": {"kind": "openmythos"}}))
    code, _, err = run_cli(monkeypatch, capsys, "export", str(tmp_path / "run"), "--out", str(tmp_path / "exp"),
                           "--dtype", "float32", "--loops", "3")  # fmt: skip
    assert code == 0, err
    out = tmp_path / "exp"
    config_json = json.loads((out / "config.json").read_text())
    assert config_json["auto_map"]["AutoModelForCausalLM"] == "modeling_openmythos.OpenMythosForCausalLM"
    assert config_json["n_loops"] == 3 and (out / "modeling_openmythos.py").is_file()
    assert "mythic_export::grouped_experts" in (out / "modeling_openmythos.py").read_text()
    assert "# A Recurrent-Depth Transformer trained from scratch" in (out / "README.md").read_text()
    loops = [1, 2, 4, 8]
    mine = {str(t): predict(model, tokenizer, tasks, t, batch_size=12).answers for t in loops}
    assert len({tuple(a) for a in mine.values()}) > 1 and len(set(mine["4"])) > 1, "the rows say different things"
    request = {
        "folder": str(out),
        "prompts": [t.prompt for t in tasks],
        "loops": loops,
        "budget": answer_budget(tokenizer, tasks),
    }
    paths = sysconfig.get_paths()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "HF_HOME": str(tmp_path / "hf"),
        "PYTHONPATH": os.pathsep.join(dict.fromkeys([paths["purelib"], paths["platlib"]])),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run([sys.executable, "-S", "-c", CLEAN_TASKS, json.dumps(request)], cwd=tmp_path, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["class"] == "OpenMythosForCausalLM" and got["answers"] == mine
    for flag in ("--light", "--merge-lora"):
        code, _, err = run_cli(monkeypatch, capsys, "export", str(final), "--out", str(tmp_path / "x"), flag)
        assert code == 2 and "an OpenMythos model has no base" in err and not (tmp_path / "x").exists()
