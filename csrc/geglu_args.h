// The parameters of one geglu call (forward or backward), torch-free: filled once by the torch side
// (csrc/geglu_fill.h, for the CPU op in csrc/cpu/geglu.cpp and the CUDA binding in
// csrc/cuda/bindings_geglu.cpp) and read by the CPU kernels (csrc/cpu/kernels/geglu.cpp) and the CUDA
// kernels (csrc/cuda/geglu_kernels.cuh). Semantics: the geglu block of csrc/ops.cpp.
#pragma once

#include <cstdint>

#include "dtype.h"

namespace fastdiff {

struct GegluArgs {
  DType dtype;            // every tensor of the call
  int64_t rows;           // R: the product of x's leading dims
  int64_t half;           // H: the output width; a row of x is 2H long, [a | gate]
  bool tanh;              // the tanh approximation of GELU instead of the exact (erf) one
  const void* x;          // (R, 2H), contiguous
  const void* grad_out;   // backward only: (R, H), contiguous
  void* out;              // forward only: (R, H), contiguous
  void* grad_x;           // backward only: (R, 2H), contiguous: [grad_a | grad_gate]
};

}  // namespace fastdiff
