// CUDA geglu kernels: the __global__ wrappers of geglu_kernels.cuh and their launchers (geglu.h).
#include "cuda/geglu.h"
#include "cuda/geglu_kernels.cuh"

namespace fastdiff::cuda {
namespace {

template <typename T, int N, bool kVector, bool kTanh>
__global__ void __launch_bounds__(geglu::kThreads) forward_kernel(const GegluArgs a) {
  geglu::forward_thread<T, N, kVector, kTanh>(a, blockIdx.x, gridDim.x, threadIdx.x, blockDim.x);
}

template <typename T, int N, bool kVector, bool kTanh>
__global__ void __launch_bounds__(geglu::kThreads) backward_kernel(const GegluArgs a) {
  geglu::backward_thread<T, N, kVector, kTanh>(a, blockIdx.x, gridDim.x, threadIdx.x, blockDim.x);
}

cudaError_t launch(const GegluArgs& a, bool backward, cudaStream_t stream) {
  if (a.rows == 0 || a.half == 0) return cudaSuccess;
  return geglu::dispatch(a, backward, [&](auto tag, auto n, auto vec, auto tanh, int64_t items) {
    using T = typename decltype(tag)::type;
    constexpr int kN = decltype(n)::value;
    constexpr bool kVec = decltype(vec)::value, kTanh = decltype(tanh)::value;
    const auto blocks = static_cast<unsigned>(geglu::blocks_for(items));
    if (backward)
      backward_kernel<T, kN, kVec, kTanh><<<blocks, geglu::kThreads, 0, stream>>>(a);
    else
      forward_kernel<T, kN, kVec, kTanh><<<blocks, geglu::kThreads, 0, stream>>>(a);
    return cudaGetLastError();
  });
}

}  // namespace

cudaError_t geglu_forward(const GegluArgs& a, cudaStream_t stream) { return launch(a, false, stream); }
cudaError_t geglu_backward(const GegluArgs& a, cudaStream_t stream) { return launch(a, true, stream); }

}  // namespace fastdiff::cuda
