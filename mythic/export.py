"""Export a mythic checkpoint as a Hugging Face folder, full (self-contained) or light, and push it.

Full export of CKPT into DIR (``export(ckpt, out)``):

    config.json                   the checkpoint's MythicConfig, ``auto_map`` → modeling_mythic
    model*.safetensors (+ index)  base weights in ``dtype``, recurrence in float32 (as mythic keeps it), sharded
    modeling_mythic.py            generated from mythic's own source (``bundle_source``)
    tokenizer files, generation_config.json (``mythic_n_loops``), README.md (model card)

so ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` needs transformers only.
``bundle_source`` keeps ONE implementation of every mechanism: it concatenates the source files of
``mythic.models.retrofit`` and of the mythic modules it imports at module level, dependencies
first, and only edits imports: imports of bundled modules are removed (their names are defined
above), type-checking-only imports are dropped, a lazy import of a mythic module that is not
bundled (the light-checkpoint path of ``from_pretrained``) raises ImportError, and the module-level
``Auto*.register`` calls are dropped (``auto_map`` does that job, and registering twice would clash
with an installed mythic).

The default loop count lives in config.json's ``n_loops`` (what ``forward`` uses when no
``n_loops`` is passed). generation_config.json records it as ``mythic_n_loops``: a key named
``n_loops`` there would make transformers' ``generate`` swallow an explicit ``n_loops=`` argument
into the generation config instead of passing it to ``forward``.

Light export (``light=True``): config.json + recurrence.safetensors (+ base_lora.safetensors and
base_lora.json when the base carries a trained peft LoRA), base.json (the base's repo id, revision,
commit and architecture fingerprint) and README.md; ``load_light(DIR, base_dir)`` loads it with
mythic on top of a fetched base.

Base LoRA: a training run that adapted the base with peft leaves ``base_lora.safetensors`` next to
the recurrence and its rank/alpha/targets in the run's ``recipe.yaml``. A full export folds it into
the base weights (``merge_lora=True``, W ← W + (α/r)·B·A through peft's merge); Depth-LoRA is per
loop (a different B_t·A_t for every t), so no single weight can hold it: it stays in the recurrence
weights and is applied by its hooks, in the export as in mythic.

Refused with a one-line ``MythicError`` before anything is written: a folder that is not a mythic
checkpoint, a base of another revision or architecture, a missing tokenizer (full export), an
existing output folder without ``force``, a base LoRA without ``merge_lora`` (full) or with it
(light), and a disk whose free space is below the bytes to write (Σ numel·itemsize of the saved
tensors plus the small files). The folder is written through ``atomic_dir``.

Push: ``HfApi.create_repo(exist_ok=True)`` then ``HfApi.upload_folder`` to ``$HF_ENDPOINT``.
"""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import importlib
import inspect
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file
from transformers import GenerationConfig

import mythic
from mythic.errors import MythicError
from mythic.hub import hub_endpoint, read_manifest
from mythic.io import atomic_dir, check_free_space, quiet_transformers, write_json
from mythic.lora import lora_config
from mythic.models.retrofit import RECURRENCE_FILE, MythicConfig, MythicForCausalLM, config_fingerprint
from mythic.surgery import DTYPES, base_revision, load_checkpoint, load_on_base, load_tokenizer

MODELING_FILE = "modeling_mythic.py"
BUNDLE_ROOT = "mythic.models.retrofit"
BASE_POINTER = "base.json"
BASE_LORA = "base_lora.safetensors"
BASE_LORA_SPEC = "base_lora.json"
RECIPE = "recipe.yaml"
EVAL_PATTERNS = ("humaneval*.json", "eval*.json")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
SMALL_FILES_MARGIN = 1 << 20
AUTO_MAP = {
    "AutoConfig": f"{MODELING_FILE[:-3]}.MythicConfig",
    "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.MythicForCausalLM",
}

Progress = Callable[[str], None]
"""Called with the name of each stage as it starts."""


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


@dataclass
class PushReport:
    repo_id: str
    url: str
    commit: str
    files: int


