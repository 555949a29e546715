// CPU group_norm (+ SiLU) kernels (torch-free; compiled once per ISA, see group_norm.h).
//
// NCHW: a task is one contiguous segment per channel (a block of one channel's positions), walked by
// the seg_* loops below: on the avx2 build 8 lanes at a time straight from the storage type, with
// vector accumulators kept across the segment (folded into double every kFold elements and reduced
// across lanes once per segment); on the base build in kChunk-element rows of float32. Statistics
// take one pass (sums around a sampled centre), the output one more with scale and shift folded
// per channel; the backward one pass for the sums (keeping dy) and one for dx.
// Channels-last: a task walks "rows" (one position's C channels) with per-channel constants held as
// rows, reductions across rows per channel (statistics in one pass around the mean of the first rows);
// on the avx2 build the row loops are 8-channel vectors like the NCHW ones, and the backward keeps
// k1 * dy of a float32 tensor in grad_x between its two passes as the NCHW path does.
// Outputs of 4 MiB or more are written with non-temporal stores on the avx2 build (stream_output).
// SiLU needs exp: the avx2 build evaluates it 8 lanes at a time with a table and a polynomial (GCC does
// not vectorise std::exp without -ffast-math), the base build calls std::exp.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define FASTDIFF_GN_VEC 1
#else
#define FASTDIFF_GN_VEC 0
#endif

#include "cpu/kernels/group_norm.h"
#include "cpu/kernels/rows.h"

namespace fastdiff::cpu::FASTDIFF_ISA {
namespace {

// ---- SiLU ----------------------------------------------------------------------------------------
#if FASTDIFF_GN_VEC
// 1 + exp(-y), y clamped to [-88, 87]: -y = k ln2 / 8 - r with k an integer and |r| <= ln2/16
// (ln2/8 split in two for an exact k ln2/8), so exp(-y) = 2^(k >> 3) * 2^((k & 7) / 8) * exp(-r):
// 2^((k & 7) / 8) from an 8-entry table held in one register (vpermps reads only the low 3 bits
// of each index), exp(-r) = 1 - r + r^2/2 - r^3/6 (relative error < 1.5e-7 on that range; ~3e-7
// for silu with float32 evaluation; the tests' float32 tolerance is 1e-5), 2^(k >> 3) by adding
// k >> 3 to the table entry's exponent bits (normal over the whole clamped range). k is rounded by
// adding 1.5 * 2^23, whose low mantissa bits are then k itself. Against a degree-5 polynomial over
// |r| <= ln2/2 this trades two fused multiply-adds for a permute and an and: the SiLU loops are bound
// by the two FMA pipes (measured 18% faster per element on Zen 4).
//
// The functions take U vectors and interleave their U chains step by step: the chains are long
// (~80 cycles of latency through the division), and independent instructions side by side keep the
// pipes busy where one chain at a time would leave the schedulers full of waiting steps.
template <int U>
inline void one_plus_exp_neg(const __m256* y, __m256* out) {
  const __m256 magic = _mm256_set1_ps(12582912.0f), one = _mm256_set1_ps(1.0f);
  const __m256 table = _mm256_setr_ps(1.0f, 1.0905077326652577f, 1.189207115002721f, 1.2968395546510096f,
                                      1.4142135623730951f, 1.5422108254079407f, 1.681792830507429f,
                                      1.8340080864093424f);  // 2^(j/8)
  __m256 v[U], t[U], r[U], p[U];
  for (int u = 0; u < U; ++u) v[u] = _mm256_min_ps(_mm256_max_ps(y[u], _mm256_set1_ps(-88.0f)), _mm256_set1_ps(87.0f));
  for (int u = 0; u < U; ++u) t[u] = _mm256_fmadd_ps(v[u], _mm256_set1_ps(-8.0f * 1.44269504088896341f), magic);
  for (int u = 0; u < U; ++u) {
    const __m256 k = _mm256_sub_ps(t[u], magic);
    r[u] = _mm256_fmadd_ps(k, _mm256_set1_ps(0.693359375f / 8.0f), v[u]);
    r[u] = _mm256_fmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f / 8.0f), r[u]);
  }
  for (int u = 0; u < U; ++u) p[u] = _mm256_fmadd_ps(_mm256_set1_ps(-1.0f / 6.0f), r[u], _mm256_set1_ps(0.5f));
  for (int u = 0; u < U; ++u) p[u] = _mm256_fmadd_ps(p[u], r[u], _mm256_set1_ps(-1.0f));
  for (int u = 0; u < U; ++u) p[u] = _mm256_fmadd_ps(p[u], r[u], one);
  for (int u = 0; u < U; ++u) {
    const __m256i ti = _mm256_castps_si256(t[u]);
    // (k >> 3) << 23: t's bits above k's shift out, k's low 3 bits are masked off.
    const __m256i e = _mm256_and_si256(_mm256_slli_epi32(ti, 20), _mm256_set1_epi32(static_cast<int>(0xFF800000u)));
    const __m256 scale = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(_mm256_permutevar8x32_ps(table, ti)), e));
    out[u] = _mm256_fmadd_ps(p[u], scale, one);
  }
}

// y = silu(y) = y / (1 + exp(-y)); the division runs on the divider, beside the FMA pipes.
template <int U>
inline void silu_n(__m256* y) {
  __m256 d[U];
  one_plus_exp_neg<U>(y, d);
  for (int u = 0; u < U; ++u) y[u] = _mm256_div_ps(y[u], d[u]);
}

// out = silu'(y) = s (1 + y (1 - s)), s = sigmoid(y)
template <int U>
inline void silu_grad_n(const __m256* y, __m256* out) {
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 d[U];
  one_plus_exp_neg<U>(y, d);
  for (int u = 0; u < U; ++u) {
    const __m256 s = _mm256_div_ps(one, d[u]);
    out[u] = _mm256_mul_ps(s, _mm256_fmadd_ps(y[u], _mm256_sub_ps(one, s), one));
  }
}

inline __m256 silu8(__m256 y) {
  silu_n<1>(&y);
  return y;
}

inline __m256 silu_grad8(__m256 y) {
  __m256 d;
  silu_grad_n<1>(&y, &d);
  return d;
}
#endif

inline float sigmoid1(float y) { return 1.0f / (1.0f + std::exp(-y)); }

// v = v * sigmoid(v)
void silu_inplace(float* __restrict v, int64_t n) {
  int64_t j = 0;
#if FASTDIFF_GN_VEC
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(v + j, silu8(_mm256_loadu_ps(v + j)));
#endif
  for (; j < n; ++j) v[j] *= sigmoid1(v[j]);
}

// dy = g * silu'(y)
void silu_grad(const float* __restrict y, const float* __restrict g, float* __restrict dy, int64_t n) {
  int64_t j = 0;
#if FASTDIFF_GN_VEC
  for (; j + 8 <= n; j += 8)
    _mm256_storeu_ps(dy + j, _mm256_mul_ps(_mm256_loadu_ps(g + j), silu_grad8(_mm256_loadu_ps(y + j))));
#endif
  for (; j < n; ++j) {
    const float s = sigmoid1(y[j]);
    dy[j] = g[j] * (s * (1.0f + y[j] * (1.0f - s)));
  }
}

