"""The package's layering: the model code stands alone, below training, evaluation and export."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    ["mythic.models", "mythic.models.retrofit", "mythic.models.openmythos", "mythic.recurrence", "mythic.lora"],
)
def test_model_code_loads_no_training_evaluation_or_export(module: str) -> None:
    script = (
        f"import sys, {module}\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['mythic', 'train'], ['mythic', 'eval'], ['mythic', 'export'], ['mythic', 'lab'], ['mythic', 'cli']))))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing {module} loads {out.stdout.strip()}"
