"""Export a mythic checkpoint as a Hugging Face folder, full (self-contained) or light.

Full export of CKPT into DIR (``export(ckpt, out)``):

    config.json                   the checkpoint's MythicConfig, ``auto_map`` → modeling_mythic
    model*.safetensors (+ index)  base weights in ``dtype``, recurrence in float32 (as mythic keeps it), sharded
    modeling_mythic.py            generated from mythic's own source (``mythic.export.bundle``)
    tokenizer files, generation_config.json (``mythic_n_loops``), README.md (``mythic.export.card``)

so ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` needs transformers only.

The default loop count lives in config.json's ``n_loops`` (what ``forward`` uses when no
``n_loops`` is passed). generation_config.json records it as ``mythic_n_loops``: a key named
``n_loops`` there would make transformers' ``generate`` swallow an explicit ``n_loops=`` argument
into the generation config instead of passing it to ``forward``.

Light export (``light=True``): config.json + recurrence.safetensors (+ base_lora.safetensors and
base_lora.json when the base carries a trained peft LoRA), base.json (the base's repo id, revision,
commit and architecture fingerprint) and README.md; ``mythic.loading.load_light(DIR, base_dir)``
loads it with mythic on top of a fetched base.

Base LoRA: a training run that adapted the base with peft leaves ``base_lora.safetensors`` and its
spec ``base_lora.json`` next to the recurrence (``mythic.loading``), so the checkpoint describes
itself. A full export folds it into the base weights (``merge_lora=True``, W ← W + (α/r)·B·A
through peft's merge); Depth-LoRA is per loop (a different B_t·A_t for every t), so no single
weight can hold it: it stays in the recurrence weights and is applied by its hooks, in the export
as in mythic.

Refused with a one-line ``MythicError`` before anything is written: a folder that is not a mythic
checkpoint, a base of another revision or architecture, a missing tokenizer (full export), an
existing output folder without ``force``, a base LoRA without ``merge_lora`` (full) or with it
(light), and a disk whose free space is below the bytes to write (Σ numel·itemsize of the saved
tensors plus the small files). The folder is written through ``atomic_dir``. The run's
``recipe.yaml`` and eval JSONs, when found beside the checkpoint, are shown in the model card.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig

from mythic.errors import MythicError
from mythic.export.bundle import AUTO_MAP, MODELING_FILE, bundle_source
from mythic.export.card import model_card
from mythic.hub import read_manifest
from mythic.io import atomic_dir, check_free_space, quiet_transformers, write_json
from mythic.loading import (
    BASE_LORA,
    BASE_LORA_SPEC,
    BASE_POINTER,
    DTYPES,
    attach_base_lora,
    base_lora_spec,
    base_revision,
    load_checkpoint,
    load_tokenizer,
    parse_dtype,
)
from mythic.models.retrofit import RECURRENCE_FILE, MythicConfig, MythicForCausalLM, config_fingerprint
from mythic.progress import Progress

RECIPE = "recipe.yaml"
EVAL_PATTERNS = ("humaneval*.json", "eval*.json")
SMALL_FILES_MARGIN = 1 << 20


@dataclass
class ExportReport:
    out: str
    kind: str
    dtype: str | None
    n_loops: int
    base: str
    base_revision: str | None
    merged_lora: bool
    bytes_estimated: int
    bytes_written: int
    files: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or a training run folder whose ``final/`` is one."""
    path = Path(path)
    if (path / "final" / RECURRENCE_FILE).is_file():
        path = path / "final"
    config = path / "config.json"
    if not config.is_file() or json.loads(config.read_text()).get("model_type") != MythicConfig.model_type:
        raise MythicError(f"{path} is not a mythic checkpoint (no config.json with model_type 'mythic')")
    if not (path / RECURRENCE_FILE).is_file():
        raise MythicError(f"{path} has no {RECURRENCE_FILE}: not a mythic checkpoint")
    return path


