"""Surgery: turn a base folder into a mythic checkpoint, and load such checkpoints back.

A checkpoint folder holds ``config.json`` (model_type ``mythic``: the base's config, where
the base lives, its revision, the block, the rule and every hyperparameter),
``recurrence.safetensors`` (the new parameters only) and ``surgery-report.json``. It is
written through a temp folder and renamed at the end, so a failed surgery leaves nothing.

The T = 1 identity check is part of surgery: the base's logits on a fixed batch of token
ids are computed before the wrapper is built and compared with the wrapper's at
``n_loops=1``; the max abs diff is reported (0.0 for a fresh wrapper with an
identity-preserving rule).

Loading is strict: the base must be the same revision (manifest) and architecture
(config fingerprint) the checkpoint was made on, and every recurrence tensor must be
present with the shape the config implies.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from mythic.errors import MythicError
from mythic.hub import read_manifest
from mythic.io import atomic_dir, write_json
from mythic.models.families import check_block, family_of
from mythic.models.retrofit import MythicConfig, MythicForCausalLM, config_fingerprint

REPORT_FILE = "surgery-report.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class SurgeryReport:
    base: str
    base_revision: str | None
    block: tuple[int, int]
    drop: tuple[int, int] | None
    rule: str
    max_loops: int
    identity_max_abs_diff: float | None
    new_parameters: int
    base_parameters: int
    seconds: float


def base_revision(folder: Path) -> str | None:
    """The fetched revision of a base folder: the hub commit, else a hash of its weight files' sha256."""
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    if manifest.get("commit"):
        return str(manifest["commit"])
    weights = sorted((f["path"], f["sha256"]) for f in manifest.get("files", []) if f["path"].endswith(".safetensors"))
    return "sha256:" + hashlib.sha256(json.dumps(weights).encode()).hexdigest()[:16]


def check_dtype(name: str) -> None:
    """One-line error unless ``name`` is a key of ``DTYPES``."""
    if name not in DTYPES:
        raise MythicError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")


def check_base_dir(folder: Path) -> None:
    """One-line error unless ``folder`` holds a model config."""
    if not (folder / "config.json").is_file():
        raise MythicError(f"base folder {folder} has no config.json (fetch one with `mythic fetch base`)")


def load_base_config(folder: Path) -> PreTrainedConfig:
    """``AutoConfig.from_pretrained`` with transformers' errors turned into one line."""
    check_base_dir(folder)
    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as err:
        raise MythicError(f"cannot read the config of {folder}: {str(err).strip().splitlines()[0]}") from err


