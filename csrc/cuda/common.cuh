// Torch-free helpers shared by the CUDA kernel files: storage types per fastdiff::DType, conversions
// to and from float, 16-byte vector loads and stores, launch shapes and an error-check macro.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "dtype.h"

// Returns the cudaError_t of `expr` from the enclosing function when it is not cudaSuccess.
#define FASTDIFF_CUDA_TRY(expr)                     \
  do {                                              \
    const cudaError_t fastdiff_err_ = (expr);       \
    if (fastdiff_err_ != cudaSuccess) return fastdiff_err_; \
  } while (0)

namespace fastdiff::cuda {

using half = __half;
using bf16 = __nv_bfloat16;

// ---- conversions (all arithmetic is float32) ----------------------------------------------------
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(bf16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ half from_float<half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float v) { return __float2bfloat16_rn(v); }

// ---- loads and stores of N consecutive elements ---------------------------------------------------
// Elements of T in one 16-byte access.
template <typename T>
constexpr int kPack = static_cast<int>(16 / sizeof(T));

// Elements per thread on the vector path when two storage types meet in one kernel: one 16-byte
// access of the narrower type, one or two of the wider.
template <typename A, typename B>
constexpr int kPack2 = kPack<A> > kPack<B> ? kPack<A> : kPack<B>;

// kVector: p is 16-byte aligned and N * sizeof(T) is a multiple of 16, so the N elements travel as
// N * sizeof(T) / 16 128-bit accesses. Otherwise N is 1 and the access is scalar.
// Read-only inputs go through the non-coherent (texture) path; kReadOnly = false is for buffers the
// same kernel also writes (the history ring).
template <int N, bool kVector, bool kReadOnly = true, typename T>
__device__ __forceinline__ void load(const T* p, float (&out)[N]) {
  if constexpr (kVector) {
    static_assert((N * sizeof(T)) % 16 == 0, "vector loads move whole 16-byte words");
    constexpr int kWords = static_cast<int>(N * sizeof(T) / 16);
    const uint4* w = reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int k = 0; k < kWords; ++k) {
      union {
        uint4 word;
        T elem[kPack<T>];
      } raw;
      raw.word = kReadOnly ? __ldg(w + k) : w[k];
#pragma unroll
      for (int e = 0; e < kPack<T>; ++e) out[k * kPack<T> + e] = to_float(raw.elem[e]);
    }
  } else {
    static_assert(N == 1, "the scalar path moves one element per step");
    out[0] = to_float(*p);
  }
}

template <int N, bool kVector, typename T>
__device__ __forceinline__ void store(T* p, const float (&in)[N]) {
  if constexpr (kVector) {
    static_assert((N * sizeof(T)) % 16 == 0, "vector stores move whole 16-byte words");
    constexpr int kWords = static_cast<int>(N * sizeof(T) / 16);
    uint4* w = reinterpret_cast<uint4*>(p);
#pragma unroll
    for (int k = 0; k < kWords; ++k) {
      union {
        uint4 word;
        T elem[kPack<T>];
      } raw;
#pragma unroll
      for (int e = 0; e < kPack<T>; ++e) raw.elem[e] = from_float<T>(in[k * kPack<T> + e]);
      w[k] = raw.word;
    }
  } else {
    static_assert(N == 1, "the scalar path moves one element per step");
    *p = from_float<T>(in[0]);
  }
}

// ---- host-side helpers ----------------------------------------------------------------------------
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Threads per block of the elementwise kernels, and a cap on their grid: past it the kernels stride.
// A fixed cap (rather than one derived from the SM count) keeps launchers free of device queries;
// 8192 blocks of 256 threads is several full waves on an A100 or H100. The host emulator
// (tests/cuda_emu/cuda_host.h) predefines FASTDIFF_MAX_BLOCKS and FASTDIFF_MAX_GRID_Y as runtime
// values, so that its tests reach the strided paths with small shapes.
#ifndef FASTDIFF_MAX_BLOCKS
#define FASTDIFF_MAX_BLOCKS 8192
#endif
// gridDim.y limit of every CUDA GPU (launchers whose grid.y can exceed it clamp and stride).
#ifndef FASTDIFF_MAX_GRID_Y
#define FASTDIFF_MAX_GRID_Y 65535
#endif
constexpr int kThreads = 256;

inline unsigned grid_for(int64_t work_items) {
  const int64_t blocks = (work_items + kThreads - 1) / kThreads, max_blocks = FASTDIFF_MAX_BLOCKS;
  return static_cast<unsigned>(blocks < max_blocks ? blocks : max_blocks);
}

// A tag carrying a storage type, for dispatching on DType with a generic lambda.
template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<T>{}) for the storage type of `t`.
template <typename Fn>
cudaError_t dispatch_dtype(DType t, Fn&& fn) {
  switch (t) {
    case DType::f32: return fn(TypeTag<float>{});
    case DType::f16: return fn(TypeTag<half>{});
    case DType::bf16: return fn(TypeTag<bf16>{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastdiff::cuda
