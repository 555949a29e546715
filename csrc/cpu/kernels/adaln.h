// Torch-free CPU kernels of the adaln family (adaln_modulate, gated_residual, gated_residual_adaln,
// forward and backward). Compiled once per ISA like kernels.h; csrc/cpu/adaln.cpp threads the calls.
// All tensors are contiguous and share one dtype, except the float32 statistics and partial sums.
#pragma once

#include <cstdint>

#include "dtype.h"

namespace fastdiff::cpu {

// One call's tensors. x and every (B, N, D) tensor are rows r = b*N + n of length D; a modulation
// tensor is read at row b (per sample, (B, D)) or r (per token, (B, N, D)). Unused pointers are null.
struct AdalnArgs {
  DType dtype;
  int64_t batch, tokens, dim;  // B, N, D
  float eps;
  bool rms;                    // RMSNorm (mean taken as 0) instead of LayerNorm
  const void* x;               // forward: the input; backward: x (modulate) or x_out (fused)
  const void* shift;
  bool shift_per_token;        // in the backward: whether grad_shift is per token
  const void* scale;
  bool scale_per_token;
  const void* gate;            // gated residual ops
  bool gate_per_token;
  const void* h;
  const void* weight;          // (D,) or null
  const void* bias;            // (D,) or null
  float* mean;                 // (B*N) float32: written by the forwards, read by the backwards
  float* rstd;
  void* x_out;                 // fused forward: x + gate*h
  void* out;                   // forward result
  const void* grad_out;        // backward: gradient of out
  const void* grad_x_out;      // fused backward: gradient of x_out
  void* grad_x;
  void* grad_h;
  void* grad_gate;             // written here when per token, else summed into the partials
  void* grad_shift;            // idem
  void* grad_scale;            // idem
};

// Partial sums of one chunk of rows (all of one sample), kAdalnPartials arrays of D floats each.
enum AdalnPartial : int { kPartShift = 0, kPartScale, kPartWeight, kPartBias, kPartGate, kAdalnPartials };

#define FASTDIFF_ADALN_DECLARE(isa)                                                                        \
  namespace isa {                                                                                          \
  /* Rows [r0, r1): adaln_modulate, or gated_residual_adaln when a.h is set. Writes out (+ x_out), mean, rstd. */ \
  void adaln_forward(const AdalnArgs& a, int64_t r0, int64_t r1);                                          \
  /* Rows [r0, r1): out = x + gate * h. */                                                                 \
  void gated_residual_forward(const AdalnArgs& a, int64_t r0, int64_t r1);                                 \
  /* Rows [r0, r1) of one sample: the modulate (or, a.h set, fused) backward. Writes grad_x (+ grad_h) and  \
     the per-token gradients; sums the per-sample / parameter gradients of these rows into partial        \
     (kAdalnPartials x D floats, zeroed here; only the arrays this call needs are touched). */             \
  void adaln_backward(const AdalnArgs& a, int64_t r0, int64_t r1, float* partial);                         \
  /* Rows [r0, r1) of one sample: grad_h = g * gate; grad_gate per token, or summed into partial. */       \
  void gated_residual_backward(const AdalnArgs& a, int64_t r0, int64_t r1, float* partial);                \
  /* out[j] = sum_{i < count} src[i * stride + j] for j in [j0, j1), summed in order of i. */              \
  void sum_strided(const float* src, int64_t stride, int64_t count, int64_t j0, int64_t j1, float* out);   \
  }

FASTDIFF_ADALN_DECLARE(base)
FASTDIFF_ADALN_DECLARE(avx2)
#undef FASTDIFF_ADALN_DECLARE

}  // namespace fastdiff::cpu
