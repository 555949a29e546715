// Torch-free launchers of the CUDA adaln kernels (adaln_modulate, gated_residual, gated_residual_adaln,
// forward and backward; semantics in the adaln block of csrc/ops.cpp). The caller (cuda/bindings_adaln.cpp)
// checks shapes and dtypes, allocates every output and the backward workspace, and passes raw pointers
// in the parameter structs of csrc/adaln_args.h (layout there).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "adaln_args.h"
#include "dtype.h"

namespace fastdiff::cuda {

// The parameter structs are the ones the CPU kernels take (csrc/adaln_args.h).
using ::fastdiff::AdalnBackwardArgs;
using ::fastdiff::AdalnForwardArgs;
using ::fastdiff::GatedResidualArgs;

cudaError_t adaln_forward(const AdalnForwardArgs& a, cudaStream_t stream);

// Bytes of float32 scratch adaln_backward needs (0 when nothing is summed over tokens). The partial
// sums' layout depends on the shape only, so the sums are bitwise reproducible run to run.
size_t adaln_backward_workspace_bytes(const AdalnBackwardArgs& a);
cudaError_t adaln_backward(const AdalnBackwardArgs& a, void* workspace, cudaStream_t stream);

cudaError_t gated_residual_forward(const GatedResidualArgs& a, cudaStream_t stream);
size_t gated_residual_backward_workspace_bytes(const GatedResidualArgs& a);
cudaError_t gated_residual_backward(const GatedResidualArgs& a, void* workspace, cudaStream_t stream);

}  // namespace fastdiff::cuda
