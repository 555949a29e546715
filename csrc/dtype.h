// The element types the kernels take, shared by the torch-free CPU and CUDA kernel files.
#pragma once

namespace fastdiff {

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };

inline const char* dtype_name(DType t) {
  return t == DType::f32 ? "float32" : t == DType::f16 ? "float16" : "bfloat16";
}

}  // namespace fastdiff