// ---- NCHW segments: one channel's contiguous run of positions ------------------------------------
// The loops take the per-channel constants folded so that each element costs one subtraction and
// fused multiply-adds; the subtraction of the mean comes first (as in the reference) so that data
// with a large mean loses nothing to cancellation.
struct SegStats {
  double s1 = 0.0, s2 = 0.0;
};

struct SegGrad {
  double a = 0.0, b = 0.0;  // sum dy, sum dy * xhat
};

// Per-channel constants of the backward: xhat = (x - mean) * rstd, y = (x - mean) * scale + bias
// (scale = rstd * w), and dx = k1 * dy + kx * (x - mean) + k0.
struct SegCoef {
  float mean, rstd, scale, bias, k1, kx, k0;
};

#if FASTDIFF_GN_VEC
// Elements summed in float32 vector lanes before the partial sums are added into double.
constexpr int64_t kFold = 1024;

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline __m256 load8(const bf16* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
inline void store8(half* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
// Round to nearest even (as from_float<bf16>); NaN becomes the quiet NaN 0x7FC0.
inline void store8(bf16* p, __m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), odd), 16);
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}

// Non-temporal stores of 8 values: straight to memory, without first reading the destination's cache
// lines (a normal store to a line not in cache reads it in: for an output larger than the caches
// that doubles its memory traffic; measured at (1, 512, 64, 64), 1 thread: plain forward 0.81 -> 0.48
// ms, with SiLU 1.03 -> 0.91 ms).
// The address must be aligned to the store's width (32 bytes for float, 16 for half and bf16).
inline void stream8(float* p, __m256 v) { _mm256_stream_ps(p, v); }
inline void stream8(half* p, __m256 v) {
  _mm_stream_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline void stream8(bf16* p, __m256 v) {
  alignas(16) bf16 tmp[8];
  store8(tmp, v);
  _mm_stream_si128(reinterpret_cast<__m128i*>(p), _mm_load_si128(reinterpret_cast<const __m128i*>(tmp)));
}
template <typename T>
inline bool stream_aligned(const T* p) {
  return (reinterpret_cast<uintptr_t>(p) & (8 * sizeof(T) - 1)) == 0;
}

// The last r < 8 elements, padded with `pad`.
template <typename T>
inline __m256 load_part(const T* p, int64_t r, float pad) {
  alignas(32) float f[8];
  for (int i = 0; i < 8; ++i) f[i] = i < r ? to_float(p[i]) : pad;
  return _mm256_load_ps(f);
}
inline __m256 load_part(const float* p, int64_t r, float pad) {
  alignas(32) float f[8];
  for (int i = 0; i < 8; ++i) f[i] = i < r ? p[i] : pad;
  return _mm256_load_ps(f);
}
inline double hsum(__m256d v) {
  const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
// acc += v, lane pairs widened to double.
inline void widen_add(__m256d& acc, __m256 v) {
  acc = _mm256_add_pd(acc, _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                                         _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))));
}
inline __m256 add4(const __m256* v) { return _mm256_add_ps(_mm256_add_ps(v[0], v[1]), _mm256_add_ps(v[2], v[3])); }

// Prefetches the element `ahead` elements past x + j (ahead 0: none); callers issue one per 16
// elements. Addresses past the tensor are harmless (a prefetch never faults), so they are formed as
// integers.
template <typename T>
inline void prefetch_ahead(const T* x, int64_t j, int64_t ahead) {
  if (ahead) {
    const uintptr_t at = reinterpret_cast<uintptr_t>(x) + static_cast<uintptr_t>(j + ahead) * sizeof(T);
    _mm_prefetch(reinterpret_cast<const char*>(at), _MM_HINT_T0);
  }
}

// How far ahead the passes that stream x (and grad_out) from memory prefetch their own stream: the
// hardware's stream prefetch alone left the backward's first pass waiting on memory (measured: 15-20%
// of the backward at (1, 512, 64, 64) on 1 thread).
constexpr int64_t kStreamAhead = 512;

// sum(x) in float32 lanes (for the centre of seg_dev_sums, whose sums correct it exactly).
template <typename T>
float seg_sum(const T* x, int64_t n) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t j = 0;
  for (; j + 32 <= n; j += 32)
    for (int k = 0; k < 4; ++k) acc[k] = _mm256_add_ps(acc[k], load8(x + j + 8 * k));
  for (; j + 8 <= n; j += 8) acc[0] = _mm256_add_ps(acc[0], load8(x + j));
  if (j < n) acc[1] = _mm256_add_ps(acc[1], load_part(x + j, n - j, 0.0f));
  return hsum(add4(acc));
}

// sum(x - m), sum((x - m)^2): four float32 vector accumulators per kFold elements, then double.
template <typename T>
SegStats seg_dev_sums(const T* x, int64_t n, float m) {
  const __m256 mv = _mm256_set1_ps(m), zero = _mm256_setzero_ps();
  __m256d w1 = _mm256_setzero_pd(), w2 = _mm256_setzero_pd();
  int64_t j = 0;
  while (j + 8 <= n) {
    const int64_t end = std::min(n, j + kFold);
    __m256 a1[4] = {zero, zero, zero, zero}, a2[4] = {zero, zero, zero, zero};
    for (; j + 32 <= end; j += 32) {
      prefetch_ahead(x, j, kStreamAhead), prefetch_ahead(x, j + 16, kStreamAhead);
      for (int k = 0; k < 4; ++k) {
        const __m256 d = _mm256_sub_ps(load8(x + j + 8 * k), mv);
        a1[k] = _mm256_add_ps(a1[k], d);
        a2[k] = _mm256_fmadd_ps(d, d, a2[k]);
      }
    }
    for (; j + 8 <= end; j += 8) {
      const __m256 d = _mm256_sub_ps(load8(x + j), mv);
      a1[0] = _mm256_add_ps(a1[0], d);
      a2[0] = _mm256_fmadd_ps(d, d, a2[0]);
    }
    widen_add(w1, add4(a1)), widen_add(w2, add4(a2));
  }
  if (j < n) {
    const __m256 d = _mm256_sub_ps(load_part(x + j, n - j, m), mv);
    widen_add(w1, d), widen_add(w2, _mm256_mul_ps(d, d));
  }
  return {hsum(w1), hsum(w2)};
}

// Constants of the forward and backward loops, as vectors.
struct SegVec {
  __m256 mean, rstd, scale, bias, k1, kx, k0;
  explicit SegVec(const SegCoef& k)
      : mean(_mm256_set1_ps(k.mean)), rstd(_mm256_set1_ps(k.rstd)), scale(_mm256_set1_ps(k.scale)),
        bias(_mm256_set1_ps(k.bias)), k1(_mm256_set1_ps(k.k1)), kx(_mm256_set1_ps(k.kx)), k0(_mm256_set1_ps(k.k0)) {}
};

// Vectors per step of the SiLU loops (see one_plus_exp_neg).
constexpr int kU = 4;

