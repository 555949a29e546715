// CUDA attention forward (fastdiff::attention_fwd): the launcher. Kernels are in attention_forward.cuh, the
// choice between the short-K/V and tiled paths in attention_dispatch.cuh.
#include "cuda/attention_dispatch.cuh"
#include "cuda/attention_launchers.h"

namespace fastdiff::cuda {
namespace attn {
// Instantiated in attention_fwd_d*.cu.
FASTDIFF_ATTN_ALL_WIDTHS(FASTDIFF_ATTN_FORWARD_WIDTH, extern)
}  // namespace attn

bool attention_head_dim_supported(int64_t head_dim) { return attn::compiled_width(head_dim) != 0; }

bool attention_sizes_supported(const AttentionParams& p) { return attn::sizes_ok(p); }

cudaError_t launch_attention_fwd(const AttentionParams& p, void* out, float* lse, cudaStream_t stream) {
  attn::DeviceRunner runner{stream};
  return attn::run_forward(p, out, lse, runner);
}

}  // namespace fastdiff::cuda
