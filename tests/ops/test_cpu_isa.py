"""The CPU kernels are compiled twice (base and avx2) and dispatched by CPUID; FASTDIFF_CPU_ISA=base
forces the base build, so its loops are checked here on machines that would always take avx2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastdiff._C as C

ROOT = Path(__file__).resolve().parents[2]
CPU_KERNEL_TESTS = ["test_group_norm.py", "test_geglu.py", "test_adaln.py", "test_guidance.py", "test_sampler_update.py",
                    "test_attention_cpu.py",
                    "test_cpu_threading.py"]


def _run(code: str, **env) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_variable_forces_the_base_build_and_nothing_else_does():
    assert _run("import fastdiff._C as c; print(c.cpu_isa())", FASTDIFF_CPU_ISA="base") == "base"
    assert _run("import fastdiff._C as c; print(c.cpu_isa())", FASTDIFF_CPU_ISA="") == C.cpu_isa()


@pytest.mark.skipif(C.cpu_isa() == "base", reason="this machine runs the base build anyway")
def test_the_base_build_passes_the_cpu_kernel_tests():
    files = [str(Path(__file__).parent / f) for f in CPU_KERNEL_TESTS]
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "not triton and not cuda",
                          *files], cwd=ROOT, env={**os.environ, "FASTDIFF_CPU_ISA": "base"}, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and " failed" not in out.stdout
