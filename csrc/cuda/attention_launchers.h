// Torch-free entry points of the CUDA attention kernels (csrc/cuda/attention_*.cu), called by
// csrc/cuda/bindings_attention.cpp. The contract is the attention_fwd / attention_bwd schema in
// csrc/ops.cpp. Pointers are device pointers; strides and sizes count elements. Launchers enqueue
// work on `stream` and return the launch status: they never synchronise and never allocate (the
// backward's scratch space comes from the caller).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "dtype.h"

namespace fastdiff::cuda {

// softmax(scale * q k^T + bias) v over (B, N, H, D) tensors read through strides.
struct AttentionParams {
  const void* q;              // (B, Nq, H, D)
  const void* k;              // (B, Nk, H, D)
  const void* v;              // (B, Nk, H, D)
  DType dtype;                // f16 or bf16, for q, k, v, bias and every output but lse
  int64_t batch, heads, nq, nk, head_dim;
  // (batch, token, head) strides of q, k and v; the head dim is contiguous. Every stride and each
  // pointer is a multiple of 8 elements (16 bytes), so rows move as 16-byte vectors.
  int64_t q_strides[3], k_strides[3], v_strides[3];
  const uint8_t* key_mask;    // (B, Nk) bool, contiguous, nonzero = attend; or null
  const void* bias;           // element (b, h, i, j) at bias + sum(index * bias_strides); or null
  int64_t bias_strides[4];    // (b, h, query, key); 0 on broadcast dims
  float scale;
};

// The backward's extra inputs.
struct AttentionBwdParams {
  AttentionParams fwd;
  const void* grad_out;       // (B, Nq, H, D) in the dtype of q, same alignment promise as q
  int64_t grad_out_strides[3];
  const void* out;            // the forward's output, contiguous (B, Nq, H, D)
  const float* lse;           // the forward's log-sum-exp, contiguous (B, H, Nq)
};

// Head dims the kernels take: multiples of 8 in [8, 256]. 40, 64, 72, 80, 96, 128 and 160 (and 32,
// 192, 256) run kernels compiled for exactly that width; the others run the next wider compiled
// width with the extra columns zero-filled.
bool attention_head_dim_supported(int64_t head_dim);

// Largest batch * heads * blocks a launch can address (the grid is one-dimensional).
bool attention_sizes_supported(const AttentionParams& p);

// out (B, Nq, H, D) contiguous in p.dtype; lse (B, H, Nq) float32 contiguous, natural log, +inf on
// rows with no attended key (their out row is 0).
cudaError_t launch_attention_fwd(const AttentionParams& p, void* out, float* lse, cudaStream_t stream);

// Scratch bytes launch_attention_bwd needs (float32 delta = rowsum(dO * O) per (B, H, Nq)).
size_t attention_bwd_workspace_bytes(const AttentionParams& p);

// grad_q (B, Nq, H, D), grad_k, grad_v (B, Nk, H, D), contiguous, in p.fwd.dtype. `workspace` holds
// attention_bwd_workspace_bytes(p.fwd) bytes, 16-byte aligned. Deterministic (no atomics).
cudaError_t launch_attention_bwd(const AttentionBwdParams& p, void* workspace, void* grad_q, void* grad_k,
                                 void* grad_v, cudaStream_t stream);

}  // namespace fastdiff::cuda
