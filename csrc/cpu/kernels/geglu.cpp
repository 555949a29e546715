// CPU geglu kernels (torch-free; compiled once per ISA, see geglu.h).
//
// The math runs on 8-float GCC vector types (two SSE registers on the base build, one AVX register on
// the avx2 build), branch-free, in float32:
//   exp(x): x = k ln2 + r with |r| <= ln2/2, e^r = 1 + r + r^2 q(r) with a fitted cubic q (2e-7
//     relative), 2^k built in the exponent bits (details at vexp_core).
//   Phi(g) (the normal CDF, gelu(g) = g * Phi(g)): with t = |g| / sqrt(2), erfc(t) = exp(-t^2) *
//     erfcx(t), and erfcx(t) ~ u * P6(u), u = 2 / (2 + t): a fit of ours (Lawson's iteratively
//     reweighted least squares on relative error over t in [0, 9.34], beyond which exp(-t^2) is
//     below float32's normal range and erfc is taken as 0) good to 1.4e-6 relative when evaluated
//     in float32. Phi(g) = erfc(t) / 2 for g < 0, else 1 - erfc(t) / 2, so gelu keeps its relative
//     accuracy in the negative tail (measured: 3e-6 or better down to g = -9, 5e-6 down to -13),
//     where a 1 + erf(...) form cancels.
//   tanh form: 0.5 g (1 + tanh(y)) = g / (1 + exp(-2y)), y = sqrt(2/pi) (g + 0.044715 g^3).
// NaN propagates (every clamp is a comparison that is false for NaN). Rows of float16 / bfloat16 are
// converted into float buffers and back by the row helpers of rows.h.
#include <algorithm>
#include <cstring>

#include "cpu/kernels/convert.h"
#include "cpu/kernels/geglu.h"
#include "cpu/kernels/rows.h"
#include "cpu/kernels/vec8.h"

