// CUDA attention backward kernels for the compiled head-dim widths 160, 192, 256 (fp16 and bf16):
// explicit instantiations of attention_dispatch.cuh, one file per width group so builds run in parallel.
#include "cuda/attention_dispatch.cuh"

namespace fastdiff::cuda::attn {

FASTDIFF_ATTN_BACKWARD_WIDTH(, 160)
FASTDIFF_ATTN_BACKWARD_WIDTH(, 192)
FASTDIFF_ATTN_BACKWARD_WIDTH(, 256)

}  // namespace fastdiff::cuda::attn
