// Device helpers of the adaln kernels: V-element vector loads/stores (one access of V * sizeof(T) <= 16
// bytes, unlike the whole-16-byte-word ones of cuda/common.cuh) and deterministic sums over a row group.
// The float32 conversions are cuda/common.cuh's.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"

namespace fastdiff::cuda::adaln_detail {

constexpr unsigned kFullMask = 0xffffffffu;

// The adaln kernels' names for the float32 conversions of cuda/common.cuh.
template <typename T>
__device__ __forceinline__ float to_f(T v) { return to_float(v); }
template <typename T>
__device__ __forceinline__ T from_f(float v) { return from_float<T>(v); }

// The unsigned integer type of one V-element access.
template <int Bytes>
struct Word;
template <>
struct Word<16> { using type = uint4; };
template <>
struct Word<8> { using type = uint2; };
template <>
struct Word<4> { using type = uint32_t; };
template <>
struct Word<2> { using type = uint16_t; };

// out[i] = float(p[i]) for i < V; p is aligned to V * sizeof(T) bytes.
template <typename T, int V>
__device__ __forceinline__ void load(const T* __restrict__ p, float (&out)[V]) {
  if constexpr (V == 1) {
    out[0] = to_f(*p);
  } else {
    using W = typename Word<sizeof(T) * V>::type;
    const W w = *reinterpret_cast<const W*>(p);
    T t[V];
    memcpy(t, &w, sizeof(W));
#pragma unroll
    for (int i = 0; i < V; ++i) out[i] = to_f(t[i]);
  }
}

template <typename T, int V>
__device__ __forceinline__ void store(T* __restrict__ p, const float (&in)[V]) {
  if constexpr (V == 1) {
    *p = from_f<T>(in[0]);
  } else {
    using W = typename Word<sizeof(T) * V>::type;
    T t[V];
#pragma unroll
    for (int i = 0; i < V; ++i) t[i] = from_f<T>(in[i]);
    W w;
    memcpy(&w, t, sizeof(W));
    *reinterpret_cast<W*>(p) = w;
  }
}

// Float32 scratch (shared or global memory), V floats at a time: float4 accesses when V is a multiple
// of 4 (p then 16-byte aligned), else single floats.
template <int V>
__device__ __forceinline__ void load_f32(const float* p, float (&out)[V]) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int i = 0; i < V; i += 4) {
      const float4 q = *reinterpret_cast<const float4*>(p + i);
      out[i] = q.x, out[i + 1] = q.y, out[i + 2] = q.z, out[i + 3] = q.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) out[i] = p[i];
  }
}

template <int V>
__device__ __forceinline__ void store_f32(float* p, const float (&in)[V]) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int i = 0; i < V; i += 4) *reinterpret_cast<float4*>(p + i) = make_float4(in[i], in[i + 1], in[i + 2], in[i + 3]);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) p[i] = in[i];
  }
}

// p[i] += v[i] for i < V.
template <int V>
__device__ __forceinline__ void add_f32(float* p, const float (&v)[V]) {
  float cur[V];
  load_f32<V>(p, cur);
#pragma unroll
  for (int i = 0; i < V; ++i) cur[i] += v[i];
  store_f32<V>(p, cur);
}

// Sums v over the `width` lanes of an aligned sub-warp group (width a power of two <= 32; `mask` names
// the group's lanes). Every lane ends with the same bits: at each butterfly step both partners add the
// same two numbers, and float addition is commutative.
template <int NV>
__device__ __forceinline__ void subwarp_sum(float (&v)[NV], int width, unsigned mask) {
  for (int o = width >> 1; o > 0; o >>= 1) {
#pragma unroll
    for (int i = 0; i < NV; ++i) v[i] += __shfl_xor_sync(mask, v[i], o);
  }
}

// Sums v over the whole block (blockDim.x a multiple of 32, at most 32 warps). Each warp's total goes to
// buf[warp], then every thread adds buf[0..warps) in order: every thread ends with the same bits.
// Callers alternate between two buffers (one __syncthreads per sum): a buffer is written again only
// after a later sum's barrier, which every thread reaches after reading it.
template <int NV>
__device__ __forceinline__ void block_sum(float (&v)[NV], float (*buf)[NV]) {
  subwarp_sum<NV>(v, 32, kFullMask);
  const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if ((threadIdx.x & 31) == 0) {
#pragma unroll
    for (int i = 0; i < NV; ++i) buf[warp][i] = v[i];
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    float s = buf[0][i];
    for (int w = 1; w < warps; ++w) s += buf[w][i];
    v[i] = s;
  }
}

}  // namespace fastdiff::cuda::adaln_detail
