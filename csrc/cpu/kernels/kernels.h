// Torch-free CPU kernels. Each .cpp under kernels/ is compiled once per instruction set into the
// namespace fastdiff::cpu::<isa>; csrc/cpu/<family>.cpp picks one at run time (isa.h) and threads
// the calls. Pointers are to contiguous storage; sizes are element counts.
#pragma once

#include <cstdint>

#include "dtype.h"

namespace fastdiff::cpu {

struct GuidanceArgs {
  const void* model_out;       // (2B, n): [uncond; cond]
  DType dtype;
  int64_t batch;               // B
  int64_t per_sample;          // n
  float scale;                 // used when scale_per_sample is null
  const float* scale_per_sample;  // (B,) or null
  const float* factor;         // (B,) or null
};

struct UpdateArgs {
  const void* x;               // (B, n)
  DType x_dtype;
  const void* model_out;       // (B, n) or, guided, (2B, n)
  DType m_dtype;
  bool guided;
  GuidanceArgs guidance;       // its model_out/dtype mirror the fields above when guided
  const float* coeffs;         // [a, b, c_x, c_d, c_z, slot, c_h0..]
  void* history;               // (K, B, n) in x_dtype, or null
  int64_t history_len;         // K
  const void* noise;           // (B, n) in x_dtype, or null
  int64_t batch, per_sample;
};

// Rescale statistics of one chunk of sample `b`, elements [begin, end) of that sample: sums of
// (c - shift_c), (c - shift_c)^2, (g - shift_g), (g - shift_g)^2, in double.
struct MomentSums {
  double c1, c2, g1, g2;
};

#define FASTDIFF_CPU_DECLARE(isa)                                                                    \
  namespace isa {                                                                                    \
  void guidance_combine(const GuidanceArgs& a, void* out, int64_t b, int64_t begin, int64_t end);   \
  MomentSums guidance_moments(const GuidanceArgs& a, int64_t b, int64_t begin, int64_t end,         \
                              float shift_c, float shift_g);                                         \
  void sampler_update(const UpdateArgs& a, void* out, int64_t b, int64_t begin, int64_t end);       \
  }

FASTDIFF_CPU_DECLARE(base)
FASTDIFF_CPU_DECLARE(avx2)
#undef FASTDIFF_CPU_DECLARE

}  // namespace fastdiff::cpu
