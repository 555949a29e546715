// The coefficient row of fastdiff::sampler_update and the prediction-type conversions that fill its
// first two entries: the C++/CUDA side of fastdiff/solvers/rows.py (tests/solvers/test_rows.py
// compiles this header and checks that the two agree). Torch-free; usable from .cu files.
//
// Row: [a, b, c_x, c_d, c_z, slot, c_h0 .. c_h{K-1}]: d = a x + b m, x_next = c_x x + c_d d +
// sum_k c_hk h_k + c_z z, history[slot] = d (slot -1: no write).
#pragma once

#include <cmath>
#include <limits>

namespace fastdiff::row {

constexpr int kA = 0, kB = 1, kCX = 2, kCD = 3, kCZ = 4, kSlot = 5;
constexpr int kHistory = 6;  // c_h0 is here; a row with K history slots has kHistory + K entries

constexpr long length(long history_len) { return kHistory + history_len; }

// The model output types, in the order of rows.PREDICTION_TYPES.
enum class Prediction { kEpsilon = 0, kV = 1, kSample = 2, kFlow = 3 };

struct Conversion {
  double a, b;  // converted = a x + b m
};

// x0 = a x + b m at x = alpha x0 + sigma eps (flow: alpha = 1 - s, sigma = s, m = eps - x0). An epsilon
// model at alpha = 0 has no x0: infinite coefficients (the Python side refuses them).
inline Conversion x0_conversion(Prediction p, double alpha, double sigma) {
  switch (p) {
    case Prediction::kEpsilon:
      if (alpha == 0.0) return {std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity()};
      return {1.0 / alpha, -sigma / alpha};
    case Prediction::kV: return {alpha, -sigma};
    case Prediction::kSample: return {0.0, 1.0};
    case Prediction::kFlow: return {1.0, -sigma};
  }
  return {std::nan(""), std::nan("")};
}

// eps = a x + b m.
inline Conversion eps_conversion(Prediction p, double alpha, double sigma) {
  switch (p) {
    case Prediction::kEpsilon: return {0.0, 1.0};
    case Prediction::kV: return {sigma, alpha};
    case Prediction::kSample: return {1.0 / sigma, -alpha / sigma};
    case Prediction::kFlow: return {1.0, alpha};
  }
  return {std::nan(""), std::nan("")};
}

}  // namespace fastdiff::row
