// The torch-free interface of normal_avx2.cpp (x86-64 builds only: FASTDIFF_TORCH_RNG_AVX2).
#pragma once

#include <cstdint>

namespace fastdiff::cpu::torch_rng {

// The fields of at::mt19937_data_pod that the engine's draws read and advance.
struct MtState {
  uint32_t* state;  // 624 words
  int left;
  uint32_t next;
};

// torch.randn's values for a contiguous tensor of n >= 16 elements, in float32, drawn from (and
// advancing) the engine state `s` exactly as PyTorch's AVX2/AVX-512 normal_fill does for a float32
// tensor (whole_buffer_first) or a float16/bfloat16 one (whose values are these, rounded).
void normal_fill(MtState& s, float* data, int64_t n, bool whole_buffer_first);

}  // namespace fastdiff::cpu::torch_rng
