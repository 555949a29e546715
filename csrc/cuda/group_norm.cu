// Device launches of the group_norm kernels (cuda/group_norm.cuh): one __global__ wrapper per kernel
// struct, the launch sequences shared with the host emulator.
#include <climits>

#include "cuda/group_norm.cuh"
#include "cuda/group_norm.h"

namespace fastdiff::cuda {
namespace {

template <class K>
__global__ void __launch_bounds__(K::kThreads) group_norm_kernel(const GroupNormArgs a) {
  extern __shared__ __align__(16) char smem[];
  K::run(a, smem, static_cast<int64_t>(blockIdx.x), static_cast<int>(threadIdx.x));
}

struct DeviceRunner {
  cudaStream_t stream;

  template <class K>
  cudaError_t launch(const GroupNormArgs& a, int64_t grid, size_t smem) {
    if (grid == 0) return cudaSuccess;
    if (grid < 0 || grid > INT_MAX) return cudaErrorInvalidConfiguration;
    group_norm_kernel<K><<<static_cast<unsigned>(grid), K::kThreads, smem, stream>>>(a);
    return cudaGetLastError();
  }
};

}  // namespace

cudaError_t group_norm_forward(const GroupNormArgs& a, cudaStream_t stream) {
  DeviceRunner runner{stream};
  return gn::dispatch<false>(a, runner);
}

cudaError_t group_norm_backward(const GroupNormArgs& a, cudaStream_t stream) {
  DeviceRunner runner{stream};
  return gn::dispatch<true>(a, runner);
}

}  // namespace fastdiff::cuda
