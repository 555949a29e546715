// Compiles a torch-free CUDA kernel file (csrc/cuda/*.cu and the headers it includes) as host C++
// that runs on the emulator (emulator.h). Include it first, then the kernel file as rewritten by
// hostify.py (run.sh does that: `k<<<grid, block, smem, stream>>>(args)` becomes
// emu::launch(k, emu::Config(grid, block, smem, stream), args), `extern __shared__ T name[]` becomes
// a pointer to the block's dynamic shared memory). Here:
//   __global__ / __device__ functions are plain functions, __shared__ variables are function-local
//   statics (one per kernel instantiation, shared by the block's threads; blocks run one at a time);
//   threadIdx, blockIdx, blockDim, gridDim, __syncthreads, __syncwarp, __shfl_xor_sync,
//   __shfl_down_sync and the few runtime calls the launchers make go to the emulator; __ldg is a load.
// Static __shared__ arrays are not re-poisoned between blocks (dynamic shared memory is).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "emulator.h"

// The launchers' grid caps (csrc/cuda/common.cuh), runtime values here: tests lower them
// (emu::device()) to reach the grid-stride and split paths with small shapes.
#define FASTDIFF_MAX_GRID_Y (static_cast<int64_t>(::fastdiff::cuda::emu::device().max_grid_y))
#define FASTDIFF_MAX_BLOCKS (static_cast<int64_t>(::fastdiff::cuda::emu::device().max_blocks))

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

namespace fastdiff::cuda::emu {

inline uint3 as_uint3(Dim3 d) { return uint3{d.x, d.y, d.z}; }
inline Dim3 as_dim(dim3 d) { return Dim3{d.x, d.y, d.z}; }

// The launch configuration of `<<<grid, block, smem, stream>>>`.
struct Config {
  dim3 grid, block;
  size_t smem;
  Config(dim3 g, dim3 b, size_t s = 0, cudaStream_t = nullptr) : grid(g), block(b), smem(s) {}
};

// Copies the arguments into the kernel's parameter types (as a launch does), then runs the grid.
template <typename... P, typename... A>
void launch(void (*kernel)(P...), const Config& c, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "a launch passes every kernel parameter");
  const std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  launch_grid(reinterpret_cast<const void*>(kernel), as_dim(c.grid), as_dim(c.block), c.smem,
              [&] { std::apply(kernel, params); });
}

template <typename T>
T* dynamic_smem() {
  return reinterpret_cast<T*>(dynamic_smem_base());
}

template <typename T>
T shfl(unsigned mask, T v, int kind, int arg, int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffles move up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = shfl_sync(mask, bits, kind, arg, width);
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

}  // namespace fastdiff::cuda::emu

#define threadIdx (::fastdiff::cuda::emu::as_uint3(::fastdiff::cuda::emu::thread_idx()))
#define blockIdx (::fastdiff::cuda::emu::as_uint3(::fastdiff::cuda::emu::block_idx()))
#define blockDim (::fastdiff::cuda::emu::as_uint3(::fastdiff::cuda::emu::block_dim()))
#define gridDim (::fastdiff::cuda::emu::as_uint3(::fastdiff::cuda::emu::grid_dim()))

inline void __syncthreads() { ::fastdiff::cuda::emu::block_sync(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::fastdiff::cuda::emu::warp_sync_mask(mask); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return ::fastdiff::cuda::emu::shfl(mask, v, 0, lane_mask, width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::fastdiff::cuda::emu::shfl(mask, v, 1, static_cast<int>(delta), width);
}

template <typename T>
T __ldg(const T* p) {
  return *p;
}

// The runtime's typed overload (nvcc-only in cuda_runtime.h).
template <typename T>
cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}
