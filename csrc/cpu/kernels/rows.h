// Whole rows between storage types and float32, for the kernels that compute in float32 buffers:
// simple loops GCC vectorises, F16C intrinsics for float16 on the avx2 build (GCC does not vectorise
// _Float16 conversions), integer shifts for bfloat16. Included by csrc/cpu/kernels/*.cpp only, inside
// no namespace: everything here is inline in fastdiff::cpu::FASTDIFF_ISA (one copy per ISA build).
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif

#include "cpu/kernels/convert.h"

namespace fastdiff::cpu::FASTDIFF_ISA {

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

}  // namespace fastdiff::cpu::FASTDIFF_ISA