// The last r < 8 elements of x (and g) as a padded float row of 8, for the loops' U = 1 bodies.
template <typename T>
inline void pad_row(const T* x, int64_t r, float pad, float* row) {
  for (int i = 0; i < 8; ++i) row[i] = i < r ? to_float(x[i]) : pad;
}

// out = act((x - mean) * scale + bias) of U vectors (non-temporal stores when Stream: out aligned).
template <int U, bool Silu, bool Stream = false, typename T>
inline void apply_n(const T* x, const SegVec& k, T* out) {
  __m256 y[U];
  for (int u = 0; u < U; ++u) y[u] = _mm256_fmadd_ps(_mm256_sub_ps(load8(x + 8 * u), k.mean), k.scale, k.bias);
  if (Silu) silu_n<U>(y);
  for (int u = 0; u < U; ++u) Stream ? stream8(out + 8 * u, y[u]) : store8(out + 8 * u, y[u]);
}

// out = act((x - mean) * scale + bias); see seg_apply_task for `ahead` and `stream`.
template <bool Silu, bool Stream, typename T>
void seg_apply(const T* x, int64_t n, const SegCoef& c, T* out, int64_t ahead) {
  const SegVec k(c);
  int64_t j = 0;
  for (; j + 8 * kU <= n; j += 8 * kU) {
    for (int64_t q = 0; q < 8 * kU; q += 16) prefetch_ahead(x, j + q, ahead);
    apply_n<kU, Silu, Stream>(x + j, k, out + j);
  }
  for (; j + 8 <= n; j += 8) apply_n<1, Silu, Stream>(x + j, k, out + j);
  if (j < n) {
    float row[8], o[8];
    pad_row(x + j, n - j, c.mean, row);
    apply_n<1, Silu>(row, k, o);
    for (int64_t i = 0; i < n - j; ++i) out[j + i] = from_float<T>(o[i]);
  }
}

// dy (the gradient at y) of U vectors, d = x - mean: g through SiLU's derivative at y.
template <int U, bool Silu, typename T>
inline void dy_n(const __m256* d, const T* g, const SegVec& k, __m256* dy) {
  if (Silu) {
    __m256 y[U];
    for (int u = 0; u < U; ++u) y[u] = _mm256_fmadd_ps(d[u], k.scale, k.bias);
    silu_grad_n<U>(y, dy);
    for (int u = 0; u < U; ++u) dy[u] = _mm256_mul_ps(dy[u], load8(g + 8 * u));
  } else {
    for (int u = 0; u < U; ++u) dy[u] = load8(g + 8 * u);
  }
}

// aa[u] += dy, ab[u] += dy * (x - mean) over U vectors; k1 * dy stored at dst (if not null).
template <int U, bool Silu, typename T>
inline void grad_sums_n(const T* x, const T* g, const SegVec& k, float* dst, __m256* aa, __m256* ab) {
  __m256 d[U], dy[U];
  for (int u = 0; u < U; ++u) d[u] = _mm256_sub_ps(load8(x + 8 * u), k.mean);
  dy_n<U, Silu>(d, g, k, dy);
  for (int u = 0; u < U; ++u) {
    if (dst) _mm256_storeu_ps(dst + 8 * u, _mm256_mul_ps(k.k1, dy[u]));
    aa[u] = _mm256_add_ps(aa[u], dy[u]);
    ab[u] = _mm256_fmadd_ps(dy[u], d[u], ab[u]);  // sum dy * (x - mean): times rstd once at the end
  }
}

// Backward sums of a segment; with dy_out, k1 * dy is also stored there (float32; see group_norm.h).
template <bool Silu, typename T>
SegGrad seg_grad_sums(const T* x, const T* g, int64_t n, const SegCoef& c, float* dy_out) {
  const SegVec k(c);
  const __m256 zero = _mm256_setzero_ps();
  __m256d wa = _mm256_setzero_pd(), wb = _mm256_setzero_pd();
  int64_t j = 0;
  while (j + 8 <= n) {
    const int64_t end = std::min(n, j + kFold);
    __m256 aa[kU], ab[kU];
    for (int u = 0; u < kU; ++u) aa[u] = ab[u] = zero;
    for (; j + 8 * kU <= end; j += 8 * kU) {
      for (int64_t q = 0; q < 8 * kU; q += 16) prefetch_ahead(x, j + q, kStreamAhead), prefetch_ahead(g, j + q, kStreamAhead);
      grad_sums_n<kU, Silu>(x + j, g + j, k, dy_out ? dy_out + j : nullptr, aa, ab);
    }
    for (; j + 8 <= end; j += 8) grad_sums_n<1, Silu>(x + j, g + j, k, dy_out ? dy_out + j : nullptr, aa, ab);
    widen_add(wa, add4(aa)), widen_add(wb, add4(ab));
  }
  if (j < n) {  // padding: x = mean and g = 0 add nothing
    float xr[8], gr[8], dr[8];
    pad_row(x + j, n - j, c.mean, xr), pad_row(g + j, n - j, 0.0f, gr);
    __m256 aa = zero, ab = zero;
    grad_sums_n<1, Silu>(xr, gr, k, dr, &aa, &ab);
    if (dy_out) std::copy_n(dr, n - j, dy_out + j);
    widen_add(wa, aa), widen_add(wb, ab);
  }
  return {hsum(wa), hsum(wb) * static_cast<double>(c.rstd)};
}

// dx = k1 * dy + kx * (x - mean) + k0 of U vectors; k1 * dy from dy_in (float32, possibly dx itself)
// or dy recomputed from g.
template <int U, bool Silu, bool Stream = false, typename T>
inline void grad_x_n(const T* x, const T* g, const float* dy_in, const SegVec& k, T* dx) {
  __m256 d[U], dy[U], o[U];
  for (int u = 0; u < U; ++u) d[u] = _mm256_sub_ps(load8(x + 8 * u), k.mean);
  if (dy_in) {
    for (int u = 0; u < U; ++u) o[u] = _mm256_add_ps(_mm256_loadu_ps(dy_in + 8 * u), _mm256_fmadd_ps(k.kx, d[u], k.k0));
  } else {
    dy_n<U, Silu>(d, g, k, dy);
    for (int u = 0; u < U; ++u) o[u] = _mm256_fmadd_ps(k.k1, dy[u], _mm256_fmadd_ps(k.kx, d[u], k.k0));
  }
  for (int u = 0; u < U; ++u) Stream ? stream8(dx + 8 * u, o[u]) : store8(dx + 8 * u, o[u]);
}

