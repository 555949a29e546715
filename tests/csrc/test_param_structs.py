"""The parameter structs in csrc/<family>_args.h: torch-free, and the one type both backends take.

Compile-only checks with the host C++ compiler; the CUDA launcher headers need the CUDA toolkit's
headers (cuda_runtime.h), found as scripts/check_cuda_bindings.sh finds them.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
CXX = os.environ.get("CXX", "g++")

pytestmark = pytest.mark.skipif(shutil.which(CXX) is None, reason="needs a C++ compiler")


def _cuda_include() -> str | None:
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    candidates = [os.path.join(os.environ.get("CUDA_HOME", ""), "include"),
                  os.path.join(os.path.dirname(os.path.realpath(nvcc)), "..", "include"),
                  "/usr/local/cuda/include", *glob.glob("/usr/local/cuda-*/include")]
    return next((c for c in candidates if os.path.isfile(os.path.join(c, "cuda_runtime.h"))), None)


def _syntax_check(source: Path, *includes: str) -> subprocess.CompletedProcess:
    cmd = [CXX, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-I", str(CSRC)]
    for inc in includes:
        cmd += ["-isystem", inc]
    return subprocess.run([*cmd, str(source)], capture_output=True, text=True, timeout=120)


# csrc/torch_args.h is the torch side's dtype helper, not a family's parameters.
ARGS_HEADERS = sorted(p for p in CSRC.glob("*_args.h") if p.name != "torch_args.h")


def test_every_family_has_a_parameter_header():
    names = {p.name for p in ARGS_HEADERS}
    assert {"guidance_args.h", "sampler_update_args.h", "adaln_args.h"} <= names


@pytest.mark.parametrize("header", [p.name for p in ARGS_HEADERS])
def test_parameter_headers_need_neither_torch_nor_cuda(header, tmp_path):
    """Only csrc/ is on the include path: a header that pulled in ATen or cuda_runtime.h fails here."""
    src = tmp_path / "include_only.cpp"
    src.write_text(f'#include "{header}"\n')
    done = _syntax_check(src)
    assert done.returncode == 0, done.stderr


def test_cpu_kernels_and_cuda_launchers_take_the_same_structs():
    cuda = _cuda_include()
    if cuda is None:
        pytest.skip("no CUDA toolkit headers (cuda_runtime.h) found")
    done = _syntax_check(Path(__file__).with_name("same_params.cpp"), cuda)
    assert done.returncode == 0, done.stderr


def test_the_check_fails_when_the_types_differ(tmp_path):
    """The static_asserts have teeth: a CPU kernel taking another struct is a compile error."""
    cuda = _cuda_include()
    if cuda is None:
        pytest.skip("no CUDA toolkit headers (cuda_runtime.h) found")
    src = Path(__file__).with_name("same_params.cpp").read_text()
    broken = tmp_path / "broken.cpp"
    # A look-alike struct with the same fields is still another type.
    broken.write_text(src.replace(
        '#include "cuda/launchers.h"\n',
        '#include "cuda/launchers.h"\nnamespace fastdiff::cpu::base {\nstruct LookAlike : GuidanceParams {};\n'
        'void guidance_combine(const LookAlike&, void*, int64_t, int64_t, int64_t);\n}\n', 1,
    ).replace("decltype(&cpu::base::guidance_combine)", "void (*)(const cpu::base::LookAlike&, void*, int64_t, int64_t, int64_t)"))
    done = _syntax_check(broken, cuda)
    assert done.returncode != 0 and "static assertion failed" in done.stderr
