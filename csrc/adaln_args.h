// The parameters of the adaln kernels (adaln_modulate, gated_residual, gated_residual_adaln, forward and
// backward; semantics in the adaln block of csrc/ops.cpp), torch-free: the structs that both the C++ CPU
// kernels (csrc/cpu/kernels/adaln.h) and the CUDA launchers (csrc/cuda/adaln.h) take. They are filled
// once from tensors, for either backend, by adaln_fill.h; the backends differ only in allocation
// (outputs, workspace) and in how the kernels run.
//
// Layout: every (B, N, D) tensor is contiguous, rows r = b*N + n of length D; a modulation tensor (shift,
// scale, gate) is read at row b when per sample ((B, D)) or at row r when per token ((B, N, D)); weight and
// bias are (D,) or null. All tensors share `dtype` except the float32 statistics mean/rstd ((B*N) floats).
#pragma once

#include <cstdint>

#include "dtype.h"

namespace fastdiff {

// adaln_modulate (gate == h == x_out == null) or gated_residual_adaln (all three set).
struct AdalnForwardArgs {
  DType dtype;
  int64_t batch, tokens, dim;  // B, N, D
  float eps;
  bool rms;                    // RMSNorm (mean stored as 0) instead of LayerNorm
  const void* x;
  const void* gate;            // fused: x_out = x + gate * h
  bool gate_per_token;
  const void* h;
  const void* shift;
  bool shift_per_token;
  const void* scale;
  bool scale_per_token;
  const void* weight;          // (D,) or null
  const void* bias;            // (D,) or null
  void* x_out;                 // fused only
  void* out;
  float* mean;                 // (B*N) float32
  float* rstd;
};

// adaln_modulate_backward (grad_x_out == gate == h == grad_h == null) or gated_residual_adaln_backward.
// grad_shift / grad_scale / grad_gate are (B, N, D) when per token, else (B, D) sums over the tokens;
// grad_weight / grad_bias are (D,) sums over every row, written only when weight / bias are given. (The
// CPU kernels write the per-token gradients and return the sums as partials: their caller finishes
// those, and leaves grad_weight / grad_bias and the per-sample pointers null.)
struct AdalnBackwardArgs {
  DType dtype;
  int64_t batch, tokens, dim;
  bool rms;
  const void* grad_out;
  const void* x;               // x (modulate) or x_out (fused)
  const void* scale;
  bool scale_per_token;
  bool shift_per_token;        // only says the layout of grad_shift
  const void* weight;
  const void* bias;
  const float* mean;
  const float* rstd;
  const void* grad_x_out;      // fused only
  const void* gate;            // fused only
  bool gate_per_token;
  const void* h;               // fused only
  void* grad_x;
  void* grad_h;                // fused only
  void* grad_gate;             // fused only
  void* grad_shift;
  void* grad_scale;
  void* grad_weight;           // null when weight is null
  void* grad_bias;             // null when bias is null
};

// gated_residual: out = x + gate * h. Backward: grad_h = g * gate, grad_gate = g * h (per token) or its
// sum over the tokens (per sample, (B, D)).
struct GatedResidualArgs {
  DType dtype;
  int64_t batch, tokens, dim;
  const void* x;               // forward only
  const void* gate;
  bool gate_per_token;
  const void* h;
  void* out;                   // forward only
  const void* grad_out;        // backward only
  void* grad_gate;             // backward only
  void* grad_h;                // backward only
};

}  // namespace fastdiff