// dx of a segment, from dy_in (what seg_grad_sums stored) or from g.
// No prefetch of the next group here (unlike seg_apply): x, grad_out and the stored k1 * dy of the
// group already fill most of the L2, and prefetching the next group's x and grad_out on top measured
// slower (2.0 against 2.3 ms at (1, 512, 64, 64), 1 thread).
template <bool Silu, bool Stream, typename T>
void seg_grad_x(const T* x, const T* g, const float* dy_in, int64_t n, const SegCoef& c, T* dx) {
  const SegVec k(c);
  int64_t j = 0;
  for (; j + 8 * kU <= n; j += 8 * kU) grad_x_n<kU, Silu, Stream>(x + j, g + j, dy_in ? dy_in + j : nullptr, k, dx + j);
  for (; j + 8 <= n; j += 8) grad_x_n<1, Silu, Stream>(x + j, g + j, dy_in ? dy_in + j : nullptr, k, dx + j);
  if (j < n) {
    float xr[8], gr[8], dr[8] = {}, o[8];
    pad_row(x + j, n - j, c.mean, xr), pad_row(g + j, n - j, 0.0f, gr);
    if (dy_in) std::copy_n(dy_in + j, n - j, dr);
    grad_x_n<1, Silu>(xr, gr, dy_in ? dr : nullptr, k, o);
    for (int64_t i = 0; i < n - j; ++i) dx[j + i] = from_float<T>(o[i]);
  }
}
#else
// Base build: the same loops in kChunk-element float32 rows.
template <typename T>
float seg_sum(const T* x, int64_t n) {
  float row[kChunk];
  double acc = 0.0;
  for (int64_t j = 0; j < n; j += kChunk) {
    const int64_t m = std::min(kChunk, n - j);
    acc += row_sum(in_row(x + j, m, row), m);
  }
  return static_cast<float>(acc);
}

template <typename T>
SegStats seg_dev_sums(const T* x, int64_t n, float c) {
  float row[kChunk];
  SegStats s;
  for (int64_t j = 0; j < n; j += kChunk) {
    const int64_t m = std::min(kChunk, n - j);
    const float* v = in_row(x + j, m, row);
    float a1[kLanes] = {}, a2[kLanes] = {};
    for (int64_t i = 0; i < m; ++i) {
      const float d = v[i] - c;
      a1[i % kLanes] += d, a2[i % kLanes] += d * d;
    }
    s.s1 += lanes_total(a1), s.s2 += lanes_total(a2);
  }
  return s;
}

template <bool Silu, bool /*Stream*/, typename T>
void seg_apply(const T* x, int64_t n, const SegCoef& k, T* out, int64_t /*ahead*/) {
  const float mean = k.mean, scale = k.scale, bias = k.bias;
  float row[kChunk], obuf[kChunk];
  for (int64_t j = 0; j < n; j += kChunk) {
    const int64_t m = std::min(kChunk, n - j);
    const float* v = in_row(x + j, m, row);
    float* o = out_row(out + j, obuf);
    for (int64_t i = 0; i < m; ++i) o[i] = (v[i] - mean) * scale + bias;
    if (Silu) silu_inplace(o, m);
    flush(out + j, o, m);
  }
}

// dy of a row of m <= kChunk elements into dy (d: x - mean, also returned).
template <bool Silu, typename T>
void row_dy(const T* x, const T* g, int64_t m, const SegCoef& k, float* d, float* dy) {
  const float* v = in_row(x, m, d);
  for (int64_t i = 0; i < m; ++i) d[i] = v[i] - k.mean;
  float gbuf[kChunk];
  const float* gv = in_row(g, m, gbuf);
  if (Silu) {
    float y[kChunk];
    for (int64_t i = 0; i < m; ++i) y[i] = d[i] * k.scale + k.bias;
    silu_grad(y, gv, dy, m);
  } else {
    std::copy_n(gv, m, dy);
  }
}

template <bool Silu, typename T>
SegGrad seg_grad_sums(const T* x, const T* g, int64_t n, const SegCoef& k, float* dy_out) {
  float d[kChunk], dy[kChunk];
  SegGrad s;
  for (int64_t j = 0; j < n; j += kChunk) {
    const int64_t m = std::min(kChunk, n - j);
    row_dy<Silu>(x + j, g + j, m, k, d, dy);
    float xh[kChunk];
    for (int64_t i = 0; i < m; ++i) xh[i] = d[i] * k.rstd;
    s.a += row_sum(dy, m), s.b += row_dot(dy, xh, m);
    if (dy_out) {
      for (int64_t i = 0; i < m; ++i) dy_out[j + i] = k.k1 * dy[i];
    }
  }
  return s;
}

template <bool Silu, bool /*Stream*/, typename T>
void seg_grad_x(const T* x, const T* g, const float* dy_in, int64_t n, const SegCoef& k, T* dx) {
  float d[kChunk], dy[kChunk], obuf[kChunk];
  for (int64_t j = 0; j < n; j += kChunk) {
    const int64_t m = std::min(kChunk, n - j);
    const float* dyr = dy;
    if (dy_in) {
      const float* v = in_row(x + j, m, d);
      for (int64_t i = 0; i < m; ++i) d[i] = v[i] - k.mean;
      dyr = dy_in + j;
    } else {
      row_dy<Silu>(x + j, g + j, m, k, d, dy);
    }
    float* o = out_row(dx + j, obuf);  // may be dy_in's own row: each element is read before written
    const float k1 = dy_in ? 1.0f : k.k1;  // dy_in holds k1 * dy already
    for (int64_t i = 0; i < m; ++i) o[i] = k1 * dyr[i] + (k.kx * d[i] + k.k0);
    flush(dx + j, o, m);
  }
}
#endif

// ---- channels-last rows: one position's C channels, per-channel constants as rows ----------------
// out = (v - m) * k + b
inline void affine(int64_t n, const float* __restrict v, const float* m, const float* k, const float* b,
                   float* __restrict out) {
  for (int64_t j = 0; j < n; ++j) out[j] = (v[j] - m[j]) * k[j] + b[j];
}

// xhat = (v - m) * r; y = xhat * w + b
inline void normalise(int64_t n, const float* __restrict v, const float* m, const float* r, const float* w,
                      const float* b, float* __restrict xhat, float* __restrict y) {
  for (int64_t j = 0; j < n; ++j) {
    xhat[j] = (v[j] - m[j]) * r[j];
    y[j] = xhat[j] * w[j] + b[j];
  }
}

// dx = k1 * dy + k0 + k2 * xhat
inline void grad_input(int64_t n, const float* __restrict dy, const float* __restrict xhat, const float* k1,
                       const float* k0, const float* k2, float* __restrict dx) {
  for (int64_t j = 0; j < n; ++j) dx[j] = k1[j] * dy[j] + k0[j] + k2[j] * xhat[j];
}

inline void col_dev2(int64_t n, const float* __restrict v, const float* __restrict c, float* __restrict s1,
                     float* __restrict s2) {
  for (int64_t j = 0; j < n; ++j) {
    const float d = v[j] - c[j];
    s1[j] += d;
    s2[j] += d * d;
  }
}

inline void col_grad(int64_t n, const float* __restrict dy, const float* __restrict xhat, float* __restrict sa,
                     float* __restrict sb) {
  for (int64_t j = 0; j < n; ++j) {
    sa[j] += dy[j];
    sb[j] += dy[j] * xhat[j];
  }
}

float param(const void* p, DType t, int64_t c, float absent) { return p ? load_float(p, t, c) : absent; }

float* record(const GroupNormArgs& a, int64_t n, int64_t c, int64_t b) {
  return a.partial + ((n * a.channels + c) * a.blocks + b) * kGroupNormPartial;
}

