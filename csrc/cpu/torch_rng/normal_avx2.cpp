// torch.randn's CPU float path, reproduced bit for bit and run without its per-number overhead.
//
// PyTorch's normal_fill (ATen/native/cpu/DistributionTemplates.h, AVX2/AVX-512 builds) draws one
// MT19937 word per element through a virtual call, converts it to a uniform in [0, 1), then turns
// each 16 uniforms into 16 normals by Box-Muller over the pairs (j, j + 8) with the Cephes-derived
// log256_ps/sincos256_ps of ATen/native/cpu/avx_mathfun.h. The engine update, the tempering and the
// conversion are plain integer arithmetic, so a tight loop gives the same numbers several times
// faster; the Box-Muller here is the same header's code on the same instruction set. Whether the
// build reproduces PyTorch's floating-point contractions is checked at run time against torch.randn
// itself (fastdiff/ops/randn.py), never assumed.
//
// Compiled only with -mavx2 -mfma, apart from the per-ISA kernels: this file includes no torch
// header except avx_mathfun.h (intrinsics only), so no AVX2 copy of a shared inline function can
// leak into code that runs on older CPUs.
#include <immintrin.h>

#include <cstdint>

#define CPU_CAPABILITY_AVX2 1
#include <ATen/native/cpu/avx_mathfun.h>

#include "cpu/torch_rng/torch_rng.h"

namespace fastdiff::cpu::torch_rng {
namespace {

constexpr int kN = 624, kM = 397;
constexpr uint32_t kMatrixA = 0x9908b0dfu, kUpper = 0x80000000u, kLower = 0x7fffffffu;

inline uint32_t twist(uint32_t u, uint32_t v) {
  return ((((u & kUpper) | (v & kLower)) >> 1) ^ ((v & 1u) ? kMatrixA : 0u));
}

// at::mt19937's next_state.
void next_state(MtState& s) {
  uint32_t* p = s.state;
  int j = 0;
  for (; j < kN - kM; ++j) p[j] = p[j + kM] ^ twist(p[j], p[j + 1]);
  for (; j < kN - 1; ++j) p[j] = p[j + kM - kN] ^ twist(p[j], p[j + 1]);
  p[kN - 1] = p[kM - 1] ^ twist(p[kN - 1], p[0]);
  s.left = kN;
  s.next = 0;
}

inline uint32_t temper(uint32_t y) {
  y ^= (y >> 11);
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= (y >> 18);
  return y;
}

// uniform_real_distribution<float>(0, 1): the low 24 bits of a word, times 2^-24 (exact).
inline float uniform(uint32_t word) { return static_cast<float>(word & 0xffffffu) * (1.0f / 16777216.0f); }

// n uniforms, in the order at::mt19937's operator() yields their words: each call decrements
// `left` and reads state[next++], twisting first when `left` reaches 0.
void fill_uniform(MtState& s, float* out, int64_t n) {
  while (n > 0) {
    const int64_t run = n < s.left - 1 ? n : s.left - 1;  // words readable before the next twist
    const uint32_t* src = s.state + s.next;
    for (int64_t i = 0; i < run; ++i) out[i] = uniform(temper(src[i]));
    s.left -= static_cast<int>(run);
    s.next += static_cast<uint32_t>(run);
    out += run;
    n -= run;
    if (n > 0) {  // the call that finds left == 1 twists, then reads state[0]
      next_state(s);
      out[0] = uniform(temper(s.state[0]));
      s.next = 1;
      ++out;
      --n;
    }
  }
}

// NormalFill16<float, true>::operator() at mean 0, std 1.
inline void box_muller_16(float* data) {
  const __m256 one = _mm256_set1_ps(1.0f), minus_two = _mm256_set1_ps(-2.0f);
  const __m256 two_pi = _mm256_set1_ps(static_cast<float>(2.0f * 3.14159265358979323846));
  const __m256 mean = _mm256_set1_ps(0.0f), stdv = _mm256_set1_ps(1.0f);
  const __m256 u1 = _mm256_sub_ps(one, _mm256_loadu_ps(data));
  const __m256 u2 = _mm256_loadu_ps(data + 8);
  const __m256 radius = _mm256_sqrt_ps(_mm256_mul_ps(minus_two, log256_ps(u1)));
  const __m256 theta = _mm256_mul_ps(two_pi, u2);
  __m256 sintheta, costheta;
  sincos256_ps(theta, &sintheta, &costheta);
  const __m256 n1 = _mm256_mul_ps(radius, costheta);
  const __m256 n2 = _mm256_mul_ps(radius, sintheta);
  _mm256_storeu_ps(data, _mm256_fmadd_ps(n1, stdv, mean));
  _mm256_storeu_ps(data + 8, _mm256_fmadd_ps(n2, stdv, mean));
}

}  // namespace

void normal_fill(MtState& s, float* data, int64_t n, bool whole_buffer_first) {
  // float32 fills all n uniforms up front; float16/bfloat16 go 16 at a time and never draw the
  // n % 16 that the redrawn tail replaces
  fill_uniform(s, data, whole_buffer_first ? n : n - n % 16);
  for (int64_t i = 0; i + 16 <= n; i += 16) box_muller_16(data + i);
  if (n % 16 != 0) {  // PyTorch redraws the last 16 values
    float* tail = data + n - 16;
    fill_uniform(s, tail, 16);
    box_muller_16(tail);
  }
}

}  // namespace fastdiff::cpu::torch_rng
