// Torch-free launchers of the CUDA group_norm kernels (cuda/group_norm.cuh). The caller
// (cuda/bindings_group_norm.cpp) checks the tensors, fills GroupNormArgs (group_norm_args.h), allocates
// the outputs and the float32 workspaces it names (partial; channel_sums and group_coef in the
// backward), and passes the current stream.
#pragma once

#include <cuda_runtime.h>

#include "group_norm_args.h"

namespace fastdiff::cuda {

// out, mean, rstd from x, weight, bias.
cudaError_t group_norm_forward(const GroupNormArgs& a, cudaStream_t stream);
// grad_x (+ grad_weight, grad_bias when set) from grad_out, x, weight, bias, mean, rstd.
cudaError_t group_norm_backward(const GroupNormArgs& a, cudaStream_t stream);

}  // namespace fastdiff::cuda
