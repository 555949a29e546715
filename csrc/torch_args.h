// Torch-side argument helpers shared by the CPU op files (csrc/cpu/*.cpp) and the CUDA bindings
// (csrc/cuda/bindings*.cpp). The torch-free kernel files never include it.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "dtype.h"

namespace fastdiff {

// The kernels' element type of `t`; any dtype but float32, float16 and bfloat16 is an argument error.
inline DType to_dtype(const at::Tensor& t, const char* op, const char* arg) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default:
      TORCH_CHECK(false, "fastdiff.", op, ": argument '", arg, "' expected dtype float32, float16 or bfloat16, got ",
                  t.scalar_type());
  }
}

}  // namespace fastdiff
