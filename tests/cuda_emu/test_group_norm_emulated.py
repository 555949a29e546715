"""The CUDA group_norm kernels run on the host emulator (no GPU needed), against float64.

tests/cuda_emu/run_group_norm.sh compiles csrc/cuda/group_norm.cuh with FASTDIFF_GN_EMULATE, where
__syncthreads is the emulator's block barrier, and runs forward and backward in NCHW and
channels-last, with and without SiLU, on groups spanning several partial blocks (group_norm_emu_test.cpp).
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


def test_cuda_group_norm_kernels_match_float64_on_the_emulator(tmp_path):
    run = subprocess.run([str(HERE / "run_group_norm.sh")], capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "OUT": str(tmp_path)})
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert "0 failed" in run.stdout and "FAIL" not in run.stdout, report
