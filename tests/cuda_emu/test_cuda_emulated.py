"""Every CUDA kernel family runs on the host emulator (no GPU needed), against float64 references.

tests/cuda_emu/run.sh builds one program per family (tests/cuda_emu/<family>_emu_test.cpp) with
AddressSanitizer and UBSan, from csrc/cuda compiled as host C++ (cuda_host.h, hostify.py; the
attention kernels through their emulated warp primitives), and runs every case: odd sizes, storage
misaligned by one element, rows longer than one block, grids past their caps, three storage types,
outputs poisoned with NaN so an unwritten element fails. Slow: building a family takes from a few
seconds to a minute or two of CPU time.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
FAMILIES = sorted(p.name.removesuffix("_emu_test.cpp") for p in HERE.glob("*_emu_test.cpp"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="needs a C++ compiler"),
    pytest.mark.skipif(not (CUDA_HOME / "include" / "cuda_fp16.h").exists(), reason="needs the CUDA headers"),
]


def test_every_cuda_kernel_file_has_an_emulator_program():
    # csrc/cuda/<name>.cu is family <name> (attention_*.cu: family attention).
    for path in sorted((HERE.parents[1] / "csrc" / "cuda").glob("*.cu")):
        family = "attention" if path.stem.startswith("attention") else path.stem
        assert family in FAMILIES, f"csrc/cuda/{path.name} has no tests/cuda_emu/{family}_emu_test.cpp"


def test_cuda_kernels_match_float64_on_the_emulator():
    # One run for every family: run.sh builds the programs two at a time and runs each program's
    # cases as two parallel shards (CI has 2 cores).
    env = dict(os.environ, SANITIZE="1")
    run = subprocess.run([str(HERE / "run.sh")], capture_output=True, text=True, timeout=3600, env=env)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    for family in FAMILIES:
        assert f"== {family}\n" in run.stdout, report
    assert not re.search(r"\b[1-9][0-9]* failed;", run.stdout), report