#if FASTDIFF_GN_VEC
// ---- channels-last rows, avx2: one position's C channels as 8-channel vectors ---------------------
// The per-channel constants are rows of C floats padded with zeros to a multiple of 8 (L1-resident),
// loaded beside x; the loops take kU vectors of channels at a time like the NCHW loops. A row's last
// C % 8 channels run as one vector padded with zeros (so d = 0, dy = 0: they add nothing).
template <typename T>
inline void pad_tail(const T* p, int64_t r, float* row) {
  for (int64_t i = 0; i < 8; ++i) row[i] = i < r ? to_float(p[i]) : 0.0f;
}

// out = act((x - m) * k + b)
template <int U, bool Silu, typename T>
inline void row_apply_n(const T* x, const float* m, const float* k, const float* b, T* out) {
  __m256 y[U];
  for (int u = 0; u < U; ++u)
    y[u] = _mm256_fmadd_ps(_mm256_sub_ps(load8(x + 8 * u), load8(m + 8 * u)), load8(k + 8 * u), load8(b + 8 * u));
  if (Silu) silu_n<U>(y);
  for (int u = 0; u < U; ++u) store8(out + 8 * u, y[u]);
}

template <bool Silu, typename T>
void row_apply(const T* x, int64_t C, const float* m, const float* k, const float* b, T* out) {
  int64_t c = 0;
  for (; c + 8 * kU <= C; c += 8 * kU) row_apply_n<kU, Silu>(x + c, m + c, k + c, b + c, out + c);
  for (; c + 8 <= C; c += 8) row_apply_n<1, Silu>(x + c, m + c, k + c, b + c, out + c);
  if (c < C) {
    alignas(32) float xr[8], o[8];
    pad_tail(x + c, C - c, xr);
    row_apply_n<1, Silu>(xr, m + c, k + c, b + c, o);
    for (int64_t i = 0; i < C - c; ++i) out[c + i] = from_float<T>(o[i]);
  }
}

// sa += dy, sb += dy * (x - m) over U vectors; dy the gradient at y = (x - m) * k + b (through SiLU's
// derivative when Silu); k * dy (dx's first term) stored at dst when not null.
template <int U, bool Silu, typename T>
inline void row_grad_sums_n(const T* x, const T* g, const float* m, const float* k, const float* b, float* sa,
                            float* sb, float* dst) {
  __m256 d[U], dy[U];
  for (int u = 0; u < U; ++u) d[u] = _mm256_sub_ps(load8(x + 8 * u), load8(m + 8 * u));
  if (Silu) {
    __m256 y[U];
    for (int u = 0; u < U; ++u) y[u] = _mm256_fmadd_ps(d[u], load8(k + 8 * u), load8(b + 8 * u));
    silu_grad_n<U>(y, dy);
    for (int u = 0; u < U; ++u) dy[u] = _mm256_mul_ps(dy[u], load8(g + 8 * u));
  } else {
    for (int u = 0; u < U; ++u) dy[u] = load8(g + 8 * u);
  }
  for (int u = 0; u < U; ++u) {
    store8(sa + 8 * u, _mm256_add_ps(load8(sa + 8 * u), dy[u]));
    store8(sb + 8 * u, _mm256_fmadd_ps(dy[u], d[u], load8(sb + 8 * u)));
    if (dst) store8(dst + 8 * u, _mm256_mul_ps(load8(k + 8 * u), dy[u]));
  }
}

template <bool Silu, typename T>
void row_grad_sums(const T* x, const T* g, int64_t C, const float* m, const float* k, const float* b, float* sa,
                   float* sb, float* dst) {
  int64_t c = 0;
  for (; c + 8 * kU <= C; c += 8 * kU)
    row_grad_sums_n<kU, Silu>(x + c, g + c, m + c, k + c, b + c, sa + c, sb + c, dst ? dst + c : nullptr);
  for (; c + 8 <= C; c += 8)
    row_grad_sums_n<1, Silu>(x + c, g + c, m + c, k + c, b + c, sa + c, sb + c, dst ? dst + c : nullptr);
  if (c < C) {
    alignas(32) float xr[8], gr[8], o[8];
    pad_tail(x + c, C - c, xr), pad_tail(g + c, C - c, gr);
    row_grad_sums_n<1, Silu>(xr, gr, m + c, k + c, b + c, sa + c, sb + c, o);
    if (dst) std::copy_n(o, C - c, dst + c);
  }
}

// dx = k * dy + kx * (x - m) + k0 over U vectors; k * dy from src (what row_grad_sums stored, possibly
// dx itself) or recomputed from g.
template <int U, bool Silu, typename T>
inline void row_grad_x_n(const T* x, const T* g, const float* src, const float* m, const float* k, const float* b,
                         const float* kx, const float* k0, T* dx) {
  __m256 d[U], kdy[U];
  for (int u = 0; u < U; ++u) d[u] = _mm256_sub_ps(load8(x + 8 * u), load8(m + 8 * u));
  if (src) {
    for (int u = 0; u < U; ++u) kdy[u] = load8(src + 8 * u);
  } else if (Silu) {
    __m256 y[U];
    for (int u = 0; u < U; ++u) y[u] = _mm256_fmadd_ps(d[u], load8(k + 8 * u), load8(b + 8 * u));
    silu_grad_n<U>(y, kdy);
    for (int u = 0; u < U; ++u) kdy[u] = _mm256_mul_ps(_mm256_mul_ps(kdy[u], load8(g + 8 * u)), load8(k + 8 * u));
  } else {
    for (int u = 0; u < U; ++u) kdy[u] = _mm256_mul_ps(load8(g + 8 * u), load8(k + 8 * u));
  }
  for (int u = 0; u < U; ++u)
    store8(dx + 8 * u, _mm256_add_ps(kdy[u], _mm256_fmadd_ps(load8(kx + 8 * u), d[u], load8(k0 + 8 * u))));
}

template <bool Silu, typename T>
void row_grad_x(const T* x, const T* g, const float* src, int64_t C, const float* m, const float* k, const float* b,
                const float* kx, const float* k0, T* dx) {
  int64_t c = 0;
  for (; c + 8 * kU <= C; c += 8 * kU)
    row_grad_x_n<kU, Silu>(x + c, g + c, src ? src + c : nullptr, m + c, k + c, b + c, kx + c, k0 + c, dx + c);
  for (; c + 8 <= C; c += 8)
    row_grad_x_n<1, Silu>(x + c, g + c, src ? src + c : nullptr, m + c, k + c, b + c, kx + c, k0 + c, dx + c);
  if (c < C) {
    alignas(32) float xr[8], gr[8], sr[8] = {}, o[8];
    pad_tail(x + c, C - c, xr), pad_tail(g + c, C - c, gr);
    if (src) std::copy_n(src + c, C - c, sr);
    row_grad_x_n<1, Silu>(xr, gr, src ? sr : nullptr, m + c, k + c, b + c, kx + c, k0 + c, o);
    for (int64_t i = 0; i < C - c; ++i) dx[c + i] = from_float<T>(o[i]);
  }
}
#endif