namespace fastdiff::cpu::FASTDIFF_ISA {
namespace {

FD_INLINE vf select(vi mask, vf a, vf b) { return mask ? a : b; }
FD_INLINE vf vabs(vf v) { return reinterpret_cast<vf>(reinterpret_cast<vi>(v) & 0x7FFFFFFF); }

#define FD_UNROLL _Pragma("GCC unroll 8")

// Every function below takes U vectors and interleaves their U chains step by step: one chain is
// ~30 dependent steps (exp, erfcx, the division), and side by side the independent steps keep the
// FMA pipes busy where one chain at a time left them waiting (U = 4 ran the exact forward 1.3x faster in cache).

// e^x for x in [-87, 88]: x = k ln2 + r with |r| <= ln2/2, r by one FMA with ln2 rounded to float
// (|k| <= 126 times its 2e-9 error: 2.4e-7 at most, where a two-part ln2 cost one more FMA), e^r =
// 1 + r + r^2 q(r) with q a cubic fitted for least maximum relative error (2e-7 in float32), 2^k by
// adding k to the exponent bits (e^r is normal and k >= -126 over the range). k is rounded by adding
// 1.5 * 2^23, whose low mantissa bits are then k itself, and k << 23 shifts the rest out.
template <int U>
FD_INLINE void vexp_core(const vf* x, vf* out) {
  const vf magic = splat(12582912.0f);
  vf kb[U], r[U], p[U];
  FD_UNROLL for (int u = 0; u < U; ++u) kb[u] = x[u] * 1.44269504088896341f + magic;
  FD_UNROLL for (int u = 0; u < U; ++u) {
    const vf k = kb[u] - magic;
    r[u] = x[u] - k * 0.693147182f;
  }
  FD_UNROLL for (int u = 0; u < U; ++u) p[u] = 8.312493562698364e-3f * r[u] + 4.189006984233856e-2f;
  FD_UNROLL for (int u = 0; u < U; ++u) p[u] = p[u] * r[u] + 1.6667114198207855e-1f;
  FD_UNROLL for (int u = 0; u < U; ++u) p[u] = p[u] * r[u] + 4.99992311000824e-1f;
  FD_UNROLL for (int u = 0; u < U; ++u) p[u] = p[u] * (r[u] * r[u]) + (r[u] + 1.0f);
  FD_UNROLL for (int u = 0; u < U; ++u)
    out[u] = reinterpret_cast<vf>(reinterpret_cast<vi>(p[u]) + (reinterpret_cast<vi>(kb[u]) << 23));
}

// 1 + e^x, saturating to +inf above 88.72 (x below -87 gives 1 + e^-87 = 1: e^x is below 1 ulp of 1).
template <int U>
FD_INLINE void one_plus_exp(const vf* x, vf* out) {
  vf xc[U];
  FD_UNROLL for (int u = 0; u < U; ++u) {
    xc[u] = vmin(splat(88.0f), vmax(splat(-87.0f), x[u]));
  }
  vexp_core<U>(xc, out);
  FD_UNROLL for (int u = 0; u < U; ++u)
    out[u] = select(x[u] > 88.72283935546875f, splat(__builtin_inff()), out[u] + 1.0f);
}

// erfcx(t) / 2 = exp(t^2) erfc(t) / 2 ~ u * P(u), u = 2 / (2 + t), 0 <= t <= 9.34 (our fit of
// erfcx / 2 itself: the halving folded into the coefficients).
template <int U>
FD_INLINE void half_erfcx(const vf* t, vf* out) {
  vf u[U], p[U];
  FD_UNROLL for (int i = 0; i < U; ++i) u[i] = 2.0f / (t[i] + 2.0f);
  FD_UNROLL for (int i = 0; i < U; ++i) p[i] = 0.0447132811f * u[i] + -0.180525631f;
  FD_UNROLL for (int i = 0; i < U; ++i) p[i] = p[i] * u[i] + 0.197639838f;
  FD_UNROLL for (int i = 0; i < U; ++i) p[i] = p[i] * u[i] + 0.0167941302f;
  FD_UNROLL for (int i = 0; i < U; ++i) p[i] = p[i] * u[i] + 0.141562551f;
  FD_UNROLL for (int i = 0; i < U; ++i) p[i] = p[i] * u[i] + 0.138638392f;
  FD_UNROLL for (int i = 0; i < U; ++i) p[i] = p[i] * u[i] + 0.141176879f;
  FD_UNROLL for (int i = 0; i < U; ++i) out[i] = p[i] * u[i];
}

constexpr float kSqrtHalf = 0.70710678118654752f;       // 1/sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;     // 1/sqrt(2 pi)
constexpr float kTanhK = 0.79788456080286536f;          // sqrt(2/pi)
constexpr float kTanhC = 0.044715f;

// y = gelu(g), and slope = gelu'(g) when kSlope.
template <int U, bool kSlope>
FD_INLINE void gelu_exact(const vf* g, vf* y, vf* slope) {
  vf t[U], x[U], e[U], h[U];
  FD_UNROLL for (int u = 0; u < U; ++u) {
    const vf ag = vabs(g[u]);
    t[u] = ag * kSqrtHalf;
    // exp(-g^2/2): rounding g^2 costs g^2 2^-25 relative (4e-6 at g = -11, where |gelu| < 1e-27);
    // splitting g to make it exact cost 30% of this loop's time for no visible gain. (-t^2 would
    // add t's rounding, doubled, on top.)
    x[u] = ag * (-0.5f * ag);
    e[u] = vmax(splat(-87.0f), x[u]);
  }
  vexp_core<U>(e, e);
  half_erfcx<U>(t, h);
  FD_UNROLL for (int u = 0; u < U; ++u) {
    e[u] = zero_below(e[u], x[u], -87.0f);  // exp(-t^2) underflows there
    const vf half_erfc = e[u] * h[u];
    const vf phi = select(g[u] < 0.0f, half_erfc, 1.0f - half_erfc);  // the normal CDF
    if constexpr (kSlope) slope[u] = phi + g[u] * (e[u] * kInvSqrt2Pi);
    y[u] = g[u] * phi;
  }
}

// 0.5 g (1 + tanh(z)) = g / (1 + exp(-2z)), z = sqrt(2/pi) (g + 0.044715 g^3).
template <int U, bool kSlope>
FD_INLINE void gelu_tanh(const vf* g, vf* y, vf* slope) {
  vf m2z[U], d[U];
  FD_UNROLL for (int u = 0; u < U; ++u) m2z[u] = (-2.0f * kTanhK) * (g[u] + kTanhC * g[u] * (g[u] * g[u]));
  one_plus_exp<U>(m2z, d);
  FD_UNROLL for (int u = 0; u < U; ++u) {
    if constexpr (kSlope) {
      const vf s = 1.0f / d[u];  // sigmoid(2z) = (1 + tanh z) / 2
      y[u] = g[u] * s;
      slope[u] = s + g[u] * (2.0f * s * (1.0f - s)) * (kTanhK * (1.0f + 3.0f * kTanhC * (g[u] * g[u])));
    } else {
      y[u] = g[u] / d[u];
    }
  }
}

template <int U, bool kTanh, bool kSlope>
FD_INLINE void gelu(const vf* g, vf* y, vf* slope) {
  if constexpr (kTanh)
    gelu_tanh<U, kSlope>(g, y, slope);
  else
    gelu_exact<U, kSlope>(g, y, slope);
}

constexpr int kU = 4;  // vectors interleaved per step (2 and 8 ran slower)

// Float rows: out = a * gelu(g) for n columns (a tail shorter than kW goes through a padded block).
template <bool kTanh>
void forward_floats(const float* __restrict a, const float* __restrict g, int64_t n, float* __restrict out) {
  int64_t j = 0;
  for (; j + kU * kW <= n; j += kU * kW) {
    vf gv[kU], y[kU];
    FD_UNROLL for (int u = 0; u < kU; ++u) gv[u] = loadv(g + j + u * kW);
    gelu<kU, kTanh, false>(gv, y, nullptr);
    FD_UNROLL for (int u = 0; u < kU; ++u) storev(out + j + u * kW, loadv(a + j + u * kW) * y[u]);
  }
  for (; j < n; j += kW) {
    const int64_t m = std::min<int64_t>(kW, n - j);
    float ta[kW] = {}, tg[kW] = {}, to[kW];
    std::copy(a + j, a + j + m, ta);
    std::copy(g + j, g + j + m, tg);
    vf gv = loadv(tg), y;
    gelu<1, kTanh, false>(&gv, &y, nullptr);
    storev(to, loadv(ta) * y);
    std::copy(to, to + m, out + j);
  }
}

// Float rows: da = go * gelu(g), dg = go * a * gelu'(g).
template <bool kTanh>
void backward_floats(const float* __restrict go, const float* __restrict a, const float* __restrict g, int64_t n,
                     float* __restrict da, float* __restrict dg) {
  int64_t j = 0;
  for (; j + kU * kW <= n; j += kU * kW) {
    vf gv[kU], y[kU], s[kU];
    FD_UNROLL for (int u = 0; u < kU; ++u) gv[u] = loadv(g + j + u * kW);
    gelu<kU, kTanh, true>(gv, y, s);
    FD_UNROLL for (int u = 0; u < kU; ++u) {
      const vf gov = loadv(go + j + u * kW);
      storev(da + j + u * kW, gov * y[u]);
      storev(dg + j + u * kW, gov * loadv(a + j + u * kW) * s[u]);
    }
  }
  for (; j < n; j += kW) {
    const int64_t m = std::min<int64_t>(kW, n - j);
    float tgo[kW] = {}, ta[kW] = {}, tg[kW] = {}, tda[kW], tdg[kW];
    std::copy(go + j, go + j + m, tgo);
    std::copy(a + j, a + j + m, ta);
    std::copy(g + j, g + j + m, tg);
    vf gv = loadv(tg), y, s;
    gelu<1, kTanh, true>(&gv, &y, &s);
    storev(tda, loadv(tgo) * y);
    storev(tdg, loadv(tgo) * loadv(ta) * s);
    std::copy(tda, tda + m, da + j);
    std::copy(tdg, tdg + m, dg + j);
  }
}

// Columns [begin, end) of row r, in chunks of kChunk staged through float buffers when T is not float.
template <typename T>
void forward_rows(const GegluArgs& p, int64_t r, int64_t begin, int64_t end) {
  const int64_t h = p.half;
  const T* xa = static_cast<const T*>(p.x) + r * 2 * h;
  const T* xg = xa + h;
  T* o = static_cast<T*>(p.out) + r * h;
  float ba[kChunk], bg[kChunk], bo[kChunk];
  for (int64_t j = begin; j < end; j += kChunk) {
    const int64_t n = std::min(kChunk, end - j);
    float* of = out_row(o + j, bo);
    if (p.tanh)
      forward_floats<true>(in_row(xa + j, n, ba), in_row(xg + j, n, bg), n, of);
    else
      forward_floats<false>(in_row(xa + j, n, ba), in_row(xg + j, n, bg), n, of);
    flush(o + j, of, n);
  }
}

template <typename T>
void backward_rows(const GegluArgs& p, int64_t r, int64_t begin, int64_t end) {
  const int64_t h = p.half;
  const T* xa = static_cast<const T*>(p.x) + r * 2 * h;
  const T* xg = xa + h;
  const T* go = static_cast<const T*>(p.grad_out) + r * h;
  T* da = static_cast<T*>(p.grad_x) + r * 2 * h;
  T* dg = da + h;
  float bgo[kChunk], ba[kChunk], bg[kChunk], bda[kChunk], bdg[kChunk];
  for (int64_t j = begin; j < end; j += kChunk) {
    const int64_t n = std::min(kChunk, end - j);
    float* daf = out_row(da + j, bda);
    float* dgf = out_row(dg + j, bdg);
    const float* gof = in_row(go + j, n, bgo);
    const float* af = in_row(xa + j, n, ba);
    const float* gf = in_row(xg + j, n, bg);
    if (p.tanh)
      backward_floats<true>(gof, af, gf, n, daf, dgf);
    else
      backward_floats<false>(gof, af, gf, n, daf, dgf);
    flush(da + j, daf, n);
    flush(dg + j, dgf, n);
  }
}

}  // namespace

void geglu_forward(const GegluArgs& p, int64_t r, int64_t begin, int64_t end) {
  switch (p.dtype) {
    case DType::f32: return forward_rows<float>(p, r, begin, end);
    case DType::f16: return forward_rows<half>(p, r, begin, end);
    case DType::bf16: return forward_rows<bf16>(p, r, begin, end);
  }
}

void geglu_backward(const GegluArgs& p, int64_t r, int64_t begin, int64_t end) {
  switch (p.dtype) {
    case DType::f32: return backward_rows<float>(p, r, begin, end);
    case DType::f16: return backward_rows<half>(p, r, begin, end);
    case DType::bf16: return backward_rows<bf16>(p, r, begin, end);
  }
}

}  // namespace fastdiff::cpu::FASTDIFF_ISA