# ----------------------------------------------------------------------------- the modeling file


def _is_mythic(module: str | None) -> bool:
    return module is not None and (module == "mythic" or module.startswith("mythic."))


def _module_source(name: str) -> str:
    return inspect.getsource(importlib.import_module(name))


def bundle_order(root: str = BUNDLE_ROOT) -> list[str]:
    """``root`` and the mythic modules it imports at module level, each after its dependencies."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for node in ast.parse(_module_source(name)).body:
            if isinstance(node, ast.ImportFrom) and _is_mythic(node.module):
                visit(str(node.module))
        order.append(name)

    visit(root)
    return order


def _edit(node: ast.stmt, bundled: set[str], top: bool) -> str | None:
    """The replacement text of one statement, or None to keep it (see the module docstring)."""
    indent = " " * node.col_offset
    if isinstance(node, ast.ImportFrom) and node.module == "__future__":
        return ""
    if isinstance(node, ast.ImportFrom) and _is_mythic(node.module):
        if node.module in bundled:
            return ""
        return f"{indent}raise ImportError('this path needs the mythic package: pip install mythic')\n"
    if (
        top
        and isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
        and all(isinstance(n, ast.ImportFrom) and _is_mythic(n.module) for n in node.body)
    ):
        return ""
    if (
        top
        and isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Attribute)
        and node.value.func.attr == "register"
    ):
        return ""
    return None


def _strip(source: str, bundled: set[str]) -> str:
    """``source`` with its mythic imports and registrations edited out; emptied blocks get ``pass``."""
    tree = ast.parse(source)
    edits: list[tuple[int, int, str]] = []
    for parent in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            body = getattr(parent, name, None)
            if not isinstance(body, list) or not body or not isinstance(body[0], ast.stmt):
                continue
            changed = [(node, _edit(node, bundled, parent is tree)) for node in body]
            changed = [(node, text) for node, text in changed if text is not None]
            if len(changed) == len(body) and all(text == "" for _, text in changed) and parent is not tree:
                node = changed[0][0]
                changed[0] = (node, " " * node.col_offset + "pass\n")
            edits += [(node.lineno, node.end_lineno or node.lineno, text) for node, text in changed]
    lines = source.splitlines(keepends=True)
    for start, end, text in sorted(edits, reverse=True):
        lines[start - 1 : end] = [text] if text else []
    return "".join(lines)


def _check_unique_names(source: str) -> None:
    """Two bundled modules must not bind one top-level name to different things."""
    bound: dict[str, tuple[str, ...]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom | ast.Import):
            pairs = [
                (alias.asname or alias.name.split(".")[0], ("import", getattr(node, "module", None), alias.name))
                for alias in node.names
            ]
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            pairs = [(node.name, ("def", str(node.lineno)))]
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            pairs = [(t.id, ("def", str(node.lineno))) for t in targets if isinstance(t, ast.Name)]
        else:
            continue
        for name, key in pairs:
            if bound.setdefault(name, key) != key:
                raise RuntimeError(f"bundling mythic: two modules bind the top-level name {name!r} differently")


def bundle_source(root: str = BUNDLE_ROOT) -> str:
    """The self-contained ``modeling_mythic.py``: see the module docstring."""
    order = bundle_order(root)
    files = [
        Path(importlib.import_module(name).__file__ or name).relative_to(Path(mythic.__file__).parent.parent)
        for name in order
    ]
    header = (
        f'"""MythicConfig and MythicForCausalLM, self-contained: generated by `mythic export` (mythic '
        f"{mythic.__version__}).\n\nThe sections below are these files of mythic, in this order, verbatim except for "
        "their imports\nof each other (the names are defined above their use):\n\n"
        + "".join(f"    {f.as_posix()}\n" for f in files)
        + '\nDo not edit: export again instead.\n"""\n\nfrom __future__ import annotations\n'
    )
    sections = [
        f"\n\n# {'=' * 20} {path.as_posix()} {'=' * 20}\n\n" + _strip(_module_source(name), set(order)).strip() + "\n"
        for name, path in zip(order, files, strict=True)
    ]
    source = header + "".join(sections)
    _check_unique_names(source)
    return source