def _nearby(ckpt: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` in the checkpoint folder, else in its run folder when it is a run's final/."""
    for folder in (ckpt, ckpt.parent) if ckpt.name == "final" else (ckpt,):
        found = sorted(p for p in folder.iterdir() if p.is_file() and fnmatch.fnmatch(p.name, pattern))
        if found:
            return found
    return []


def find_recipe(ckpt: Path) -> Path | None:
    found = _nearby(ckpt, RECIPE)
    return found[0] if found else None


def find_evals(ckpt: Path) -> list[Path]:
    return sorted({p for pattern in EVAL_PATTERNS for p in _nearby(ckpt, pattern)})


def _tensor_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters, each shared tensor once."""
    return sum({p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}.values())


def _base_pointer(config: MythicConfig) -> dict[str, Any]:
    """Where the base lives: repo id, revision and commit from its manifest, plus its fingerprint."""
    folder = Path(config.base_name_or_path or "")
    manifest = read_manifest(folder) or {}
    return {
        "repo_id": manifest.get("repo_id"),
        "revision": manifest.get("revision"),
        "commit": manifest.get("commit"),
        "base_revision": config.base_revision,
        "fingerprint": config_fingerprint(config.text_config),
        "local_path": config.base_name_or_path,
    }


def _check_base(config: MythicConfig, ckpt: Path) -> None:
    """The checkpoint's base must exist and be the revision it was made on (light export loads no model)."""
    folder = Path(config.base_name_or_path or "")
    if not (folder / "config.json").is_file():
        raise MythicError(f"the base of {ckpt} ({folder}) has no config.json: fetch it with `mythic fetch base`")
    found = base_revision(folder)
    if config.base_revision and found and found != config.base_revision:
        raise MythicError(
            f"checkpoint {ckpt} was made on base revision {config.base_revision}, but {folder} is revision {found}"
        )


def export(
    ckpt: Path,
    out: Path,
    *,
    dtype: str = "bfloat16",
    n_loops: int | None = None,
    light: bool = False,
    merge_lora: bool = False,
    force: bool = False,
    max_shard_size: str | int = "2GB",
    progress: Progress | None = None,
) -> ExportReport:
    """Write a full (or light) export of ``ckpt`` to ``out``; see the module docstring."""
    started = time.perf_counter()
    dtype = parse_dtype(dtype)
    ckpt = resolve_checkpoint(ckpt)
    out = Path(out)
    if out.exists() and not force:
        raise MythicError(f"output folder {out} already exists (pass --force to replace it)")
    config = MythicConfig.from_pretrained(ckpt)
    n_loops = config.n_loops if n_loops is None else n_loops
    if n_loops < 1:
        raise MythicError(f"--loops must be at least 1, got {n_loops}")
    config.n_loops = n_loops
    _check_base(config, ckpt)
    lora = base_lora_spec(ckpt)
    if light and merge_lora:
        raise MythicError("--merge-lora does not apply to --light: a light export keeps the base LoRA separate")
    if merge_lora and lora is None:
        raise MythicError(
            f"--merge-lora: {ckpt} has no base LoRA ({BASE_LORA}) to merge; Depth-LoRA is per loop and is never merged"
        )
    if not light and lora is not None and not merge_lora:
        raise MythicError(
            f"{ckpt} has a peft LoRA on the base ({BASE_LORA}): pass --merge-lora to fold it into the exported "
            "base weights, or --light to ship it separately"
        )
    stages = (
        ["writing the light export"]
        if light
        else ["loading the checkpoint", *(["merging the base LoRA"] if lora is not None else []), "writing the weights"]
    )

    def step(what: str) -> None:
        if progress is not None:
            progress(stages.index(what), len(stages), what)

    pointer = _base_pointer(config)
    recipe, evals = find_recipe(ckpt), find_evals(ckpt)
    card = dict(
        base_repo=pointer["repo_id"], base_commit=pointer["commit"], recipe=recipe, evals=evals, merged_lora=merge_lora
    )
    if light:
        step("writing the light export")
        files = [ckpt / RECURRENCE_FILE] + ([ckpt / BASE_LORA] if lora else [])
        estimate = sum(f.stat().st_size for f in files) + SMALL_FILES_MARGIN
        check_free_space(estimate, out.parent, "export")
        with atomic_dir(out, force=force) as tmp:
            config.save_pretrained(tmp)
            for f in files:
                shutil.copyfile(f, tmp / f.name)
            if lora:
                write_json(tmp / BASE_LORA_SPEC, lora)
            write_json(tmp / BASE_POINTER, pointer)
            (tmp / "README.md").write_text(model_card(config, kind="light", **card))
        return _report(out, "light", None, config, pointer, False, estimate, started)

    tokenizer = load_tokenizer(ckpt)
    step("loading the checkpoint")
    with quiet_transformers():
        model = load_checkpoint(ckpt, dtype=DTYPES[dtype], base_lora=False)
    if lora is not None:
        step("merging the base LoRA")
        attach_base_lora(model, ckpt, lora).merge_and_unload()
    model.config.n_loops = n_loops
    model.base.to(DTYPES[dtype])
    modeling = bundle_source()
    estimate = _tensor_bytes(model) + len(modeling.encode()) + SMALL_FILES_MARGIN
    check_free_space(estimate, out.parent, "export")
    with atomic_dir(out, force=force) as tmp, quiet_transformers():
        step("writing the weights")
        model.config.auto_map = AUTO_MAP
        model.generation_config = _generation_config(model, n_loops)
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
        (tmp / MODELING_FILE).write_text(modeling)
        (tmp / "README.md").write_text(model_card(model.config, kind="full", **card))
    return _report(out, "full", dtype, config, pointer, merge_lora, estimate, started)


def _report(
    out: Path,
    kind: str,
    dtype: str | None,
    config: MythicConfig,
    pointer: dict[str, Any],
    merged_lora: bool,
    estimate: int,
    started: float,
) -> ExportReport:
    sizes = {p.relative_to(out).as_posix(): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    return ExportReport(
        out=str(out),
        kind=kind,
        dtype=dtype,
        n_loops=config.n_loops,
        base=pointer["repo_id"] or str(config.base_name_or_path),
        base_revision=config.base_revision,
        merged_lora=merged_lora,
        bytes_estimated=estimate,
        bytes_written=sum(sizes.values()),
        files=sizes,
        seconds=round(time.perf_counter() - started, 2),
    )


def _generation_config(model: MythicForCausalLM, n_loops: int) -> GenerationConfig:
    config = GenerationConfig.from_dict(model.generation_config.to_dict() if model.generation_config else {})
    config.mythic_n_loops = n_loops
    return config
