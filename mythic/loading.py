"""Where models and tokenizers come from: base folders, mythic checkpoints, exports, base LoRAs.

A mythic checkpoint folder (what surgery writes, a run's ``final/``, a light export, which adds
``base.json``: the base's repo, revision and fingerprint) holds ``config.json`` (model_type ``mythic``:
the base's config, where the base lives, its revision, the block, the rule, every hyperparameter) and
``recurrence.safetensors`` (the new parameters only); with a peft LoRA on the base,
``base_lora.safetensors`` and ``base_lora.json`` (its rank, alpha and targets, see ``mythic.lora``).

Loading is strict: the base must be the revision (manifest) and architecture (config fingerprint) the
checkpoint was made on, and every tensor must be present with the shape the config implies
(``mythic.tensors``). Every failure is a one-line ``MythicError``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig, PreTrainedModel

from mythic.errors import MythicError
from mythic.hub import read_manifest
from mythic.io import write_json
from mythic.lora import lora_config
from mythic.models.retrofit import RECURRENCE_FILE, RetrofitConfig, RetrofitForCausalLM, config_fingerprint
from mythic.tensors import copy_strict

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
BASE_LORA = "base_lora.safetensors"
BASE_LORA_SPEC = "base_lora.json"
BASE_POINTER = "base.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def parse_dtype(text: str) -> str:
    """The dtype name for ``text`` (``bf16`` → ``bfloat16``); one-line error for anything else."""
    name = DTYPE_ALIASES.get(text, text)
    if name not in DTYPES:
        raise MythicError(f"--dtype must be one of {', '.join([*DTYPES, *DTYPE_ALIASES])}, got {text!r}")
    return name


def default_device() -> str:
    """Where a command runs by default: the first GPU when there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_base_dir(folder: Path) -> None:
    """One-line error unless ``folder`` holds a model config."""
    if not (Path(folder) / "config.json").is_file():
        raise MythicError(f"base folder {folder} has no config.json (fetch one with `mythic fetch base`)")


def base_revision(folder: Path) -> str | None:
    """The fetched revision of a base folder: the hub commit, else a hash of its weight files' sha256."""
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    if manifest.get("commit"):
        return str(manifest["commit"])
    weights = sorted((f["path"], f["sha256"]) for f in manifest.get("files", []) if f["path"].endswith(".safetensors"))
    return "sha256:" + hashlib.sha256(json.dumps(weights).encode()).hexdigest()[:16]


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


def load_tokenizer(path: Path) -> Any:
    """The tokenizer of a model folder: its own if it has one, else (a mythic checkpoint) its base's."""
    path = Path(path)
    candidates = [path]
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        if config.get("base_name_or_path"):
            candidates.append(Path(config["base_name_or_path"]))
    for folder in candidates:
        if any((folder / name).is_file() for name in TOKENIZER_FILES):
            try:
                return AutoTokenizer.from_pretrained(folder)
            except (OSError, ValueError) as err:
                raise MythicError(f"cannot load a tokenizer from {folder}: {str(err).splitlines()[0]}") from None
    raise MythicError(f"no tokenizer found in {' or '.join(str(c) for c in candidates)}")


def load_checkpoint(
    path: Path, dtype: torch.dtype | str | None = None, *, base_lora: bool = True, **kwargs: Any
) -> RetrofitForCausalLM:
    """Base (from ``config.base_name_or_path``, at the recorded revision) + recurrence tensors
    (+ the base LoRA when the folder has one, unless ``base_lora`` is False), strictly."""
    path = Path(path)
    config = RetrofitConfig.from_pretrained(path)
    return load_on_base(path, config, checkpoint_base(path, config), dtype, base_lora=base_lora, **kwargs)


def checkpoint_base(ckpt: Path, config: RetrofitConfig, *, strict: bool = True) -> Path:
    """The base folder of checkpoint ``ckpt``: it must hold a config and be the revision the checkpoint was made on
    (an unknown revision passes unless ``strict``)."""
    if not config.base_name_or_path:
        raise MythicError(f"checkpoint {ckpt} does not say where its base is (base_name_or_path is empty)")
    base_dir = Path(config.base_name_or_path)
    check_base_dir(base_dir)
    found = base_revision(base_dir)
    if config.base_revision and found != config.base_revision and (found or strict):
        raise MythicError(
            f"checkpoint {ckpt} was made on base revision {config.base_revision}, "
            f"but {base_dir} is revision {found or 'unknown (it has no mythic-manifest.json)'}"
        )
    return base_dir


