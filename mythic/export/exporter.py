"""Export a mythic checkpoint as a Hugging Face folder, full (self-contained) or light.

``export`` checks the request and picks the path: ``export_full`` / ``export_light`` for a retrofit
checkpoint, ``export_openmythos`` for an OpenMythos model folder (a run's ``final/``): no base, so always
the whole model (``modeling_openmythos.py``), with ``--light`` and ``--merge-lora`` refused.

Full export of CKPT into DIR, loadable with transformers only
(``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)``):

    config.json                   the checkpoint's RetrofitConfig, ``auto_map`` → modeling_mythic
    model*.safetensors (+ index)  base weights in ``dtype``, recurrence in float32 (as mythic keeps it), sharded
    modeling_mythic.py            generated from mythic's own source (``mythic.export.bundle``)
    tokenizer files, generation_config.json (``mythic_n_loops``), README.md (``mythic.export.card``)

The default loop count is config.json's ``n_loops``. generation_config.json records it as
``mythic_n_loops``: a key ``n_loops`` there would make ``generate`` swallow an explicit ``n_loops=``
argument into the generation config instead of passing it to ``forward``.

Light export (``light=True``): config.json + recurrence.safetensors (+ base_lora.safetensors and
base_lora.json when the base carries a trained peft LoRA), base.json (the base's repo id, revision,
commit and architecture fingerprint) and README.md; ``mythic.loading.load_light(DIR, base_dir)`` loads
it on top of a fetched base. A full export folds a base LoRA into the base weights (``merge_lora=True``,
W ← W + (α/r)·B·A through peft's merge); Depth-LoRA, a different B_t·A_t per loop, stays in the
recurrence weights, applied by its hooks.

Refused with a one-line ``MythicError`` before anything is written: a folder that is not a mythic
checkpoint, a base of another revision or architecture, a missing tokenizer (full export), an
existing output folder without ``force``, a base LoRA without ``merge_lora`` (full) or with it
(light), and a disk whose free space is below the bytes to write (Σ numel·itemsize of the saved
tensors plus the small files). The folder is written through ``atomic_dir``; the run's ``recipe.yaml``
and eval JSONs, when found beside the checkpoint, are shown in the model card.
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
from mythic.export.bundle import OPENMYTHOS, RETROFIT, Bundle, bundle_source
from mythic.export.card import model_card, openmythos_card
from mythic.hub import read_manifest
from mythic.io import atomic_dir, check_free_space, quiet_transformers, write_json
from mythic.loading import (
    BASE_LORA,
    BASE_LORA_SPEC,
    BASE_POINTER,
    DTYPES,
    attach_base_lora,
    base_lora_spec,
    checkpoint_base,
    load_checkpoint,
    load_tokenizer,
    parse_dtype,
)
from mythic.models.openmythos.hf import OpenMythosForCausalLM
from mythic.models.retrofit import RECURRENCE_FILE, RetrofitConfig, config_fingerprint
from mythic.progress import Progress

OPENMYTHOS_TYPE = "openmythos"
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
    bytes_written: int = 0
    files: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def resolve_checkpoint(path: Path) -> tuple[Path, str]:
    """(folder, model type) of a checkpoint folder, or of a training run folder whose ``final/`` is one: a
    mythic retrofit checkpoint (``mythic``) or an OpenMythos model folder (``openmythos``)."""
    path = Path(path)
    if (path / "final" / "config.json").is_file():
        path = path / "final"
    config = path / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    if model_type == OPENMYTHOS_TYPE:
        return path, model_type
    if model_type != RetrofitConfig.model_type:
        raise MythicError(
            f"{path} is not a mythic checkpoint (no config.json with model_type 'mythic' or 'openmythos')"
        )
    if not (path / RECURRENCE_FILE).is_file():
        raise MythicError(f"{path} has no {RECURRENCE_FILE}: not a mythic checkpoint")
    return path, model_type


def _nearby(ckpt: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` in the checkpoint folder, else in its run folder when it is a run's final/."""
    for folder in (ckpt, ckpt.parent) if ckpt.name == "final" else (ckpt,):
        found = sorted(p for p in folder.iterdir() if p.is_file() and fnmatch.fnmatch(p.name, pattern))
        if found:
            return found
    return []


