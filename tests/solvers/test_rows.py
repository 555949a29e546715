"""The coefficient-row layout and the prediction-type conversions are defined once in Python
(fastdiff/solvers/rows.py) and once in C++ (csrc/sampler_row.h): compile the header and compare."""

import math
import pathlib
import shutil
import subprocess

import pytest

from fastdiff.solvers import rows

HEADER_DIR = pathlib.Path(__file__).resolve().parents[2] / "csrc"
LEVELS = [(1.0, 0.0), (0.8, 0.6), (0.3, 0.95), (1e-3, 1.0), (0.5, 0.5)]

PROGRAM = r"""
#include <cstdio>
#include "sampler_row.h"
using namespace fastdiff::row;
int main() {
  std::printf("layout %d %d %d %d %d %d %d %ld\n", kA, kB, kCX, kCD, kCZ, kSlot, kHistory, length(3));
  const double levels[][2] = {LEVELS};
  for (int p = 0; p < 4; ++p)
    for (const auto& l : levels) {
      Conversion x = x0_conversion(static_cast<Prediction>(p), l[0], l[1]);
      Conversion e = eps_conversion(static_cast<Prediction>(p), l[0], l[1]);
      std::printf("conv %d %.17g %.17g %.17g %.17g %.17g %.17g\n", p, l[0], l[1], x.a, x.b, e.a, e.b);
    }
}
"""


@pytest.fixture(scope="module")
def cpp_output(tmp_path_factory):
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    d = tmp_path_factory.mktemp("rows")
    levels = ", ".join(f"{{{a!r}, {s!r}}}" for a, s in LEVELS)
    (d / "main.cpp").write_text(PROGRAM.replace("LEVELS", levels))
    subprocess.run([cxx, "-std=c++17", "-I", str(HEADER_DIR), str(d / "main.cpp"), "-o", str(d / "main")], check=True)
    return subprocess.run([str(d / "main")], check=True, capture_output=True, text=True).stdout.splitlines()


def test_the_row_layout_agrees(cpp_output):
    layout = [int(v) for v in cpp_output[0].split()[1:]]
    assert layout == [rows.A, rows.B, rows.CX, rows.CD, rows.CZ, rows.SLOT, rows.HISTORY, rows.row_length(3)]
    assert rows.COLUMNS == ("a", "b", "c_x", "c_d", "c_z", "slot") and len(rows.COLUMNS) == rows.HISTORY


def test_the_prediction_type_conversions_agree(cpp_output):
    lines = [line.split()[1:] for line in cpp_output[1:]]
    assert len(lines) == len(rows.PREDICTION_TYPES) * len(LEVELS)
    for p, alpha, sigma, xa, xb, ea, eb in lines:
        kind = rows.PREDICTION_TYPES[int(p)]
        alpha, sigma = float(alpha), float(sigma)
        if not (kind == "sample" and sigma == 0.0):  # eps from a sample prediction at sigma 0: no value
            assert rows.eps_conversion(kind, alpha, sigma) == pytest.approx((float(ea), float(eb)), rel=1e-15)
        assert rows.x0_conversion(kind, alpha, sigma) == pytest.approx((float(xa), float(xb)), rel=1e-15)


def test_epsilon_at_zero_snr_has_no_x0():
    with pytest.raises(ValueError, match="zero SNR"):
        rows.x0_conversion("epsilon", 0.0, 1.0)
    assert math.isfinite(rows.x0_conversion("v_prediction", 0.0, 1.0)[0])


def test_unknown_prediction_type_is_refused():
    with pytest.raises(ValueError, match="prediction_type expected one of"):
        rows.check_prediction_type("velocity")
    assert rows.check_prediction_type("flow") == "flow_prediction"
