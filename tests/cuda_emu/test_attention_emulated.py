"""The CUDA attention kernels run on the host emulator (no GPU needed), against float64.

tests/cuda_emu/run.sh compiles csrc/cuda/attention_kernels.cuh with FASTDIFF_ATTN_EMULATE, where
each warp primitive (ldmatrix, mma.sync, cp.async, shuffles, barriers) is implemented on the host
from its PTX specification, and runs every compiled head-dim width, both forward paths and the
backward against a float64 reference (see attention_emu_test.cpp). Slow: the build alone takes
about a minute of CPU time.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="needs a C++ compiler"),
    pytest.mark.skipif(not (CUDA_HOME / "include" / "cuda_fp16.h").exists(), reason="needs the CUDA headers"),
]


def test_cuda_attention_kernels_match_float64_on_the_emulator():
    run = subprocess.run([str(HERE / "run.sh")], capture_output=True, text=True, timeout=3600)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert " 0 failed" in run.stdout, report
