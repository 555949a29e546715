// CPU group_norm (+ SiLU) kernels (torch-free; compiled once per ISA, see group_norm.h).
//
// A task walks "rows" of float32 values: in NCHW, chunks of kChunk positions of one channel; in
// channels-last, one position's C channels. Per-channel constants (mean, rstd, weight, bias of the
// channel's group) are held as vectors as long as a row, so one set of elementwise loops serves both
// layouts; only the reductions differ (over a row in NCHW, across rows per channel in channels-last).
// SiLU needs exp: the avx2 build evaluates it 8 lanes at a time with a polynomial (GCC does not
// vectorise std::exp without -ffast-math), the base build calls std::exp.
#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "cpu/kernels/group_norm.h"
#include "cpu/kernels/rows.h"

namespace fastdiff::cpu::FASTDIFF_ISA {
namespace {

// ---- SiLU ----------------------------------------------------------------------------------------
#if defined(__AVX2__) && defined(__FMA__)
// exp(v), v clamped to [-87, 88]: v = k ln2 + r with |r| <= ln2/2 (ln2 split in two for an exact
// k ln2), exp(r) by its degree-7 Taylor-like minimax polynomial (Cephes' coefficients), 2^k by
// building the exponent bits. About 2 ulp.
inline __m256 exp8(__m256 v) {
  v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 k = _mm256_floor_ps(_mm256_fmadd_ps(v, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), v);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline __m256 sigmoid8(__m256 y) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), y))));
}
#endif

inline float sigmoid1(float y) { return 1.0f / (1.0f + std::exp(-y)); }

// v = v * sigmoid(v)
void silu_inplace(float* __restrict v, int64_t n) {
  int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
  for (; j + 8 <= n; j += 8) {
    const __m256 y = _mm256_loadu_ps(v + j);
    _mm256_storeu_ps(v + j, _mm256_mul_ps(y, sigmoid8(y)));
  }
#endif
  for (; j < n; ++j) v[j] *= sigmoid1(v[j]);
}

// dy = g * silu'(y), silu'(y) = s (1 + y (1 - s)), s = sigmoid(y)
void silu_grad(const float* __restrict y, const float* __restrict g, float* __restrict dy, int64_t n) {
  int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 one = _mm256_set1_ps(1.0f);
  for (; j + 8 <= n; j += 8) {
    const __m256 yv = _mm256_loadu_ps(y + j), s = sigmoid8(yv);
    const __m256 d = _mm256_mul_ps(s, _mm256_fmadd_ps(yv, _mm256_sub_ps(one, s), one));
    _mm256_storeu_ps(dy + j, _mm256_mul_ps(_mm256_loadu_ps(g + j), d));
  }
#endif
  for (; j < n; ++j) {
    const float s = sigmoid1(y[j]);
    dy[j] = g[j] * (s * (1.0f + y[j] * (1.0f - s)));
  }
}

// ---- elementwise loops over one row, per-element constants ---------------------------------------
// out = (v - m) * k + b
inline void affine(int64_t n, const float* __restrict v, const float* __restrict m, const float* __restrict k,
                   const float* __restrict b, float* __restrict out) {
  for (int64_t j = 0; j < n; ++j) out[j] = (v[j] - m[j]) * k[j] + b[j];
}

// xhat = (v - m) * r; y = xhat * w + b
inline void normalise(int64_t n, const float* __restrict v, const float* __restrict m, const float* __restrict r,
                      const float* __restrict w, const float* __restrict b, float* __restrict xhat,
                      float* __restrict y) {
  for (int64_t j = 0; j < n; ++j) {
    xhat[j] = (v[j] - m[j]) * r[j];
    y[j] = xhat[j] * w[j] + b[j];
  }
}

// dx = k1 * dy + k0 + k2 * xhat
inline void grad_input(int64_t n, const float* __restrict dy, const float* __restrict xhat,
                       const float* __restrict k1, const float* __restrict k0, const float* __restrict k2,
                       float* __restrict dx) {
  for (int64_t j = 0; j < n; ++j) dx[j] = k1[j] * dy[j] + k0[j] + k2[j] * xhat[j];
}

