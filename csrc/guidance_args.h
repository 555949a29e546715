// The parameters of the guidance kernels (guidance_combine, guidance_rescale_factor), torch-free: the
// one struct that the C++ CPU kernels (csrc/cpu/kernels/) and the CUDA launchers (csrc/cuda/launchers.h)
// both take. It is filled once from tensors, for either backend, by guidance_params<Place> in
// guidance_fill.h; the backends differ only in where outputs are allocated and how the kernels run.
#pragma once

#include <cstdint>

#include "dtype.h"

namespace fastdiff {

// Classifier-free guidance on a batched [uncond; cond] output. Pointers are to contiguous storage
// (host memory for the CPU kernels, device memory for the CUDA launchers).
struct GuidanceParams {
  const void* model_out;          // (2B, n): [uncond; cond]
  DType dtype;
  int64_t batch;                  // B
  int64_t per_sample;             // n
  float scale;                    // used when scale_per_sample is null
  const float* scale_per_sample;  // (B,) float32 or null
  const float* factor;            // (B,) float32 or null (guidance_combine only)
};

}  // namespace fastdiff
