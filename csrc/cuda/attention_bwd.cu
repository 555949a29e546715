// CUDA attention backward (fastdiff::attention_bwd): the launcher. Kernels (delta, dK/dV, dQ) are in
// attention_backward.cuh, the launch sequence in attention_dispatch.cuh.
#include "cuda/attention_dispatch.cuh"
#include "cuda/attention_launchers.h"

namespace fastdiff::cuda {
namespace attn {
// Instantiated in attention_bwd_d*.cu.
FASTDIFF_ATTN_ALL_WIDTHS(FASTDIFF_ATTN_BACKWARD_WIDTH, extern)
}  // namespace attn

size_t attention_bwd_workspace_bytes(const AttentionParams& p) {
  const auto n = static_cast<size_t>(p.batch * p.heads * p.nq);
  return (n * sizeof(float) + 15) / 16 * 16;
}

cudaError_t launch_attention_bwd(const AttentionBwdParams& p, void* workspace, void* grad_q, void* grad_k,
                                 void* grad_v, cudaStream_t stream) {
  attn::DeviceRunner runner{stream};
  return attn::run_backward(p, static_cast<float*>(workspace), grad_q, grad_k, grad_v, runner);
}

}  // namespace fastdiff::cuda
