"""The op layer's seams, checked on the source: op families share helpers through ops/_common.py,
never through each other's private names, and the benchmarks use only public or `_backend` APIs."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "fastdiff"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """(absolute module, imported name) of every `from ... import ...` in the file."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                yield module, alias.name


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_op_families_share_no_private_names():
    bad = []
    for path in PKG.rglob("*.py"):
        me = _module_name(path)
        for module, name in _imports(path):
            family_module = module.startswith("fastdiff.ops.") and module != "fastdiff.ops._common"
            if family_module and module != me and _private(name):
                bad.append(f"{me} imports {module}.{name}")
    assert not bad, "move shared helpers to fastdiff/ops/_common.py:\n" + "\n".join(bad)


def test_benchmarks_use_only_public_or_backend_apis():
    bad = []
    for path in (PKG / "bench").glob("*.py"):
        me = _module_name(path)
        for module, name in _imports(path):
            if module.startswith("fastdiff.bench") or module == "fastdiff._backend" or (module, name) == ("fastdiff", "_backend"):
                continue
            if _private(name) or any(_private(part) for part in module.split(".")):
                bad.append(f"{me} imports {module}.{name}")
            elif module.startswith("fastdiff.ops."):
                bad.append(f"{me} imports {module}.{name} (use fastdiff.ops or fastdiff._backend)")
    assert not bad, "\n".join(bad)