// A channels-last task: the rows [s0, s1) of sample n, with scratch rows of C floats, each padded to a
// multiple of 8 for the vector loops (padding zeroed; lanes past C are computed and never read). The
// scratch is kept by each thread between tasks instead of allocated and zero-filled per task (13 rows:
// 66 KB at C = 1280, as much memory written as a small task's own data).
template <typename T>
struct Rows {
  static constexpr int kScratchRows = 13;
  const GroupNormArgs& a;
  int64_t n, b, s0, s1, C, stride;
  float* scratch;
  float *mean, *rstd, *w, *bias;  // per-channel constants

  Rows(const GroupNormArgs& args, int64_t n_, int64_t b_)
      : a(args), n(n_), b(b_), s0(b_ * args.block_len), s1(std::min(args.spatial, (b_ + 1) * args.block_len)),
        C(args.channels), stride((args.channels + 7) / 8 * 8) {
    thread_local std::vector<float> mem;
    const size_t need = static_cast<size_t>(kScratchRows * stride);
    if (mem.size() < need) mem.resize(need);
    scratch = mem.data();
    for (int i = 0; i < kScratchRows; ++i) std::fill(scratch + i * stride + C, scratch + (i + 1) * stride, 0.0f);
    mean = scratch, rstd = scratch + stride, w = scratch + 2 * stride, bias = scratch + 3 * stride;
  }

  float* buf(int i) { return scratch + (4 + i) * stride; }

  void load_constants() {
    const int64_t cg = a.channels / a.groups;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t g = n * a.groups + c / cg;
      mean[c] = a.mean[g], rstd[c] = a.rstd[g];
      w[c] = param(a.weight, a.dtype, c, 1.0f), bias[c] = param(a.bias, a.dtype, c, 0.0f);
    }
  }

  // Calls fn(offset) for every row, offset being its first element.
  template <typename Fn>
  void rows(const Fn& fn) const {
    for (int64_t sp = s0; sp < s1; ++sp) fn(group_norm_index(a, n, 0, sp));
  }

  const T* at(const void* p, int64_t off) const { return static_cast<const T*>(p) + off; }

  // xhat and dy (the gradient at the affine output y) of the row at off; returns dy (grad_out's own
  // row for a float tensor without SiLU, else `dy`).
  const float* row_grad(int64_t off, float* row, float* xhat, float* y, float* dy) {
    normalise(C, in_row(at(a.x, off), C, row), mean, rstd, w, bias, xhat, y);
    const float* g = in_row(at(a.grad_out, off), C, buf(8));
    if (!a.silu) return g;
    silu_grad(y, g, dy, C);  // dy is never g: g is grad_out's row or buf(8)
    return dy;
  }
};

// Rows whose mean is each channel's centre: its distance to the block's mean is then of the order of
// the standard deviation over sqrt(kCentreRows) (see kCentreSample), in one pass over the block.
constexpr int64_t kCentreRows = 8;

template <typename T>
void rows_stats(const GroupNormArgs& a, int64_t n, int64_t b) {
  Rows<T> t(a, n, b);
  const int64_t len = t.s1 - t.s0, C = t.C;
  if (len <= 0) return;
  float *centre = t.buf(0), *s1 = t.buf(2), *s2 = t.buf(3), *row = t.buf(4);
  const int64_t sample = std::min(len, kCentreRows);
  std::fill_n(centre, C, 0.0f);
  for (int64_t sp = t.s0; sp < t.s0 + sample; ++sp) {
    const float* v = in_row(t.at(a.x, group_norm_index(a, n, 0, sp)), C, row);
    for (int64_t c = 0; c < C; ++c) centre[c] += v[c];
  }
  const float inv = 1.0f / static_cast<float>(sample);
  for (int64_t c = 0; c < C; ++c) centre[c] *= inv;
  std::fill_n(s1, C, 0.0f), std::fill_n(s2, C, 0.0f);
  t.rows([&](int64_t off) { col_dev2(C, in_row(t.at(a.x, off), C, row), centre, s1, s2); });
  for (int64_t c = 0; c < C; ++c) {
    float* r = record(a, n, c, b);
    r[0] = centre[c], r[1] = s1[c], r[2] = s2[c];
  }
}

template <typename T>
void rows_apply(const GroupNormArgs& a, int64_t n, int64_t b) {
  Rows<T> t(a, n, b);
  const int64_t C = t.C;
  float *k = t.buf(0), *row = t.buf(1), *obuf = t.buf(2);
  t.load_constants();
  for (int64_t c = 0; c < C; ++c) k[c] = t.rstd[c] * t.w[c];
#if FASTDIFF_GN_VEC
  (void)row, (void)obuf;
  t.rows([&](int64_t off) {
    const T* x = t.at(a.x, off);
    T* o = static_cast<T*>(a.out) + off;
    a.silu ? row_apply<true>(x, C, t.mean, k, t.bias, o) : row_apply<false>(x, C, t.mean, k, t.bias, o);
  });
#else
  t.rows([&](int64_t off) {
    T* o = static_cast<T*>(a.out) + off;
    float* of = out_row(o, obuf);
    affine(C, in_row(t.at(a.x, off), C, row), t.mean, k, t.bias, of);
    if (a.silu) silu_inplace(of, C);
    flush(o, of, C);
  });
#endif
}

// The avx2 build keeps k1 * dy of a float32 tensor in grad_x for rows_grad_x (as the NCHW loops do):
// SiLU's derivative is then evaluated once per element.
template <typename T>
void rows_grad_sums(const GroupNormArgs& a, int64_t n, int64_t b) {
  Rows<T> t(a, n, b);
  const int64_t C = t.C;
  float *row = t.buf(0), *xhat = t.buf(1), *y = t.buf(2), *dy = t.buf(3), *sa = t.buf(4), *sb = t.buf(5);
  t.load_constants();
  std::fill_n(sa, C, 0.0f), std::fill_n(sb, C, 0.0f);
#if FASTDIFF_GN_VEC
  (void)row, (void)xhat, (void)y;
  float* k = dy;
  for (int64_t c = 0; c < C; ++c) k[c] = t.rstd[c] * t.w[c];
  t.rows([&](int64_t off) {
    const T *x = t.at(a.x, off), *g = t.at(a.grad_out, off);
    float* dst = std::is_same_v<T, float> ? reinterpret_cast<float*>(static_cast<T*>(a.grad_x) + off) : nullptr;
    a.silu ? row_grad_sums<true>(x, g, C, t.mean, k, t.bias, sa, sb, dst)
           : row_grad_sums<false>(x, g, C, t.mean, k, t.bias, sa, sb, dst);
  });
  for (int64_t c = 0; c < C; ++c) sb[c] *= t.rstd[c];  // sum dy * (x - mean) -> sum dy * xhat
#else
  t.rows([&](int64_t off) { col_grad(C, t.row_grad(off, row, xhat, y, dy), xhat, sa, sb); });
#endif
  for (int64_t c = 0; c < C; ++c) {
    float* r = record(a, n, c, b);
    r[0] = sa[c], r[1] = sb[c], r[2] = 0.0f;
  }
}

