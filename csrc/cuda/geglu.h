// Torch-free launchers of the CUDA geglu kernels (semantics: the geglu block of csrc/ops.cpp). The
// caller (cuda/bindings_geglu.cpp) checks the tensors, allocates the output and fills GegluArgs.
#pragma once

#include <cuda_runtime.h>

#include "geglu_args.h"

namespace fastdiff::cuda {

// out = a * gelu(gate) (a.x, a.out). An empty problem launches nothing.
cudaError_t geglu_forward(const GegluArgs& a, cudaStream_t stream);
// grad_x = [grad_out * gelu(gate) | grad_out * a * gelu'(gate)] (a.grad_out, a.x, a.grad_x).
cudaError_t geglu_backward(const GegluArgs& a, cudaStream_t stream);

}  // namespace fastdiff::cuda
