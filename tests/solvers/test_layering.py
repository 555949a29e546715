"""Imports run one way, down (DESIGN.md): fastdiff.solvers is the bottom of the sampling stack and
imports neither fastdiff.samplers, fastdiff.schedulers nor diffusers; the samplers' modules do not
import each other in a circle and do not need fastdiff.schedulers (or diffusers)."""

import ast
import pathlib
import subprocess
import sys

PKG = pathlib.Path(__file__).resolve().parents[2] / "fastdiff"


def imports_of(path: pathlib.Path) -> set[str]:
    """Absolute names of the fastdiff modules (and top-level packages) a file imports, anywhere in it."""
    mod = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
    pkg = mod.rsplit(".", 1)[0] if path.name != "__init__.py" else mod.removesuffix(".__init__")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            out.add(name)
            out |= {f"{name}.{a.name}" for a in node.names}
    return out


def test_solvers_import_nothing_above_them():
    for path in (PKG / "solvers").rglob("*.py"):
        for name in imports_of(path):
            assert not name.startswith(("fastdiff.samplers", "fastdiff.schedulers", "diffusers")), (path, name)


def test_samplers_do_not_import_schedulers_or_diffusers():
    for path in (PKG / "samplers").rglob("*.py"):
        for name in imports_of(path):
            assert not name.startswith(("fastdiff.schedulers", "diffusers")), (path, name)


def test_sampler_modules_form_no_circle():
    mods = {p.stem: p for p in (PKG / "samplers").glob("*.py") if p.stem != "__init__"}
    edges = {m: {n.split(".")[2] for n in imports_of(p) if n.startswith("fastdiff.samplers.") and n.split(".")[2] in mods} - {m}
             for m, p in mods.items()}

    def reaches(a, b, seen=()):
        return any(n == b or (n not in seen and reaches(n, b, seen + (n,))) for n in edges[a])

    assert not [m for m in mods if reaches(m, m)], edges


def test_fastdiff_sample_works_without_diffusers():
    # diffusers hidden: fastdiff, fastdiff.samplers and fastdiff.sample work
    code = """
import sys
sys.modules["diffusers"] = None
import torch, fastdiff
x = fastdiff.sample(lambda x, t: 0.1 * x, torch.randn(1, 4, 8, 8), sampler="dpmpp_2m", steps=4)
assert x.shape == (1, 4, 8, 8) and torch.isfinite(x).all()
assert "diffusers" not in [m for m in sys.modules if sys.modules[m] is not None]
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