template <typename T>
void rows_grad_x(const GroupNormArgs& a, int64_t n, int64_t b) {
  Rows<T> t(a, n, b);
  const int64_t C = t.C, cg = a.channels / a.groups;
  float *row = t.buf(0), *xhat = t.buf(1), *y = t.buf(2), *dy = t.buf(3);
  float *k1 = t.buf(4), *k0 = t.buf(5), *k2 = t.buf(6), *obuf = t.buf(7);
  t.load_constants();
  for (int64_t c = 0; c < C; ++c) {  // each channel's group coefficients
    const float* coef = a.group_coef + (n * a.groups + c / cg) * 2;
    k1[c] = t.rstd[c] * t.w[c], k0[c] = -t.rstd[c] * coef[0], k2[c] = -t.rstd[c] * coef[1];
  }
#if FASTDIFF_GN_VEC
  (void)row, (void)xhat, (void)y, (void)dy, (void)obuf;
  for (int64_t c = 0; c < C; ++c) k2[c] *= t.rstd[c];  // dx = k1 dy + k2 (x - mean) + k0
  t.rows([&](int64_t off) {
    const T *x = t.at(a.x, off), *g = t.at(a.grad_out, off);
    T* dx = static_cast<T*>(a.grad_x) + off;
    const float* src = std::is_same_v<T, float> ? reinterpret_cast<const float*>(dx) : nullptr;
    a.silu ? row_grad_x<true>(x, g, src, C, t.mean, k1, t.bias, k2, k0, dx)
           : row_grad_x<false>(x, g, src, C, t.mean, k1, t.bias, k2, k0, dx);
  });
#else
  t.rows([&](int64_t off) {
    const float* d = t.row_grad(off, row, xhat, y, dy);
    T* o = static_cast<T*>(a.grad_x) + off;
    float* of = out_row(o, obuf);
    grad_input(C, d, xhat, k1, k0, k2, of);
    flush(o, of, C);
  });
#endif
}

// ---- NCHW tasks: one segment per channel ---------------------------------------------------------
struct Segment {
  int64_t s0, len;
};

inline Segment segment(const GroupNormArgs& a, int64_t b) {
  const int64_t s0 = b * a.block_len;
  return {s0, std::max<int64_t>(0, std::min(a.spatial, s0 + a.block_len) - s0)};
}

SegCoef seg_coef(const GroupNormArgs& a, int64_t n, int64_t c, bool backward) {
  const int64_t g = n * a.groups + c / (a.channels / a.groups);
  SegCoef k;
  k.mean = a.mean[g], k.rstd = a.rstd[g];
  const float w = param(a.weight, a.dtype, c, 1.0f);
  k.bias = param(a.bias, a.dtype, c, 0.0f);
  k.scale = k.rstd * w;
  k.k1 = k.scale, k.kx = 0.0f, k.k0 = 0.0f;
  if (backward) {  // dx = rstd * (w dy - mean(w dy) - xhat mean(w dy xhat))
    const float* coef = a.group_coef + g * 2;
    k.k0 = -k.rstd * coef[0], k.kx = -k.rstd * coef[1] * k.rstd;
  }
  return k;
}

// The centre of a segment's sums: the mean of its first elements. Its distance to the segment's mean
// is then of the order of the standard deviation over sqrt(kCentreSample), so the one-pass sums of
// (x - centre) lose nothing to cancellation however large the mean (fp16 activations of large mean).
constexpr int64_t kCentreSample = 64;

template <typename T>
void seg_stats_task(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t b) {
  const Segment sg = segment(a, b);
  if (sg.len <= 0) return;
  for (int64_t c = c0; c < c1; ++c) {
    const T* x = static_cast<const T*>(a.x) + group_norm_index(a, n, c, sg.s0);
    const int64_t sample = std::min(sg.len, kCentreSample);
    const float mid = seg_sum(x, sample) / static_cast<float>(sample);
    const SegStats s = seg_dev_sums(x, sg.len, mid);
    float* r = record(a, n, c, b);
    r[0] = mid, r[1] = static_cast<float>(s.s1), r[2] = static_cast<float>(s.s2);
  }
}

// How far ahead the avx2 forward's output pass prefetches x: when a channel is one block, by the task's
// channels, i.e. into the next task in memory order (in the group-local mode, the thread's next
// group, which would otherwise arrive from memory during its statistics pass while the vector units
// idle); nothing past the tensor's end, nothing when the hardware's stream prefetch already sees it.
int64_t prefetch_distance(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t c) {
  const int64_t step = c1 - c0;
  return a.blocks == 1 && n * a.channels + c + step < a.batch * a.channels ? step * a.spatial : 0;
}

// Whether the output at p is written with non-temporal stores (stream8): only on the avx2 build, when
// p is aligned for them and the whole output is larger than a core's share of the caches would keep
// (below that, a consumer would find it in cache).
constexpr int64_t kStreamBytes = int64_t{4} << 20;

template <typename T>
bool stream_output(const GroupNormArgs& a, const T* p) {
#if FASTDIFF_GN_VEC
  return a.batch * a.channels * a.spatial * static_cast<int64_t>(sizeof(T)) >= kStreamBytes && stream_aligned(p);
#else
  (void)a, (void)p;
  return false;
#endif
}

// Orders a task's non-temporal stores before whatever follows (they are weakly ordered: the thread
// pool's synchronisation alone does not publish them to the thread that reads the output next).
inline void stream_fence() {
#if FASTDIFF_GN_VEC
  _mm_sfence();
#endif
}

template <typename T>
void seg_apply_task(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t b) {
  const Segment sg = segment(a, b);
  for (int64_t c = c0; c < c1; ++c) {
    const SegCoef k = seg_coef(a, n, c, false);
    const int64_t off = group_norm_index(a, n, c, sg.s0);
    const T* x = static_cast<const T*>(a.x) + off;
    T* out = static_cast<T*>(a.out) + off;
    const int64_t ahead = prefetch_distance(a, n, c0, c1, c);
    if (stream_output(a, out)) {
      a.silu ? seg_apply<true, true>(x, sg.len, k, out, ahead) : seg_apply<false, true>(x, sg.len, k, out, ahead);
    } else {
      a.silu ? seg_apply<true, false>(x, sg.len, k, out, ahead) : seg_apply<false, false>(x, sg.len, k, out, ahead);
    }
  }
  stream_fence();
}

template <typename T>
void seg_grad_sums_task(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t b, float* dy_out) {
  const Segment sg = segment(a, b);
  for (int64_t c = c0; c < c1; ++c) {
    const SegCoef k = seg_coef(a, n, c, false);
    const int64_t off = group_norm_index(a, n, c, sg.s0);
    const T *x = static_cast<const T*>(a.x) + off, *g = static_cast<const T*>(a.grad_out) + off;
    float* dst = dy_out ? dy_out + (c - c0) * a.spatial + sg.s0 : nullptr;
    const SegGrad s = a.silu ? seg_grad_sums<true>(x, g, sg.len, k, dst) : seg_grad_sums<false>(x, g, sg.len, k, dst);
    float* r = record(a, n, c, b);
    r[0] = static_cast<float>(s.a), r[1] = static_cast<float>(s.b), r[2] = 0.0f;
  }
}

