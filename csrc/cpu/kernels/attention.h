// Torch-free CPU kernels of attention_fwd / attention_bwd (contract: the attention block of csrc/ops.cpp).
// Compiled once per ISA like kernels.h; csrc/cpu/attention.cpp checks the arguments, allocates the
// outputs (and dq_part below), and threads the calls.
//
// Everything runs on float32 copies, packed by each task into per-thread buffers and padded to whole
// vectors: the head dim to dp = D rounded up to 8 (zero columns add nothing to a dot product), the
// keys to nk_pad = Nk rounded up to 16 (their scores get -inf from an additive mask row, so their
// probabilities are exactly 0), the queries to tiles of kAttnRows rows. k and v are packed transposed where the
// products run over keys (8 keys per vector).
// Scores are kept in base 2: the queries are packed pre-multiplied by scale * log2(e), so that a
// probability is one exp2 and the scale costs nothing per score.
#pragma once

#include <cstdint>

#include "dtype.h"

namespace fastdiff::cpu {

struct AttentionArgs {
  DType dtype;                 // of q, k, v, bias, out, grad_out and the gradients
  int64_t batch, heads, nq, nk, head_dim;
  int64_t dp, nk_pad, nq_pad;  // padded sizes (header comment)
  // Inputs, element (b, n, h, d) at base + b*s[0] + n*s[1] + h*s[2] + d*s[3].
  const void *q, *k, *v;
  int64_t q_strides[4], k_strides[4], v_strides[4];
  const uint8_t* key_mask;     // (B, Nk) contiguous, nonzero = attend; or null
  const void* bias;            // element (b, h, i, j) at bias + sum(index * bias_strides); or null
  int64_t bias_strides[4];
  float scale;
  // Backward inputs: grad_out through strides like q; out contiguous (B, Nq, H, D); lse (B, H, Nq).
  const void* grad_out;
  int64_t grad_out_strides[4];
  const void* out_in;
  const float* lse_in;
  // Outputs: out, grad_q (B, Nq, H, D), grad_k, grad_v (B, Nk, H, D), contiguous; lse (B, H, Nq).
  void *out, *grad_q, *grad_k, *grad_v;
  float* lse;
  // Backward: key chunks per (b, h) and key blocks per chunk; with several chunks, float32 scratch
  // (BH, chunks, nq_pad, dp) for each chunk's grad_q / scale.
  int64_t chunks, chunk_blocks;
  float* dq_part;
  // Distinct for every op call: tasks keep the rows they packed for the next task of the same call.
  uint64_t call;
};

// Keys per block (the unit of the online softmax; 128 ran D = 8 1.1x faster than 64), query rows per
// task (forward, grad_q sums) and per tile (6 rows x 16 keys: 12 of the 16 AVX2 registers accumulate).
constexpr int64_t kAttnKeyBlock = 128;
constexpr int64_t kAttnQueryBlock = 64;
constexpr int64_t kAttnRows = 6;

#define FASTDIFF_ATTENTION_DECLARE(isa)                                                                \
  namespace isa {                                                                                      \
  /* out rows [i0, i1) of (b, h) and their lse. */                                                     \
  void attention_fwd_rows(const AttentionArgs& a, int64_t bh, int64_t i0, int64_t i1);                \
  /* grad_k, grad_v of the keys of chunk c of (b, h); grad_q when chunks == 1, else its dq_part. */    \
  void attention_bwd_chunk(const AttentionArgs& a, int64_t bh, int64_t c);                            \
  /* grad_q rows [i0, i1) of (b, h): scale * the sum of the chunks' dq_part, in chunk order. */        \
  void attention_bwd_dq(const AttentionArgs& a, int64_t bh, int64_t i0, int64_t i1);                  \
  }

FASTDIFF_ATTENTION_DECLARE(base)
FASTDIFF_ATTENTION_DECLARE(avx2)
#undef FASTDIFF_ATTENTION_DECLARE

}  // namespace fastdiff::cpu
