// The parameters of one group_norm call (forward or backward), torch-free: filled once by the torch
// side (csrc/group_norm_fill.h) and read by the CPU kernels (cpu/kernels/group_norm.cpp) and the CUDA
// kernels (cuda/group_norm.cuh). The CPU op and the CUDA binding differ only in how they allocate and
// launch. Semantics: the group_norm block of csrc/ops.cpp.
//
// Partition (a function of the shape only, so every sum has the same order at any thread count and
// on every launch): each channel's S spatial positions are cut into `blocks` blocks of `block_len`
// positions (the last may be shorter). One partial record of kGroupNormPartial floats is kept per
// (sample n, channel c, block b), at partial + ((n * C + c) * blocks + b) * kGroupNormPartial:
//   forward:  {m, s1, s2}: m a centre near the block's mean (CUDA: the mean as first estimated
//             in a pass of its own; CPU: the mean of the block's first 64 elements), s1 = sum(x - m),
//             s2 = sum((x - m)^2) over the block; so the block's mean is m + s1/len and its M2 is
//             s2 - s1^2/len with s1^2/len small beside M2: no cancellation whatever the data's mean.
//   backward: {a, b, -}: a = sum(dy), b = sum(dy * xhat) over the block, dy the gradient at the
//             affine output (through SiLU when silu).
// The blocks and channels of a group are then combined in a fixed order, in double.
#pragma once

#include <cstdint>

#include "dtype.h"

namespace fastdiff {

constexpr int kGroupNormPartial = 3;

struct GroupNormArgs {
  DType dtype;                   // of x, out, grad_out, grad_x, weight, bias
  int64_t batch, channels, spatial, groups;  // N, C, S (product of the dims after C), G
  bool channels_last;            // element (n, c, s) at (n*S + s)*C + c; else (n*C + c)*S + s
  bool silu;                     // out = silu(y), y = xhat * weight + bias
  float eps;
  int64_t block_len, blocks;     // the partition above
  const void* x;
  const void* weight;            // (C,) or null (1)
  const void* bias;              // (C,) or null (0)
  float* mean;                   // (N*G): written by the forward, read by the backward
  float* rstd;
  float* partial;                // workspace: N*C*blocks*kGroupNormPartial floats
  void* out;                     // forward
  const void* grad_out;          // backward, laid out like x
  void* grad_x;                  // backward
  float* channel_sums;           // backward workspace: (N*C, 2) {sum dy, sum dy*xhat}
  float* group_coef;             // backward workspace: (N*G, 2) {mean of dy*w, mean of dy*w*xhat}
  void* grad_weight;             // backward: (C,) in dtype, or null when weight is null
  void* grad_bias;               // idem
};

// Elements per partial block: enough work per task, few enough that a block stays in L2.
constexpr int64_t kGroupNormBlockElems = 1 << 14;

// Fills block_len and blocks from N, C, S and the layout.
inline void group_norm_partition(GroupNormArgs& a) {
  const int64_t per_position = a.channels_last ? a.channels : 1;
  int64_t len = kGroupNormBlockElems / (per_position > 0 ? per_position : 1);
  if (len < 1) len = 1;
  if (len > a.spatial) len = a.spatial;
  a.block_len = len > 0 ? len : 1;
  a.blocks = a.spatial > 0 ? (a.spatial + a.block_len - 1) / a.block_len : 0;
}

inline int64_t group_norm_partial_floats(const GroupNormArgs& a) {
  return a.batch * a.channels * a.blocks * kGroupNormPartial;
}

// Address of element (n, c, s) in elements.
inline int64_t group_norm_index(const GroupNormArgs& a, int64_t n, int64_t c, int64_t s) {
  return a.channels_last ? (n * a.spatial + s) * a.channels + c : (n * a.channels + c) * a.spatial + s;
}

}  // namespace fastdiff