template <typename T>
void seg_grad_x_task(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t b, const float* dy_in) {
  const Segment sg = segment(a, b);
  for (int64_t c = c0; c < c1; ++c) {
    const SegCoef k = seg_coef(a, n, c, true);
    const int64_t off = group_norm_index(a, n, c, sg.s0);
    const T *x = static_cast<const T*>(a.x) + off, *g = static_cast<const T*>(a.grad_out) + off;
    const float* src = dy_in ? dy_in + (c - c0) * a.spatial + sg.s0 : nullptr;
    T* dx = static_cast<T*>(a.grad_x) + off;
    // Streaming grad_x when it is not also k1 * dy's store (whose lines are in cache already).
    if (src != reinterpret_cast<const float*>(dx) && stream_output(a, dx)) {
      a.silu ? seg_grad_x<true, true>(x, g, src, sg.len, k, dx) : seg_grad_x<false, true>(x, g, src, sg.len, k, dx);
    } else {
      a.silu ? seg_grad_x<true, false>(x, g, src, sg.len, k, dx) : seg_grad_x<false, false>(x, g, src, sg.len, k, dx);
    }
  }
  stream_fence();
}

// ---- the task entry points: channels-last rows or NCHW segments ----------------------------------
template <typename T>
void stats(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t b) {
  a.channels_last ? rows_stats<T>(a, n, b) : seg_stats_task<T>(a, n, c0, c1, b);
}

template <typename T>
void apply(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t b) {
  a.channels_last ? rows_apply<T>(a, n, b) : seg_apply_task<T>(a, n, c0, c1, b);
}

template <typename T>
void grad_sums(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t b, float* dy_out) {
  a.channels_last ? rows_grad_sums<T>(a, n, b) : seg_grad_sums_task<T>(a, n, c0, c1, b, dy_out);
}

template <typename T>
void grad_x(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t b, const float* dy_in) {
  a.channels_last ? rows_grad_x<T>(a, n, b) : seg_grad_x_task<T>(a, n, c0, c1, b, dy_in);
}

template <typename T>
void grad_params(const GroupNormArgs& a, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; ++c) {
    double sa = 0.0, sb = 0.0;
    for (int64_t n = 0; n < a.batch; ++n) {
      sa += a.channel_sums[(n * a.channels + c) * 2];
      sb += a.channel_sums[(n * a.channels + c) * 2 + 1];
    }
    if (a.grad_weight) static_cast<T*>(a.grad_weight)[c] = from_float<T>(static_cast<float>(sb));
    if (a.grad_bias) static_cast<T*>(a.grad_bias)[c] = from_float<T>(static_cast<float>(sa));
  }
}

template <template <typename> class Fn, typename... Args>
void by_dtype(DType t, Args&&... args) {
  switch (t) {
    case DType::f32: Fn<float>::run(args...); break;
    case DType::f16: Fn<half>::run(args...); break;
    case DType::bf16: Fn<bf16>::run(args...); break;
  }
}

#define FASTDIFF_GN_FN(name, fn)                         \
  template <typename T>                                  \
  struct name {                                          \
    template <typename... A>                             \
    static void run(A&&... args) { fn<T>(args...); }     \
  };
FASTDIFF_GN_FN(Stats, stats)
FASTDIFF_GN_FN(Apply, apply)
FASTDIFF_GN_FN(GradSums, grad_sums)
FASTDIFF_GN_FN(GradX, grad_x)
FASTDIFF_GN_FN(GradParams, grad_params)
#undef FASTDIFF_GN_FN

}  // namespace

void group_norm_stats(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t b) {
  by_dtype<Stats>(a.dtype, a, n, c0, c1, b);
}

void group_norm_finalize(const GroupNormArgs& a, int64_t n, int64_t g) {
  const int64_t cg = a.channels / a.groups, count = cg * a.spatial;
  float* mean = a.mean + n * a.groups + g;
  float* rstd = a.rstd + n * a.groups + g;
  if (count == 0) {  // an empty group: documented as mean 0, rstd 1/sqrt(eps)
    *mean = 0.0f, *rstd = static_cast<float>(1.0 / std::sqrt(static_cast<double>(a.eps)));
    return;
  }
  // Every block but the last has block_len positions: two reciprocals instead of a division per record
  // (channels-last groups have thousands of records).
  const double full = static_cast<double>(a.block_len), inv_full = 1.0 / full;
  const double last = static_cast<double>(a.spatial - (a.blocks - 1) * a.block_len), inv_last = 1.0 / last;
  auto block = [&](int64_t c, int64_t b, double& len, double& bmean, double& bm2) {
    const float* r = record(a, n, c, b);
    const bool is_last = b == a.blocks - 1;
    len = is_last ? last : full;
    const double inv = is_last ? inv_last : inv_full, s1 = r[1];
    bmean = r[0] + s1 * inv;
    bm2 = r[2] - s1 * s1 * inv;
  };
  double total = 0.0, len, bmean, bm2;
  for (int64_t c = g * cg; c < (g + 1) * cg; ++c)
    for (int64_t b = 0; b < a.blocks; ++b) {
      block(c, b, len, bmean, bm2);
      total += len * bmean;
    }
  const double mu = total / static_cast<double>(count);
  double m2 = 0.0;
  for (int64_t c = g * cg; c < (g + 1) * cg; ++c)
    for (int64_t b = 0; b < a.blocks; ++b) {
      block(c, b, len, bmean, bm2);
      m2 += bm2 + len * (bmean - mu) * (bmean - mu);
    }
  const double var = std::max(m2 / static_cast<double>(count), 0.0);
  *mean = static_cast<float>(mu);
  *rstd = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(a.eps)));
}

void group_norm_apply(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t b) {
  by_dtype<Apply>(a.dtype, a, n, c0, c1, b);
}

void group_norm_grad_sums(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t b, float* dy_out) {
  by_dtype<GradSums>(a.dtype, a, n, c0, c1, b, dy_out);
}

void group_norm_grad_group(const GroupNormArgs& a, int64_t n, int64_t g) {
  const int64_t cg = a.channels / a.groups;
  double wa = 0.0, wb = 0.0;
  for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
    double sa = 0.0, sb = 0.0;
    for (int64_t b = 0; b < a.blocks; ++b) {
      const float* r = record(a, n, c, b);
      sa += r[0], sb += r[1];
    }
    float* cs = a.channel_sums + (n * a.channels + c) * 2;
    cs[0] = static_cast<float>(sa), cs[1] = static_cast<float>(sb);
    const double w = param(a.weight, a.dtype, c, 1.0f);
    wa += w * sa, wb += w * sb;
  }
  const double count = static_cast<double>(cg * a.spatial);
  float* coef = a.group_coef + (n * a.groups + g) * 2;
  coef[0] = count > 0 ? static_cast<float>(wa / count) : 0.0f;
  coef[1] = count > 0 ? static_cast<float>(wb / count) : 0.0f;
}

void group_norm_grad_x(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t b, const float* dy_in) {
  by_dtype<GradX>(a.dtype, a, n, c0, c1, b, dy_in);
}

void group_norm_grad_params(const GroupNormArgs& a, int64_t c0, int64_t c1) {
  by_dtype<GradParams>(a.dtype, a, c0, c1);
}

}  // namespace fastdiff::cpu::FASTDIFF_ISA
