"""The package's layering: the model code stands alone, below training, evaluation and export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tiny import save_tiny_base

from mythic.surgery import surgery

UPPER_LAYERS = (
    "import sys\n"
    "print(' '.join(sorted(m for m in sys.modules if m.split('.')[:2] in "
    "(['mythic', 'train'], ['mythic', 'eval'], ['mythic', 'export'], ['mythic', 'lab'], ['mythic', 'cli']))))"
)
"""Prints the loaded modules of the layers above the model code: training, evaluation, export, lab, CLI."""


@pytest.mark.parametrize(
    "module",
    [
        "mythic.models",
        "mythic.models.retrofit",
        "mythic.models.openmythos",
        "mythic.recurrence",
        "mythic.lora",
        "mythic.loading",
    ],
)
def test_model_code_loads_no_training_evaluation_or_export(module: str) -> None:
    out = subprocess.run([sys.executable, "-c", f"import {module}\n{UPPER_LAYERS}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing {module} loads {out.stdout.strip()}"


def test_loading_a_checkpoint_loads_no_training_evaluation_or_export(tmp_path: Path) -> None:
    save_tiny_base(tmp_path / "base", "llama")
    surgery(tmp_path / "base", tmp_path / "ckpt", block=(2, 4), max_loops=2)
    script = (
        "from mythic.models.retrofit import MythicForCausalLM\n"
        f"MythicForCausalLM.from_pretrained({str(tmp_path / 'ckpt')!r})\n{UPPER_LAYERS}"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"loading a checkpoint loads {out.stdout.strip()}"
