"""The coefficient row that `fastdiff.ops.sampler_update` reads, and the prediction-type conversions
that fill its first two entries: defined here once for Python, once in csrc/sampler_row.h for the
C++ and CUDA kernels (tests/solvers/test_rows.py checks that the two agree).

A row is ``[a, b, c_x, c_d, c_z, slot, c_h0, ..., c_h{K-1}]``: the model output m becomes
``d = a x + b m`` (usually the x0 prediction), the step is ``x_next = c_x x + c_d d + sum_k c_hk h_k
+ c_z z`` and ``d`` is written to history slot ``slot`` (-1: no write).
"""

from __future__ import annotations

from typing import Sequence

#: Index of each scalar in a coefficient row; history coefficients follow at HISTORY.
A, B, CX, CD, CZ, SLOT, HISTORY = range(7)
#: the names of the fixed columns, in order (the C++ header lists the same)
COLUMNS = ("a", "b", "c_x", "c_d", "c_z", "slot")

#: model output types a row can convert (flow_prediction: m = eps - x0 at x = (1 - s) x0 + s eps)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow_prediction")


def row_length(history_len: int) -> int:
    return HISTORY + history_len


def check_prediction_type(prediction_type: str, allowed: Sequence[str] = PREDICTION_TYPES) -> str:
    if prediction_type == "flow":
        prediction_type = "flow_prediction"
    if prediction_type not in allowed:
        raise ValueError(f"fastdiff: prediction_type expected one of {tuple(allowed)}, got {prediction_type!r}")
    return prediction_type


def x0_conversion(prediction_type: str, alpha: float, sigma: float) -> tuple[float, float]:
    """(a, b) with x0 = a x + b m at x = alpha x0 + sigma eps (flow: alpha = 1 - s, sigma = s)."""
    if prediction_type == "epsilon":
        if alpha == 0.0:
            raise ValueError("fastdiff: an epsilon model cannot predict x0 at zero SNR (alpha = 0); "
                             "clamp the last cumulative alpha (rescale_betas_zero_snr does) or use v_prediction")
        return 1.0 / alpha, -sigma / alpha
    if prediction_type == "v_prediction":
        return alpha, -sigma
    if prediction_type == "sample":
        return 0.0, 1.0
    if prediction_type == "flow_prediction":  # m = eps - x0
        return 1.0, -sigma
    raise ValueError(f"fastdiff: prediction_type expected one of {PREDICTION_TYPES}, got {prediction_type!r}")


def eps_conversion(prediction_type: str, alpha: float, sigma: float) -> tuple[float, float]:
    """(a, b) with eps = a x + b m."""
    if prediction_type == "epsilon":
        return 0.0, 1.0
    if prediction_type == "v_prediction":
        return sigma, alpha
    if prediction_type == "sample":
        return 1.0 / sigma, -alpha / sigma
    if prediction_type == "flow_prediction":
        return 1.0, alpha
    raise ValueError(f"fastdiff: prediction_type expected one of {PREDICTION_TYPES}, got {prediction_type!r}")