// sum(v - c) over a row, in lanes.
inline float sum_dev(const float* __restrict v, int64_t n, float c) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += v[j + l] - c;
  for (; j < n; ++j) acc[0] += v[j] - c;
  return lanes_total(acc);
}

// s1 += sum(v - c), s2 += sum((v - c)^2) over a row, in lanes (one pass).
inline void dev_sums(const float* __restrict v, int64_t n, float c, double& s1, double& s2) {
  float a1[kLanes] = {}, a2[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float d = v[j + l] - c;
      a1[l] += d;
      a2[l] += d * d;
    }
  for (; j < n; ++j) {
    const float d = v[j] - c;
    a1[0] += d;
    a2[0] += d * d;
  }
  s1 += lanes_total(a1);
  s2 += lanes_total(a2);
}

// xhat = (v - m) * r
inline void standardise(int64_t n, const float* __restrict v, const float* __restrict m, const float* __restrict r,
                        float* __restrict xhat) {
  for (int64_t j = 0; j < n; ++j) xhat[j] = (v[j] - m[j]) * r[j];
}

// ---- column loops (channels-last: one row is one position's C channels) --------------------------
inline void col_dev(int64_t n, const float* __restrict v, const float* __restrict c, float* __restrict acc) {
  for (int64_t j = 0; j < n; ++j) acc[j] += v[j] - c[j];
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

// ---- one task: its rows and its per-channel constants ---------------------------------------------
float param(const void* p, DType t, int64_t c, float absent) { return p ? load_float(p, t, c) : absent; }

float* record(const GroupNormArgs& a, int64_t n, int64_t c, int64_t b) {
  return a.partial + ((n * a.channels + c) * a.blocks + b) * kGroupNormPartial;
}

template <typename T>
struct Task {
  const GroupNormArgs& a;
  int64_t n, c0, c1, b, s0, s1;
  int64_t width;  // floats per row: C (channels-last), or up to kChunk positions (NCHW)
  Scratch s;
  // Per-element constants of a row: mean, rstd, weight, bias of each element's channel.
  float *mean, *rstd, *w, *bias;

  Task(const GroupNormArgs& args, int64_t n_, int64_t c0_, int64_t c1_, int64_t b_)
      : a(args), n(n_), c0(c0_), c1(c1_), b(b_), s0(b_ * args.block_len),
        s1(std::min(args.spatial, (b_ + 1) * args.block_len)),
        width(args.channels_last ? args.channels : std::max<int64_t>(1, std::min(kChunk, s1 - s0))), s(12, width) {
    mean = s[0], rstd = s[1], w = s[2], bias = s[3];
  }

  // Float scratch row i (the first four hold the constants).
  float* buf(int i) { return s[4 + i]; }

  int64_t group_of(int64_t c) const { return c / (a.channels / a.groups); }

  // Fills the constants: constant rows for a channel (NCHW) or per-channel vectors (channels-last).
  void load_constants(int64_t c_for_nchw) {
    auto fill = [&](int64_t j, int64_t c) {
      const int64_t g = n * a.groups + group_of(c);
      mean[j] = a.mean[g], rstd[j] = a.rstd[g];
      w[j] = param(a.weight, a.dtype, c, 1.0f), bias[j] = param(a.bias, a.dtype, c, 0.0f);
    };
    if (a.channels_last) {
      for (int64_t c = 0; c < a.channels; ++c) fill(c, c);
    } else {
      fill(0, c_for_nchw);
      std::fill(mean + 1, mean + width, mean[0]), std::fill(rstd + 1, rstd + width, rstd[0]);
      std::fill(w + 1, w + width, w[0]), std::fill(bias + 1, bias + width, bias[0]);
    }
  }

  // Calls fn(offset, len) for every row of channel c (NCHW) or of the block (channels-last), where
  // offset is the row's first element.
  template <typename Fn>
  void rows(int64_t c, const Fn& fn) const {
    if (a.channels_last) {
      for (int64_t sp = s0; sp < s1; ++sp) fn(group_norm_index(a, n, 0, sp), a.channels);
    } else {
      const int64_t base = group_norm_index(a, n, c, 0);
      for (int64_t j = s0; j < s1; j += kChunk) fn(base + j, std::min(kChunk, s1 - j));
    }
  }

  template <typename P>
  const T* at(P p, int64_t off) const {
    return static_cast<const T*>(p) + off;
  }
};

// ---- forward ------------------------------------------------------------------------------------
template <typename T>
void stats(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t b) {
  Task<T> t(a, n, c0, c1, b);
  const int64_t len = t.s1 - t.s0;
  if (len <= 0) return;
  if (a.channels_last) {
    const int64_t C = a.channels;
    float *centre = t.buf(0), *acc = t.buf(1), *s1 = t.buf(2), *s2 = t.buf(3), *row = t.buf(4);
    std::copy_n(in_row(t.at(a.x, group_norm_index(a, n, 0, t.s0)), C, row), C, centre);
    std::fill_n(acc, C, 0.0f);
    t.rows(0, [&](int64_t off, int64_t m) { col_dev(m, in_row(t.at(a.x, off), m, row), centre, acc); });
    const float inv = 1.0f / static_cast<float>(len);
    for (int64_t c = 0; c < C; ++c) centre[c] += acc[c] * inv;
    std::fill_n(s1, C, 0.0f), std::fill_n(s2, C, 0.0f);
    t.rows(0, [&](int64_t off, int64_t m) { col_dev2(m, in_row(t.at(a.x, off), m, row), centre, s1, s2); });
    for (int64_t c = 0; c < C; ++c) {
      float* r = record(a, n, c, b);
      r[0] = centre[c], r[1] = s1[c], r[2] = s2[c];
    }
    return;
  }
  float* row = t.buf(0);
  for (int64_t c = c0; c < c1; ++c) {
    const float centre = load_float(a.x, a.dtype, group_norm_index(a, n, c, t.s0));
    double acc = 0.0;
    t.rows(c, [&](int64_t off, int64_t m) { acc += sum_dev(in_row(t.at(a.x, off), m, row), m, centre); });
    const float mid = centre + static_cast<float>(acc / static_cast<double>(len));
    double s1 = 0.0, s2 = 0.0;
    t.rows(c, [&](int64_t off, int64_t m) { dev_sums(in_row(t.at(a.x, off), m, row), m, mid, s1, s2); });
    float* r = record(a, n, c, b);
    r[0] = mid, r[1] = static_cast<float>(s1), r[2] = static_cast<float>(s2);
  }
}

template <typename T>
void apply(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t b) {
  Task<T> t(a, n, c0, c1, b);
  float *k = t.buf(0), *row = t.buf(1), *obuf = t.buf(2);
  for (int64_t c = c0; c < c1; c = a.channels_last ? c1 : c + 1) {
    t.load_constants(c);
    for (int64_t j = 0; j < t.width; ++j) k[j] = t.rstd[j] * t.w[j];
    t.rows(c, [&](int64_t off, int64_t m) {
      T* o = static_cast<T*>(a.out) + off;
      float* of = out_row(o, obuf);
      affine(m, in_row(t.at(a.x, off), m, row), t.mean, k, t.bias, of);
      if (a.silu) silu_inplace(of, m);
      flush(o, of, m);
    });
  }
}

// ---- backward ------------------------------------------------------------------------------------
// xhat and dy (the gradient at the affine output y) of one row; returns dy (grad_out's own row for a
// float tensor without SiLU, else `buf`).
template <typename T>
const float* row_grad(const Task<T>& t, int64_t off, int64_t m, float* row, float* xhat, float* y, float* buf) {
  const GroupNormArgs& a = t.a;
  normalise(m, in_row(t.at(a.x, off), m, row), t.mean, t.rstd, t.w, t.bias, xhat, y);
  const float* g = in_row(t.at(a.grad_out, off), m, buf);
  if (!a.silu) return g;
  silu_grad(y, g, buf, m);
  return buf;
}

template <typename T>
void grad_sums(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t b, float* dy_out) {
  Task<T> t(a, n, c0, c1, b);
  float *row = t.buf(0), *xhat = t.buf(1), *y = t.buf(2), *dy = t.buf(3);
  if (a.channels_last) {
    const int64_t C = a.channels;
    float *sa = t.buf(4), *sb = t.buf(5);
    t.load_constants(0);
    std::fill_n(sa, C, 0.0f), std::fill_n(sb, C, 0.0f);
    t.rows(0, [&](int64_t off, int64_t m) {
      col_grad(m, row_grad(t, off, m, row, xhat, y, dy), xhat, sa, sb);
    });
    for (int64_t c = 0; c < C; ++c) {
      float* r = record(a, n, c, b);
      r[0] = sa[c], r[1] = sb[c], r[2] = 0.0f;
    }
    return;
  }
  for (int64_t c = c0; c < c1; ++c) {
    t.load_constants(c);
    double sa = 0.0, sb = 0.0;
    const int64_t base = group_norm_index(a, n, c, 0);
    t.rows(c, [&](int64_t off, int64_t m) {
      const float* d = row_grad(t, off, m, row, xhat, y, dy);
      sa += row_sum(d, m);
      sb += row_dot(d, xhat, m);
      if (dy_out) std::copy_n(d, m, dy_out + (c - c0) * a.spatial + (off - base));
    });
    float* r = record(a, n, c, b);
    r[0] = static_cast<float>(sa), r[1] = static_cast<float>(sb), r[2] = 0.0f;
  }
}

template <typename T>
void grad_x(const GroupNormArgs& a, int64_t n, int64_t c0, int64_t c1, int64_t b, const float* dy_in) {
  Task<T> t(a, n, c0, c1, b);
  float *row = t.buf(0), *xhat = t.buf(1), *y = t.buf(2), *dy = t.buf(3);
  float *k1 = t.buf(4), *k0 = t.buf(5), *k2 = t.buf(6), *obuf = t.buf(7);
  const int64_t cg = a.channels / a.groups;
  for (int64_t c = c0; c < c1; c = a.channels_last ? c1 : c + 1) {
    t.load_constants(c);
    if (a.channels_last) {
      for (int64_t j = 0; j < t.width; ++j) {  // each channel's group coefficients
        const float* coef = a.group_coef + (n * a.groups + j / cg) * 2;
        k1[j] = t.rstd[j] * t.w[j], k0[j] = -t.rstd[j] * coef[0], k2[j] = -t.rstd[j] * coef[1];
      }
    } else {  // one channel: constant rows
      const float* coef = a.group_coef + (n * a.groups + c / cg) * 2;
      std::fill_n(k1, t.width, t.rstd[0] * t.w[0]);
      std::fill_n(k0, t.width, -t.rstd[0] * coef[0]);
      std::fill_n(k2, t.width, -t.rstd[0] * coef[1]);
    }
    const int64_t base = group_norm_index(a, n, c, 0);
    t.rows(c, [&](int64_t off, int64_t m) {
      const float* d;
      if (dy_in) {
        standardise(m, in_row(t.at(a.x, off), m, row), t.mean, t.rstd, xhat);
        d = dy_in + (c - c0) * a.spatial + (off - base);
      } else {
        d = row_grad(t, off, m, row, xhat, y, dy);
      }
      T* o = static_cast<T*>(a.grad_x) + off;
      float* of = out_row(o, obuf);
      grad_input(m, d, xhat, k1, k0, k2, of);
      flush(o, of, m);
    });
  }
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
  auto block = [&](int64_t c, int64_t b, double& len, double& bmean, double& bm2) {
    const float* r = record(a, n, c, b);
    len = static_cast<double>(std::min(a.block_len, a.spatial - b * a.block_len));
    bmean = r[0] + r[1] / len;
    bm2 = r[2] - static_cast<double>(r[1]) * r[1] / len;
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