def load_base_model(folder: Path, **kwargs: Any) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` with transformers' errors turned into one line."""
    check_base_dir(folder)
    try:
        return AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise MythicError(f"cannot load the model in {folder}: {str(err).strip().splitlines()[0]}") from err


def identity_probe(vocab_size: int, batch: int = 2, length: int = 16) -> torch.Tensor:
    """The fixed token batch the identity check runs on."""
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(1234))


def surgery(
    base_dir: Path,
    out: Path,
    *,
    block: tuple[int, int],
    drop: tuple[int, int] | None = None,
    dtype: str = "float32",
    force: bool = False,
    **settings: Any,
) -> SurgeryReport:
    """Wrap ``block`` of the base in ``base_dir`` in the recurrence and write a checkpoint to ``out``."""
    started = time.perf_counter()
    check_base_dir(base_dir)
    if out.exists() and not force:
        raise MythicError(f"output folder {out} already exists (pass --force to replace it)")
    config = load_base_config(base_dir)
    family_of(config)
    check_block(config, block[0], block[1], drop)
    MythicConfig(text_config=config, block_start=block[0], block_end=block[1], **settings).validate_surgery()
    base = load_base_model(base_dir, dtype=DTYPES[dtype]).eval()
    probe = identity_probe(config.vocab_size)
    with torch.no_grad():
        expected = base(probe).logits
    model = MythicForCausalLM.from_base(
        base,
        block_start=block[0],
        block_end=block[1],
        drop=list(drop) if drop else None,
        base_name_or_path=str(base_dir.resolve()),
        base_revision=base_revision(base_dir),
        **settings,
    ).eval()
    with torch.no_grad():
        diff = float((model(probe, n_loops=1).logits - expected).abs().max()) if not drop else None
    report = SurgeryReport(
        base=str(base_dir.resolve()),
        base_revision=model.config.base_revision,
        block=block,
        drop=drop,
        rule=model.config.rule,
        max_loops=model.config.max_loops,
        identity_max_abs_diff=diff,
        new_parameters=sum(p.numel() for _, p in model.recurrence_parameters()),
        base_parameters=sum(p.numel() for p in model.base.parameters()),
        seconds=round(time.perf_counter() - started, 2),
    )
    with atomic_dir(out, force=force) as tmp:
        model.save_recurrence(tmp)
        write_json(tmp / REPORT_FILE, asdict(report))
    return report


def load_checkpoint(path: Path, dtype: torch.dtype | str | None = None, **kwargs: Any) -> MythicForCausalLM:
    """Base (from ``config.base_name_or_path``) + recurrence tensors (+ a trained peft LoRA on the base,
    ``base_lora.safetensors``), strictly; see the module docstring."""
    path = Path(path)
    config = MythicConfig.from_pretrained(path)
    if not config.base_name_or_path:
        raise MythicError(f"checkpoint {path} does not say where its base is (base_name_or_path is empty)")
    base_dir = Path(config.base_name_or_path)
    check_base_dir(base_dir)
    found = base_revision(base_dir)
    if config.base_revision and found != config.base_revision:
        raise MythicError(
            f"checkpoint {path} was made on base revision {config.base_revision}, "
            f"but {base_dir} is revision {found or 'unknown (it has no mythic-manifest.json)'}"
        )
    model = load_on_base(path, config, base_dir, dtype, **kwargs)
    from mythic.export import attach_base_lora, base_lora_spec

    spec = base_lora_spec(path)
    if spec is not None:
        attach_base_lora(model, path, spec)
    return model


def load_on_base(
    folder: Path, config: MythicConfig, base_dir: Path, dtype: torch.dtype | str | None = None, **kwargs: Any
) -> MythicForCausalLM:
    """The base in ``base_dir`` (checked to be the architecture of ``config.text_config``) plus the
    recurrence tensors of ``folder``, loaded strictly."""
    check_base_dir(base_dir)
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    base = load_base_model(base_dir, dtype=dtype or torch.float32, **kwargs)
    if config_fingerprint(base.config) != config_fingerprint(config.text_config):
        raise MythicError(f"the base in {base_dir} is not the architecture {folder} was made on")
    config.base_name_or_path = str(Path(base_dir).resolve())
    model = MythicForCausalLM(config, base=base)
    model.load_recurrence(folder)
    return model.eval()


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a checkpoint: its own folder if it has one, else its base's."""
    path = Path(path)
    candidates = [path]
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        if config.get("base_name_or_path"):
            candidates.append(Path(config["base_name_or_path"]))
    for folder in candidates:
        if any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            return AutoTokenizer.from_pretrained(folder)
    raise MythicError(f"no tokenizer found in {' or '.join(str(c) for c in candidates)}")


def default_device() -> str:
    """Where evaluation runs: the first GPU when there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_any(path: Path, dtype: str = "float32") -> PreTrainedModel:
    """A mythic checkpoint or export (MythicForCausalLM), or a plain base folder (AutoModelForCausalLM)."""
    path = Path(path)
    check_base_dir(path)
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type == "openmythos":
        import mythic.models.openmythos  # noqa: F401 - registers the openmythos model type with transformers
    if model_type == MythicConfig.model_type:
        return MythicForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    return load_base_model(path, dtype=DTYPES[dtype]).eval()
