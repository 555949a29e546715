// Torch-free CPU kernels of the adaln family (adaln_modulate, gated_residual, gated_residual_adaln,
// forward and backward). Compiled once per ISA like kernels.h; csrc/cpu/adaln.cpp threads the calls.
// They take the parameter structs of csrc/adaln_args.h, the ones the CUDA launchers take.
#pragma once

#include <cstdint>

#include "adaln_args.h"

namespace fastdiff::cpu {

// Partial sums of one chunk of rows (all of one sample), kAdalnPartials arrays of D floats each.
enum AdalnPartial : int { kPartShift = 0, kPartScale, kPartWeight, kPartBias, kPartGate, kAdalnPartials };

#define FASTDIFF_ADALN_DECLARE(isa)                                                                         \
  namespace isa {                                                                                           \
  /* Rows [r0, r1): adaln_modulate, or gated_residual_adaln when a.h is set. Writes out (+ x_out), mean, rstd. */ \
  void adaln_forward(const AdalnForwardArgs& a, int64_t r0, int64_t r1);                                    \
  /* Rows [r0, r1): out = x + gate * h. */                                                                  \
  void gated_residual_forward(const GatedResidualArgs& a, int64_t r0, int64_t r1);                          \
  /* Rows [r0, r1) of one sample: the modulate (or, a.h set, fused) backward. Writes grad_x (+ grad_h) and  \
     the per-token gradients; sums the per-sample / parameter gradients of these rows into partial          \
     (kAdalnPartials x D floats, zeroed here; only the arrays this call needs are touched). */              \
  void adaln_backward(const AdalnBackwardArgs& a, int64_t r0, int64_t r1, float* partial);                  \
  /* Rows [r0, r1) of one sample: grad_h = g * gate; grad_gate per token, or summed into partial. */        \
  void gated_residual_backward(const GatedResidualArgs& a, int64_t r0, int64_t r1, float* partial);         \
  /* out[j] = sum_{i < count} src[i * stride + j] for j in [j0, j1), summed in order of i. */               \
  void sum_strided(const float* src, int64_t stride, int64_t count, int64_t j0, int64_t j1, float* out);    \
  }

FASTDIFF_ADALN_DECLARE(base)
FASTDIFF_ADALN_DECLARE(avx2)
#undef FASTDIFF_ADALN_DECLARE

}  // namespace fastdiff::cpu
