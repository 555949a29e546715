// Torch-free CPU kernels. Each .cpp under kernels/ is compiled once per instruction set into the
// namespace fastdiff::cpu::<isa>; csrc/cpu/<family>.cpp picks one at run time (isa.h) and threads
// the calls. They take the parameter structs of csrc/<family>_args.h, the same ones the CUDA
// launchers take. Pointers are to contiguous storage; sizes are element counts.
#pragma once

#include <cstdint>

#include "dtype.h"
#include "guidance_args.h"
#include "sampler_update_args.h"

namespace fastdiff::cpu {

// Rescale statistics of one chunk of sample `b`, elements [begin, end) of that sample: sums of
// (c - shift_c), (c - shift_c)^2, (g - shift_g), (g - shift_g)^2, in double.
struct MomentSums {
  double c1, c2, g1, g2;
};

#define FASTDIFF_CPU_DECLARE(isa)                                                                   \
  namespace isa {                                                                                   \
  void guidance_combine(const GuidanceParams& a, void* out, int64_t b, int64_t begin, int64_t end); \
  MomentSums guidance_moments(const GuidanceParams& a, int64_t b, int64_t begin, int64_t end,       \
                              float shift_c, float shift_g);                                        \
  void sampler_update(const UpdateParams& a, void* out, int64_t b, int64_t begin, int64_t end);     \
  }

FASTDIFF_CPU_DECLARE(base)
FASTDIFF_CPU_DECLARE(avx2)
#undef FASTDIFF_CPU_DECLARE

}  // namespace fastdiff::cpu
