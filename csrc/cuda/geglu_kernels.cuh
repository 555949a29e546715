// The CUDA geglu kernels' bodies, written so that the same code also compiles as plain C++ for the
// host emulator (tests/cuda_emu/geglu_emu_test.cpp, built with FASTDIFF_CUDA_EMULATE): each thread's
// work is a function of (block, blocks, thread, threads), which the __global__ wrappers in
// cuda/geglu.cu take from blockIdx / gridDim / threadIdx / blockDim and the emulator from its loops.
// The launch shape and the choice of specialisation (dispatch) are shared the same way.
//
// Work items: an item is N consecutive output columns of one row (rows r of x are [a | gate], 2H
// long). With kVector, N is one 16-byte access of the storage type (4 float32, 8 float16/bfloat16)
// and every access is a 128-bit load or store: that needs H % N == 0 and 16-byte aligned tensors.
// Otherwise N = 1 (odd H, unaligned views). Threads stride over the items (grid capped at kMaxBlocks).
// Arithmetic is float32: Phi(g) = erfc(-g / sqrt 2) / 2 (relatively accurate in the negative tail,
// where 1 + erf(...) cancels); the tanh form is g / (1 + exp(-2y)).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "geglu_args.h"

#if defined(FASTDIFF_CUDA_EMULATE)
#define FD_GEGLU_DEV inline
#else
#define FD_GEGLU_DEV __device__ __forceinline__
#endif

namespace fastdiff::cuda::geglu {

using half = __half;
using bf16 = __nv_bfloat16;

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;

FD_GEGLU_DEV float to_f(float v) { return v; }
FD_GEGLU_DEV float to_f(half v) { return __half2float(v); }
FD_GEGLU_DEV float to_f(bf16 v) { return __bfloat162float(v); }
template <typename T>
FD_GEGLU_DEV T from_f(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else if constexpr (std::is_same_v<T, half>) {
    return __float2half_rn(v);
  } else {
    return __float2bfloat16_rn(v);
  }
}

// One 16-byte word of T elements.
template <typename T>
union Word {
  static constexpr int kPer = static_cast<int>(16 / sizeof(T));
  uint4 word;
  T e[kPer];
};

// N consecutive elements as floats: one or more 16-byte words (kVector), else N == 1 scalar access.
template <int N, bool kVector, typename T>
FD_GEGLU_DEV void load(const T* p, float (&v)[N]) {
  if constexpr (kVector) {
    constexpr int kPer = Word<T>::kPer;
    static_assert(N % kPer == 0, "whole 16-byte words");
#pragma unroll
    for (int w = 0; w < N / kPer; ++w) {
      Word<T> raw;
      raw.word = reinterpret_cast<const uint4*>(p)[w];
#pragma unroll
      for (int i = 0; i < kPer; ++i) v[w * kPer + i] = to_f(raw.e[i]);
    }
  } else {
    static_assert(N == 1, "the scalar path moves one element");
    v[0] = to_f(*p);
  }
}

template <int N, bool kVector, typename T>
FD_GEGLU_DEV void store(T* p, const float (&v)[N]) {
  if constexpr (kVector) {
    constexpr int kPer = Word<T>::kPer;
#pragma unroll
    for (int w = 0; w < N / kPer; ++w) {
      Word<T> raw;
#pragma unroll
      for (int i = 0; i < kPer; ++i) raw.e[i] = from_f<T>(v[w * kPer + i]);
      reinterpret_cast<uint4*>(p)[w] = raw.word;
    }
  } else {
    *p = from_f<T>(v[0]);
  }
}

// gelu(g); with slope, also gelu'(g).
template <bool kTanh>
FD_GEGLU_DEV float gelu(float g, float* slope) {
  if constexpr (kTanh) {
    const float g2 = g * g;
    const float y = 0.7978845608028654f * (g + 0.044715f * g * g2);
    const float s = 1.0f / (1.0f + expf(-2.0f * y));
    if (slope) *slope = s + g * (2.0f * s * (1.0f - s)) * (0.7978845608028654f * (1.0f + 3.0f * 0.044715f * g2));
    return g * s;
  } else {
    const float cdf = 0.5f * erfcf(-0.7071067811865476f * g);
    if (slope) *slope = cdf + g * (0.3989422804014327f * expf(-0.5f * g * g));
    return g * cdf;
  }
}

// Item i -> (row, first column) for rows of per_row items of N columns.
template <int N>
FD_GEGLU_DEV void item_pos(int64_t i, int64_t per_row, int64_t* row, int64_t* col) {
  *row = i / per_row;
  *col = (i - *row * per_row) * N;
}

template <typename T, int N, bool kVector, bool kTanh>
FD_GEGLU_DEV void forward_thread(const GegluArgs& a, int64_t block, int64_t blocks, int thread, int threads) {
  const int64_t h = a.half, per_row = h / N, items = a.rows * per_row;
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  for (int64_t i = block * threads + thread; i < items; i += blocks * threads) {
    int64_t r, c;
    item_pos<N>(i, per_row, &r, &c);
    float av[N], gv[N], ov[N];
    load<N, kVector>(x + r * 2 * h + c, av);
    load<N, kVector>(x + r * 2 * h + h + c, gv);
#pragma unroll
    for (int k = 0; k < N; ++k) ov[k] = av[k] * gelu<kTanh>(gv[k], nullptr);
    store<N, kVector>(out + r * h + c, ov);
  }
}

template <typename T, int N, bool kVector, bool kTanh>
FD_GEGLU_DEV void backward_thread(const GegluArgs& a, int64_t block, int64_t blocks, int thread, int threads) {
  const int64_t h = a.half, per_row = h / N, items = a.rows * per_row;
  const T* x = static_cast<const T*>(a.x);
  const T* go = static_cast<const T*>(a.grad_out);
  T* gx = static_cast<T*>(a.grad_x);
  for (int64_t i = block * threads + thread; i < items; i += blocks * threads) {
    int64_t r, c;
    item_pos<N>(i, per_row, &r, &c);
    float av[N], gv[N], gov[N], dav[N], dgv[N];
    load<N, kVector>(x + r * 2 * h + c, av);
    load<N, kVector>(x + r * 2 * h + h + c, gv);
    load<N, kVector>(go + r * h + c, gov);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      float slope;
      dav[k] = gov[k] * gelu<kTanh>(gv[k], &slope);
      dgv[k] = gov[k] * av[k] * slope;
    }
    store<N, kVector>(gx + r * 2 * h + c, dav);
    store<N, kVector>(gx + r * 2 * h + h + c, dgv);
  }
}