# ----------------------------------------------------------------------------- checkpoints and their extras


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


def base_lora_spec(ckpt: Path) -> dict[str, Any] | None:
    """The peft LoRA settings of ``base_lora.safetensors`` (from base_lora.json or the run's recipe.yaml)."""
    if not (ckpt / BASE_LORA).is_file():
        return None
    if (ckpt / BASE_LORA_SPEC).is_file():
        return json.loads((ckpt / BASE_LORA_SPEC).read_text())
    recipe = find_recipe(ckpt)
    lora = (yaml.safe_load(recipe.read_text()) or {}).get("trainable", {}).get("lora") if recipe else None
    if not lora:
        raise MythicError(
            f"{ckpt} has {BASE_LORA} but no {BASE_LORA_SPEC} or {RECIPE} (here or in its parent) "
            "with trainable.lora saying its rank and alpha"
        )
    from mythic.train.recipe import Lora

    return Lora(**lora).model_dump()


def attach_base_lora(model: MythicForCausalLM, folder: Path, spec: dict[str, Any]) -> Any:
    """Inject the peft LoRA ``spec`` into the model's base and load its tensors strictly; returns the tuner."""
    from peft import LoraModel

    config = lora_config(spec)
    tuner = LoraModel(model.base, config, "default")
    tensors = load_file(folder / BASE_LORA)
    params = {name: p for name, p in model.named_parameters() if "lora_" in name}
    if set(params) != set(tensors):
        missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise MythicError(
            f"{folder / BASE_LORA} does not fit the LoRA its recipe describes: "
            f"missing {missing[:2]}, unexpected {extra[:2]}"
        )
    with torch.no_grad():
        for name, param in params.items():
            if tuple(tensors[name].shape) != tuple(param.shape):
                raise MythicError(f"{folder / BASE_LORA}: {name} has shape {tuple(tensors[name].shape)}")
            param.copy_(tensors[name])
    return tuner


# ----------------------------------------------------------------------------- model card


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k, v in row.items() if not isinstance(v, dict | list)))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def eval_table(data: Any) -> str:
    """A markdown table of an eval JSON: a list of rows, a dict of rows, or a dict of numbers."""
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return _markdown_table(data)
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        return _markdown_table([{"": key, **row} for key, row in data.items()])
    if isinstance(data, dict):
        flat = {k: v for k, v in data.items() if not isinstance(v, dict | list)}
        return _markdown_table([{"metric": k, "value": v} for k, v in flat.items()])
    return f"```\n{json.dumps(data, indent=2)}\n```"


def model_card(
    config: MythicConfig,
    *,
    base_repo: str | None,
    base_commit: str | None,
    kind: str,
    recipe: Path | None,
    evals: list[Path],
    merged_lora: bool,
) -> str:
    """README.md: base, recurrence settings, how to load, the recipe and the eval tables when present."""
    block = f"{config.block_start}:{config.block_end}"
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation"]
    if base_repo:
        front.append(f"base_model: {base_repo}")
    front += ["tags:", "- mythic", "- recurrent-depth", "---", ""]
    body = [
        f"# {(base_repo or str(config.base_name_or_path)).rsplit('/', 1)[-1]} with recurrent depth (mythic)",
        "",
        f"Layers {block} (half-open) of the base run `n_loops` times with the `{config.rule}` update rule; "
        "`n_loops=1` computes the base model.",
        "",
        "| | |",
        "|---|---|",
        f"| base | {base_repo or config.base_name_or_path} |",
        f"| base revision | {base_commit or config.base_revision or 'unknown'} |",
        f"| looped block | {block} |",
        f"| update rule | {config.rule} |",
        f"| trained loops (max_loops) | {config.max_loops} |",
        f"| default n_loops | {config.n_loops} |",
        f"| Depth-LoRA rank / alpha | {config.lora_rank} / {config.lora_alpha} |",
        f"| base LoRA merged | {'yes' if merged_lora else 'no'} |",
        "",
        "## Use",
        "",
    ]
    if kind == "full":
        body += [
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER_OR_REPO", trust_remote_code=True)',
            'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER_OR_REPO")',
            'ids = tokenizer("def fib(n):", return_tensors="pt").input_ids',
            "out = model.generate(ids, max_new_tokens=64, do_sample=False, n_loops=4)",
            "```",
            "",
            "`modeling_mythic.py` holds the whole model (generated from mythic's source); "
            "only transformers is needed. GGUF / llama.cpp cannot run it: llama.cpp has no recurrent-depth support.",
        ]
    else:
        body += [
            "A light export: only the recurrence (and LoRA) weights. Fetch the base named in `base.json`, then:",
            "",
            "```python",
            "from mythic.export import load_light",
            "",
            'model = load_light("THIS_FOLDER", base_dir="base/FOLDER")',
            "```",
        ]
    if recipe is not None:
        body += ["", "## Recipe", "", "```yaml", recipe.read_text().rstrip(), "```"]
    for path in evals:
        body += ["", f"## Evaluation: {path.name}", "", eval_table(json.loads(path.read_text()))]
    return "\n".join(front + body) + "\n"


