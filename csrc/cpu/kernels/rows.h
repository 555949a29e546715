// Row helpers of the CPU kernels (torch-free; included by cpu/kernels/*.cpp, which are compiled once
// per ISA: everything here lives in that ISA's namespace so the builds never share a symbol).
// Rows of float tensors are used in place; float16 / bfloat16 rows are converted into float32
// buffers by dedicated loops (F16C intrinsics for float16 on the avx2 build, where GCC does not
// vectorise _Float16 conversions; integer shifts for bfloat16). Reductions keep kLanes independent
// accumulators: without -ffast-math a single scalar accumulator would not vectorise.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif

#include "cpu/kernels/convert.h"

namespace fastdiff::cpu::FASTDIFF_ISA {

constexpr int kLanes = 16;

inline float lanes_total(const float* acc) {
  float s = 0.0f;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

inline float row_sum(const float* __restrict v, int64_t n) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += v[j + l];
  for (; j < n; ++j) acc[0] += v[j];
  return lanes_total(acc);
}

inline float row_dot(const float* __restrict u, const float* __restrict v, int64_t n) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += u[j + l] * v[j + l];
  for (; j < n; ++j) acc[0] += u[j] * v[j];
  return lanes_total(acc);
}

// sum((v - c)^2)
inline float row_sq_dev(const float* __restrict v, int64_t n, float c) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float d = v[j + l] - c;
      acc[l] += d * d;
    }
  for (; j < n; ++j) acc[0] += (v[j] - c) * (v[j] - c);
  return lanes_total(acc);
}

// ---- conversion of whole rows ----------------------------------------------------------------
template <typename T>
inline void to_floats(const T* __restrict src, int64_t n, float* __restrict dst) {
  for (int64_t j = 0; j < n; ++j) dst[j] = to_float(src[j]);
}

template <typename T>
inline void from_floats(const float* __restrict src, int64_t n, T* __restrict dst) {
  for (int64_t j = 0; j < n; ++j) dst[j] = from_float<T>(src[j]);
}

#if defined(__F16C__) && defined(__AVX__)
template <>
inline void to_floats<half>(const half* __restrict src, int64_t n, float* __restrict dst) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j))));
  for (; j < n; ++j) dst[j] = to_float(src[j]);
}

template <>
inline void from_floats<half>(const float* __restrict src, int64_t n, half* __restrict dst) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; j < n; ++j) dst[j] = from_float<half>(src[j]);
}
#endif

// A row as float32: the storage itself for float, else converted into buf.
template <typename T>
inline const float* in_row(const T* src, int64_t n, float* buf) {
  if constexpr (std::is_same_v<T, float>) {
    return src;
  } else {
    to_floats(src, n, buf);
    return buf;
  }
}

// Where to compute an output row in float32: the output itself for float, else buf (then flush it).
template <typename T>
inline float* out_row(T* dst, float* buf) {
  if constexpr (std::is_same_v<T, float>) {
    return dst;
  } else {
    return buf;
  }
}

template <typename T>
inline void flush(T* dst, const float* buf, int64_t n) {
  if constexpr (!std::is_same_v<T, float>) from_floats(buf, n, dst);
}

// Float scratch rows, one allocation per kernel call.
struct Scratch {
  std::vector<float> mem;
  int64_t d;
  Scratch(int rows, int64_t dim) : mem(static_cast<size_t>(rows * dim)), d(dim) {}
  float* operator[](int i) { return mem.data() + i * d; }
};

}  // namespace fastdiff::cpu::FASTDIFF_ISA
