// CUDA attention forward kernels for the compiled head-dim widths 32, 40, 64, 72 (fp16 and bf16):
// explicit instantiations of attention_dispatch.cuh, one file per width group so builds run in parallel.
#include "cuda/attention_dispatch.cuh"

namespace fastdiff::cuda::attn {

FASTDIFF_ATTN_FORWARD_WIDTH(, 32)
FASTDIFF_ATTN_FORWARD_WIDTH(, 40)
FASTDIFF_ATTN_FORWARD_WIDTH(, 64)
FASTDIFF_ATTN_FORWARD_WIDTH(, 72)

}  // namespace fastdiff::cuda::attn