// ---- host side, shared by the launchers and the emulator ------------------------------------------
template <typename T>
struct Tag {
  using type = T;
};
template <bool B>
using Flag = std::integral_constant<bool, B>;

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Whether the 16-byte path serves this call (bytes: the storage type's size).
inline bool vector_path(const GegluArgs& a, bool backward, int bytes) {
  const int64_t per = 16 / bytes;
  if (a.half % per) return false;
  return backward ? aligned16(a.x) && aligned16(a.grad_out) && aligned16(a.grad_x) : aligned16(a.x) && aligned16(a.out);
}

// Blocks of kThreads threads for `items` work items (at least 1; the caller skips empty problems).
inline int64_t blocks_for(int64_t items) {
  const int64_t b = (items + kThreads - 1) / kThreads;
  return b < 1 ? 1 : (b < kMaxBlocks ? b : kMaxBlocks);
}

// Calls fn(Tag<T>, std::integral_constant<int, N>, Flag<kVector>, Flag<kTanh>, items) for this call's
// specialisation; returns what fn returns.
template <typename Fn>
auto dispatch(const GegluArgs& a, bool backward, Fn&& fn) {
  auto with_type = [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int kN = static_cast<int>(16 / sizeof(T));
    auto with_tanh = [&](auto vec, auto n) {
      const int64_t items = a.rows * (a.half / decltype(n)::value);
      return a.tanh ? fn(tag, n, vec, Flag<true>{}, items) : fn(tag, n, vec, Flag<false>{}, items);
    };
    return vector_path(a, backward, sizeof(T)) ? with_tanh(Flag<true>{}, std::integral_constant<int, kN>{})
                                               : with_tanh(Flag<false>{}, std::integral_constant<int, 1>{});
  };
  switch (a.dtype) {
    case DType::f16: return with_type(Tag<half>{});
    case DType::bf16: return with_type(Tag<bf16>{});
    default: return with_type(Tag<float>{});
  }
}

}  // namespace fastdiff::cuda::geglu