# ----------------------------------------------------------------------------- export


def parse_dtype(text: str) -> str:
    name = DTYPE_ALIASES.get(text, text)
    if name not in DTYPES:
        raise MythicError(f"--dtype must be one of {', '.join([*DTYPES, *DTYPE_ALIASES])}, got {text!r}")
    return name


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
    step = progress or (lambda _: None)
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
        model = load_checkpoint(ckpt, dtype=DTYPES[dtype])
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


def load_light(folder: Path, base_dir: Path | None = None, dtype: str = "float32") -> MythicForCausalLM:
    """A light export on top of a fetched base: ``base_dir``, else the folder it was made from if present."""
    folder = Path(folder)
    if not (folder / BASE_POINTER).is_file():
        raise MythicError(f"{folder} is not a light export (no {BASE_POINTER})")
    pointer = json.loads((folder / BASE_POINTER).read_text())
    config = MythicConfig.from_pretrained(folder)
    where = Path(base_dir) if base_dir is not None else Path(pointer.get("local_path") or "")
    wanted = f"{pointer.get('repo_id') or 'the base'} at revision {pointer.get('commit') or pointer['base_revision']}"
    if not (where / "config.json").is_file():
        raise MythicError(f"light export {folder} needs {wanted}: fetch it and pass its folder as base_dir")
    found = base_revision(where)
    if pointer.get("base_revision") and found and found != pointer["base_revision"]:
        raise MythicError(f"light export {folder} needs {wanted}, but {where} is revision {found}")
    model = load_on_base(folder, config, where, parse_dtype(dtype))
    spec = base_lora_spec(folder)
    if spec is not None:
        attach_base_lora(model, folder, spec)
    return model.eval()


# ----------------------------------------------------------------------------- push


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """Silence huggingface_hub's upload progress bars (the library never prints)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def push_to_hub(folder: Path, repo_id: str, *, private: bool | None = None) -> PushReport:
    """Create ``repo_id`` if needed and upload ``folder`` as one commit; errors become one-line MythicErrors."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise MythicError(f"--push-to-hub takes a repo id (owner/name), got {repo_id!r}") from err
    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint)
    try:
        with _quiet_hub():
            url = api.create_repo(repo_id, exist_ok=True, repo_type="model", private=private)
            info = api.upload_folder(
                repo_id=repo_id, folder_path=folder, commit_message=f"mythic export ({folder.name})"
            )
    except (HfHubHTTPError, httpx2.TransportError, ValueError, RuntimeError) as err:
        message = " ".join(str(err).split())
        raise MythicError(f"push of {folder} to {repo_id} at {endpoint} failed ({message})") from err
    return PushReport(repo_id, str(url), str(info.oid), sum(1 for p in folder.rglob("*") if p.is_file()))
