// The parameters of the fused solver step (fastdiff::sampler_update), torch-free: the one struct that
// the C++ CPU kernel (csrc/cpu/kernels/sampler_update.cpp) and the CUDA launcher (csrc/cuda/launchers.h)
// both take, filled once from tensors by sampler_update_params<Place> (sampler_update_fill.h).
#pragma once

#include <cstdint>

#include "dtype.h"

namespace fastdiff {

// One fused solver step (see the sampler_update schema in csrc/ops.cpp). Pointers are to contiguous
// storage on the backend's device.
struct UpdateParams {
  const void* x;                  // (B, n)
  DType x_dtype;                  // also the dtype of out, history and noise
  const void* model_out;          // (B, n), or (2B, n) [uncond; cond] when guided
  DType m_dtype;
  bool guided;
  float scale;                    // guidance scale when scale_per_sample is null
  const float* scale_per_sample;  // (B,) or null; guided only
  const float* factor;            // (B,) rescale multipliers or null; guided only
  const float* coeffs;            // row [a, b, c_x, c_d, c_z, slot, c_h0 .. c_h{K-1}], on the device
  void* history;                  // (K, B, n) or null; history[slot] is overwritten
  int64_t history_len;            // K
  const void* noise;              // (B, n) or null
  int64_t batch, per_sample;      // B, n
};

}  // namespace fastdiff
