// 8-float vectors for the CPU kernels (GCC vector types: two SSE registers on the base build, one AVX
// register on the avx2 build) and the few operations that need intrinsics to be one instruction.
// Included inside no namespace by kernel files compiled once per ISA (FASTDIFF_ISA).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX__)
#include <immintrin.h>
#endif

// The base build passes these 32-byte vectors through memory where it does not inline (GCC warns
// that the ABI differs from AVX's); every helper is forced inline, so none is passed at all.
#pragma GCC diagnostic ignored "-Wpsabi"
#define FD_INLINE inline __attribute__((always_inline))

namespace fastdiff::cpu::FASTDIFF_ISA {
namespace {

constexpr int kW = 8;
typedef float vf __attribute__((vector_size(kW * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kW * sizeof(int32_t))));

FD_INLINE vf splat(float v) { return vf{} + v; }
FD_INLINE vf loadv(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
FD_INLINE void storev(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
// max(lo, v), min(hi, v) (v where v is NaN), and v where v >= lo else 0 (NaN kept): one instruction
// each on the avx2 build, where GCC would emit compare-and-blend pairs for the vector-type forms.
#if defined(__AVX__)
FD_INLINE __m256 m256(vf v) { return reinterpret_cast<__m256>(v); }
FD_INLINE vf vmax(vf lo, vf v) { return reinterpret_cast<vf>(_mm256_max_ps(m256(lo), m256(v))); }
FD_INLINE vf vmin(vf hi, vf v) { return reinterpret_cast<vf>(_mm256_min_ps(m256(hi), m256(v))); }
FD_INLINE vf zero_below(vf v, vf x, float lo) {
  return reinterpret_cast<vf>(_mm256_andnot_ps(_mm256_cmp_ps(m256(x), _mm256_set1_ps(lo), _CMP_LT_OQ), m256(v)));
}
#else
FD_INLINE vf vmax(vf lo, vf v) { return lo > v ? lo : v; }
FD_INLINE vf vmin(vf hi, vf v) { return hi < v ? hi : v; }
FD_INLINE vf zero_below(vf v, vf x, float lo) { return x < lo ? vf{} : v; }
#endif

}  // namespace
}  // namespace fastdiff::cpu::FASTDIFF_ISA
