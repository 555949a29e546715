// CUDA attention forward kernels for the compiled head-dim widths 80, 96, 128 (fp16 and bf16):
// explicit instantiations of attention_dispatch.cuh, one file per width group so builds run in parallel.
#include "cuda/attention_dispatch.cuh"

namespace fastdiff::cuda::attn {

FASTDIFF_ATTN_FORWARD_WIDTH(, 80)
FASTDIFF_ATTN_FORWARD_WIDTH(, 96)
FASTDIFF_ATTN_FORWARD_WIDTH(, 128)

}  // namespace fastdiff::cuda::attn
