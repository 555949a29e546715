// Torch-free CPU kernels of geglu (forward and backward; semantics in the geglu block of csrc/ops.cpp).
// Compiled once per ISA like kernels.h; csrc/cpu/geglu.cpp threads the calls over (row, column range).
#pragma once

#include <cstdint>

#include "geglu_args.h"

namespace fastdiff::cpu {

#define FASTDIFF_GEGLU_DECLARE(isa)                                                                   \
  namespace isa {                                                                                     \
  /* out[r, j] = a[r, j] * gelu(gate[r, j]) for the output columns j in [begin, end) of row r. */     \
  void geglu_forward(const GegluArgs& a, int64_t r, int64_t begin, int64_t end);                      \
  /* grad_x[r, j] and grad_x[r, H + j] (grad_a, grad_gate) for j in [begin, end) of row r. */         \
  void geglu_backward(const GegluArgs& a, int64_t r, int64_t begin, int64_t end);                     \
  }

FASTDIFF_GEGLU_DECLARE(base)
FASTDIFF_GEGLU_DECLARE(avx2)
#undef FASTDIFF_GEGLU_DECLARE

}  // namespace fastdiff::cpu