def load_on_base(
    folder: Path,
    config: RetrofitConfig,
    base_dir: Path,
    dtype: torch.dtype | str | None = None,
    *,
    base_lora: bool = True,
    **kwargs: Any,
) -> RetrofitForCausalLM:
    """The base in ``base_dir`` (checked to be the architecture of ``config.text_config``) plus the
    recurrence tensors of ``folder`` and (``base_lora``) its base LoRA, loaded strictly."""
    if isinstance(dtype, str):
        dtype = DTYPES[parse_dtype(dtype)]
    base = load_base_model(base_dir, dtype=dtype or torch.float32, **kwargs)
    if config_fingerprint(base.config) != config_fingerprint(config.text_config):
        raise MythicError(f"the base in {base_dir} is not the architecture {folder} was made on")
    config.base_name_or_path = str(Path(base_dir).resolve())
    model = RetrofitForCausalLM(config, base=base)
    model.load_recurrence(folder)
    spec = base_lora_spec(folder) if base_lora else None
    if spec is not None:
        attach_base_lora(model, folder, spec)
    return model.eval()


def load_any(path: Path, dtype: str = "float32") -> PreTrainedModel:
    """A mythic checkpoint or export (RetrofitForCausalLM), an OpenMythos folder, or a plain base folder."""
    path = Path(path)
    check_base_dir(path)
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type == "openmythos":
        import mythic.models.openmythos.hf  # noqa: F401 - registers the openmythos model type with transformers
    if model_type == RetrofitConfig.model_type:
        if (path / RECURRENCE_FILE).is_file():
            return load_checkpoint(path, dtype)
        return RetrofitForCausalLM.from_pretrained(path, dtype=DTYPES[parse_dtype(dtype)])
    return load_base_model(path, dtype=DTYPES[parse_dtype(dtype)]).eval()


def load_light(folder: Path, base_dir: Path | None = None, dtype: str = "float32") -> RetrofitForCausalLM:
    """A light export (``mythic export --light``) on top of a fetched base: ``base_dir``, else the folder
    it was made from if present; ``base.json`` says which repo and revision it needs."""
    folder = Path(folder)
    if not (folder / BASE_POINTER).is_file():
        raise MythicError(f"{folder} is not a light export (no {BASE_POINTER})")
    pointer = json.loads((folder / BASE_POINTER).read_text())
    config = RetrofitConfig.from_pretrained(folder)
    where = Path(base_dir) if base_dir is not None else Path(pointer.get("local_path") or "")
    wanted = f"{pointer.get('repo_id') or 'the base'} at revision {pointer.get('commit') or pointer['base_revision']}"
    if not (where / "config.json").is_file():
        raise MythicError(f"light export {folder} needs {wanted}: fetch it and pass its folder as base_dir")
    found = base_revision(where)
    if pointer.get("base_revision") and found and found != pointer["base_revision"]:
        raise MythicError(f"light export {folder} needs {wanted}, but {where} is revision {found}")
    return load_on_base(folder, config, where, dtype)


def save_base_lora(folder: Path, tensors: dict[str, torch.Tensor], spec: dict[str, Any]) -> None:
    """Write a base LoRA's tensors and its spec (rank, alpha, targets) into ``folder``."""
    save_file({n: t.detach().contiguous().cpu() for n, t in tensors.items()}, Path(folder) / BASE_LORA)
    write_json(Path(folder) / BASE_LORA_SPEC, spec)


def base_lora_spec(folder: Path) -> dict[str, Any] | None:
    """The peft LoRA spec written beside ``base_lora.safetensors``; None when the folder has no base LoRA."""
    folder = Path(folder)
    if not (folder / BASE_LORA).is_file():
        return None
    if not (folder / BASE_LORA_SPEC).is_file():
        raise MythicError(f"{folder} has {BASE_LORA} but no {BASE_LORA_SPEC} saying its rank, alpha and targets")
    return json.loads((folder / BASE_LORA_SPEC).read_text())


def attach_base_lora(model: RetrofitForCausalLM, folder: Path, spec: dict[str, Any]) -> Any:
    """Inject the peft LoRA ``spec`` into the model's base and load its tensors strictly; returns the tuner."""
    from peft import LoraModel

    tuner = LoraModel(model.base, lora_config(spec), "default")
    params = {name: p for name, p in model.named_parameters() if "lora_" in name}
    copy_strict(params, load_file(Path(folder) / BASE_LORA), Path(folder) / BASE_LORA)
    return tuner