def _tensor_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters, each shared tensor once."""
    return sum({p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}.values())


def _base_pointer(config: RetrofitConfig) -> dict[str, Any]:
    """Where the base lives: repo id, revision and commit from its manifest, plus its fingerprint."""
    manifest = read_manifest(config.base_name_or_path or "") or {}
    return {
        "repo_id": manifest.get("repo_id"),
        "revision": manifest.get("revision"),
        "commit": manifest.get("commit"),
        "base_revision": config.base_revision,
        "fingerprint": config_fingerprint(config.text_config),
        "local_path": config.base_name_or_path,
    }


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
    ckpt, model_type = resolve_checkpoint(ckpt)
    out = Path(out)
    if out.exists() and not force:
        raise MythicError(f"output folder {out} already exists (pass --force to replace it)")
    if n_loops is not None and n_loops < 1:
        raise MythicError(f"--loops must be at least 1, got {n_loops}")
    settings = Settings(out, dtype, n_loops, force, max_shard_size, progress)
    if model_type == OPENMYTHOS_TYPE:
        if light or merge_lora:
            raise MythicError(
                f"--{'light' if light else 'merge-lora'} applies to retrofits: an OpenMythos model has no base, "
                "so its export is the whole model"
            )
        report = export_openmythos(ckpt, settings)
    else:
        report = export_retrofit(ckpt, settings, light, merge_lora)
    report.files = {p.relative_to(out).as_posix(): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    report.bytes_written = sum(report.files.values())
    report.seconds = round(time.perf_counter() - started, 2)
    return report


def export_retrofit(ckpt: Path, settings: Settings, light: bool, merge_lora: bool) -> ExportReport:
    """Check a retrofit export request against the checkpoint (its base, its LoRA), then write it."""
    config = RetrofitConfig.from_pretrained(ckpt)
    config.n_loops = config.n_loops if settings.n_loops is None else settings.n_loops
    checkpoint_base(ckpt, config, strict=False)  # a light export loads no model: check its base here
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
    if light:
        return export_light(ckpt, config, lora, settings)
    return export_full(ckpt, config, lora, settings)


@dataclass(frozen=True)
class Settings:
    """What every export path shares: where, in which dtype, the default loop count (None: keep the
    checkpoint's), whether to replace, shard size and progress."""

    out: Path
    dtype: str
    n_loops: int | None
    force: bool
    max_shard_size: str | int
    progress: Progress | None

    def stage(self, stages: list[str], what: str) -> None:
        if self.progress is not None:
            self.progress(stages.index(what), len(stages), what)


def card_sources(ckpt: Path) -> dict[str, Any]:
    """The recipe and eval JSONs found beside a checkpoint, for its model card."""
    recipe = _nearby(ckpt, RECIPE)
    return {
        "recipe": recipe[0] if recipe else None,
        "evals": sorted({p for pattern in EVAL_PATTERNS for p in _nearby(ckpt, pattern)}),
    }


def export_light(ckpt: Path, config: RetrofitConfig, lora: dict[str, Any] | None, settings: Settings) -> ExportReport:
    """config.json, recurrence (+ base LoRA) weights, base.json and the card: loads on a fetched base."""
    settings.stage(["writing the light export"], "writing the light export")
    pointer = _base_pointer(config)
    files = [ckpt / RECURRENCE_FILE] + ([ckpt / BASE_LORA] if lora else [])
    estimate = sum(f.stat().st_size for f in files) + SMALL_FILES_MARGIN
    check_free_space(estimate, settings.out.parent, "export")
    with atomic_dir(settings.out, force=settings.force) as tmp:
        config.save_pretrained(tmp)
        for f in files:
            shutil.copyfile(f, tmp / f.name)
        if lora:
            write_json(tmp / BASE_LORA_SPEC, lora)
        write_json(tmp / BASE_POINTER, pointer)
        card = model_card(config, pointer, kind="light", merged_lora=False, **card_sources(ckpt))
        (tmp / "README.md").write_text(card)
    base = pointer["repo_id"] or str(config.base_name_or_path)
    return ExportReport(str(settings.out), "light", None, config.n_loops, base, config.base_revision, False, estimate)


def export_full(ckpt: Path, config: RetrofitConfig, lora: dict[str, Any] | None, settings: Settings) -> ExportReport:
    """The base (its LoRA merged) and the recurrence as sharded safetensors, with the bundled modeling file."""
    merged = lora is not None
    stages = ["loading the checkpoint", *(["merging the base LoRA"] if merged else []), "writing the weights"]
    tokenizer = load_tokenizer(ckpt)
    settings.stage(stages, "loading the checkpoint")
    with quiet_transformers():
        model = load_checkpoint(ckpt, dtype=DTYPES[settings.dtype], base_lora=False)
    if merged:
        settings.stage(stages, "merging the base LoRA")
        attach_base_lora(model, ckpt, lora).merge_and_unload()
    model.config.n_loops = config.n_loops
    model.base.to(DTYPES[settings.dtype])
    pointer = _base_pointer(config)
    card = model_card(model.config, pointer, kind="full", merged_lora=merged, **card_sources(ckpt))
    settings.stage(stages, "writing the weights")
    estimate = write_bundled(model, tokenizer, RETROFIT, config.n_loops, card, settings)
    base = pointer["repo_id"] or str(config.base_name_or_path)
    return ExportReport(
        str(settings.out), "full", settings.dtype, config.n_loops, base, config.base_revision, merged, estimate
    )


def export_openmythos(ckpt: Path, settings: Settings) -> ExportReport:
    """An OpenMythos model folder with its bundled modeling file (every weight trained: no light form)."""
    stages = ["loading the checkpoint", "writing the weights"]
    tokenizer = load_tokenizer(ckpt)
    settings.stage(stages, "loading the checkpoint")
    with quiet_transformers():
        model = OpenMythosForCausalLM.from_pretrained(ckpt, dtype=DTYPES[settings.dtype])
    if settings.n_loops is not None:
        model.config.n_loops = settings.n_loops
    n_loops = model.config.n_loops or model.config.max_loop_iters
    card = openmythos_card(model.config, **card_sources(ckpt))
    settings.stage(stages, "writing the weights")
    estimate = write_bundled(model, tokenizer, OPENMYTHOS, n_loops, card, settings)
    base = "none (trained from scratch)"
    return ExportReport(str(settings.out), "full", settings.dtype, n_loops, base, None, False, estimate)


def write_bundled(model: Any, tokenizer: Any, bundle: Bundle, n_loops: int, card: str, settings: Settings) -> int:
    """Weights (sharded), config with ``auto_map``, generation config, tokenizer, modeling file and card into
    ``settings.out``; returns the bytes estimated (and checked free) beforehand."""
    modeling = bundle_source(bundle)
    estimate = _tensor_bytes(model) + len(modeling.encode()) + SMALL_FILES_MARGIN
    check_free_space(estimate, settings.out.parent, "export")
    with atomic_dir(settings.out, force=settings.force) as tmp, quiet_transformers():
        model.config.auto_map = bundle.auto_map
        model.generation_config = model.generation_config or GenerationConfig()
        model.generation_config.mythic_n_loops = n_loops
        model.save_pretrained(tmp, max_shard_size=settings.max_shard_size)
        tokenizer.save_pretrained(tmp)
        (tmp / bundle.file).write_text(modeling)
        (tmp / "README.md").write_text(card)
    return estimate
