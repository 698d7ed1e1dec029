"""The generated modeling file: mythic's own model source, bundled into one file.

A ``Bundle`` names what a model kind exports: its root module, the modeling file and the two classes
``auto_map`` points at (``RETROFIT``: ``modeling_mythic.py``, ``RetrofitConfig`` / ``RetrofitForCausalLM``;
``OPENMYTHOS``: ``modeling_openmythos.py``, ``OpenMythosConfig`` / ``OpenMythosForCausalLM``).
``bundle_source`` keeps ONE implementation of every mechanism: it concatenates the source files of the
root module and of the mythic modules it imports at module level, dependencies first, and only edits
imports and registrations: imports of bundled modules are removed (their names are defined above),
type-checking-only imports and the module-level ``Auto*.register`` calls are dropped (``auto_map`` does
that job; registering twice would clash with an installed mythic), and the custom operators' namespace
``mythic::`` becomes ``mythic_export::`` (so an export and an installed mythic load in one process).

The file is generated at every export, never committed, so it cannot go stale. The bundler refuses,
naming file and line, the import forms it cannot rewrite: ``import mythic.x`` (with or without ``as``),
relative imports, ``from mythic.pkg import submodule``, and an import inside a function of a mythic
module that is not bundled; and two bundled modules binding one top-level name differently.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
from dataclasses import dataclass
from pathlib import Path

import mythic

OPS_NAMESPACE, EXPORT_OPS_NAMESPACE = '"mythic::', '"mythic_export::'


@dataclass(frozen=True)
class Bundle:
    """What one model kind exports: the root module bundled, the modeling file and its two classes."""

    root: str
    file: str
    config: str
    model: str

    @property
    def auto_map(self) -> dict[str, str]:
        stem = self.file.removesuffix(".py")
        return {"AutoConfig": f"{stem}.{self.config}", "AutoModelForCausalLM": f"{stem}.{self.model}"}


RETROFIT = Bundle("mythic.models.retrofit", "modeling_mythic.py", "RetrofitConfig", "RetrofitForCausalLM")
OPENMYTHOS = Bundle(
    "mythic.models.openmythos.hf", "modeling_openmythos.py", "OpenMythosConfig", "OpenMythosForCausalLM"
)


def _is_mythic(module: str | None) -> bool:
    return module is not None and (module == "mythic" or module.startswith("mythic."))


def _module_source(name: str) -> str:
    return inspect.getsource(importlib.import_module(name))


def _is_submodule(module: str, name: str) -> bool:
    package = importlib.import_module(module)
    return hasattr(package, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None


def check_import_forms(name: str, tree: ast.Module) -> None:
    """Refuse the mythic imports the bundler cannot rewrite: ``import mythic.x [as y]``, a relative
    import, and ``from mythic.pkg import submodule`` (their names would be used as ``y.attr``)."""
    for node in ast.walk(tree):
        where = f"bundling mythic: {name} line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import) and any(_is_mythic(alias.name) for alias in node.names):
            raise RuntimeError(f"{where}: `import {node.names[0].name}` (write `from {node.names[0].name} import ...`)")
        if isinstance(node, ast.ImportFrom) and node.level:
            raise RuntimeError(f"{where}: a relative import (write `from mythic.... import ...`)")
        if isinstance(node, ast.ImportFrom) and _is_mythic(node.module):
            for alias in node.names:
                if _is_submodule(str(node.module), alias.name):
                    raise RuntimeError(
                        f"{where}: `from {node.module} import {alias.name}` imports a module "
                        f"(write `from {node.module}.{alias.name} import ...`)"
                    )


def bundle_order(root: str = RETROFIT.root) -> list[str]:
    """``root`` and the mythic modules it imports at module level, each after its dependencies;
    every one checked by ``check_import_forms``."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        tree = ast.parse(_module_source(name))
        check_import_forms(name, tree)
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and _is_mythic(node.module):
                visit(str(node.module))
        order.append(name)

    visit(root)
    return order


def _dropped(node: ast.stmt, bundled: set[str], top: bool, name: str) -> bool:
    """Whether one statement is edited out (see the module docstring)."""
    if isinstance(node, ast.ImportFrom) and _is_mythic(node.module) and node.module not in bundled:
        raise RuntimeError(f"bundling mythic: {name} line {node.lineno} imports {node.module}, which is not bundled")
    if isinstance(node, ast.ImportFrom) and (node.module == "__future__" or _is_mythic(node.module)):
        return True
    if (
        top
        and isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
        and all(isinstance(n, ast.ImportFrom) and _is_mythic(n.module) for n in node.body)
    ):
        return True
    return (
        top
        and isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Attribute)
        and node.value.func.attr == "register"
    )


def _strip(source: str, bundled: set[str], name: str) -> str:
    """``source`` with its mythic imports and registrations edited out; emptied blocks get ``pass``."""
    tree = ast.parse(source)
    edits: list[tuple[int, int, str]] = []
    for parent in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            body = getattr(parent, field, None)
            if not isinstance(body, list) or not body or not isinstance(body[0], ast.stmt):
                continue
            dropped = [node for node in body if _dropped(node, bundled, parent is tree, name)]
            texts = [""] * len(dropped)
            if len(dropped) == len(body) and parent is not tree:
                texts[0] = " " * body[0].col_offset + "pass\n"
            edits += [(n.lineno, n.end_lineno or n.lineno, text) for n, text in zip(dropped, texts, strict=True)]
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


def bundle_source(bundle: Bundle = RETROFIT) -> str:
    """The self-contained modeling file of ``bundle``: see the module docstring."""
    order = bundle_order(bundle.root)
    files = [
        Path(importlib.import_module(name).__file__ or name).relative_to(Path(mythic.__file__).parent.parent)
        for name in order
    ]
    header = (
        f'"""{bundle.config} and {bundle.model}, self-contained: generated by `mythic export` (mythic '
        f"{mythic.__version__}).\n\nThe sections below are these files of mythic, in this order, verbatim except for "
        "their imports\nof each other (the names are defined above their use):\n\n"
        + "".join(f"    {f.as_posix()}\n" for f in files)
        + '\nDo not edit: export again instead.\n"""\n\nfrom __future__ import annotations\n'
    )
    sections = [
        f"\n\n# {'=' * 20} {path.as_posix()} {'=' * 20}\n\n"
        + _strip(_module_source(name), set(order), name).strip()
        + "\n"
        for name, path in zip(order, files, strict=True)
    ]
    source = (header + "".join(sections)).replace(OPS_NAMESPACE, EXPORT_OPS_NAMESPACE)
    _check_unique_names(source)
    return source
