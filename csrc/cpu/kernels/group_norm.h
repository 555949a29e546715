// Torch-free CPU kernels of group_norm (+ SiLU), forward and backward. Compiled once per ISA like
// kernels.h; csrc/cpu/group_norm.cpp threads the calls. Arguments and the partition into blocks:
// csrc/group_norm_args.h. A "task" (n, c0, c1, b) is the block b of the channels [c0, c1) of sample n:
// one channel's contiguous segment in NCHW (c1 = c0 + 1), a run of rows of all channels in
// channels-last (c0 = 0, c1 = C). Each task writes only its own partial records and outputs.
#pragma once

#include <cstdint>

#include "group_norm_args.h"

namespace fastdiff::cpu {

#define FASTDIFF_GROUP_NORM_DECLARE(isa)                                                                  \
  namespace isa {                                                                                        \
  /* Forward partials {m, s1, s2} of the task. */                                                        \
  void group_norm_stats(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t b);           \
  /* mean, rstd of group g of sample n from its partials (double, fixed order). */                       \
  void group_norm_finalize(const GroupNormArgs& a, int64_t n, int64_t g);                                \
  /* out of the task's elements. */                                                                      \
  void group_norm_apply(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t b);           \
  /* Backward partials {sum dy, sum dy*xhat} of the task. dy_out (NCHW only; may be null): also store     \
     k1 * dy = rstd * w * dy (the part of dx known before the group's sums) of channel c, position s at   \
     dy_out[(c - c0) * S + s], for group_norm_grad_x to finish; for float32 it may be grad_x itself. */  \
  void group_norm_grad_sums(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t b,        \
                            float* dy_out);                                                              \
  /* channel_sums of the channels of group g of sample n, and its group_coef. */                         \
  void group_norm_grad_group(const GroupNormArgs& a, int64_t n, int64_t g);                              \
  /* grad_x of the task's elements; dy_in: what group_norm_grad_sums stored in dy_out, or null. */      \
  void group_norm_grad_x(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t b,           \
                         const float* dy_in);                                                            \
  /* grad_weight, grad_bias of channels [c0, c1): channel_sums summed over the samples in order. */      \
  void group_norm_grad_params(const GroupNormArgs& a, int64_t c0, int64_t c1);                           \
  }

FASTDIFF_GROUP_NORM_DECLARE(base)
FASTDIFF_GROUP_NORM_DECLARE(avx2)
#undef FASTDIFF_GROUP_NORM_DECLARE

}  // namespace fastdiff::cpu
