"""The CUDA geglu kernels run on the host emulator (no GPU needed), against float64.

`EMU_TEST=geglu tests/cuda_emu/run.sh` compiles csrc/cuda/geglu_kernels.cuh as plain C++ (FASTDIFF_CUDA_EMULATE)
and runs forward and backward of every dtype and GELU form, on the 16-byte and the scalar path,
against a float64 reference, with poisoned outputs and guard bands (geglu_emu_test.cpp).
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))

pytestmark = [
    pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="needs a C++ compiler"),
    pytest.mark.skipif(not (CUDA_HOME / "include" / "cuda_fp16.h").exists(), reason="needs the CUDA headers"),
]


def test_cuda_geglu_kernels_match_float64_on_the_emulator():
    env = {**os.environ, "EMU_TEST": "geglu"}
    run = subprocess.run([str(HERE / "run.sh")], capture_output=True, text=True, timeout=1800, env=env)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert " 0 failed" in run.stdout and " 36 passed" in run.stdout, report
