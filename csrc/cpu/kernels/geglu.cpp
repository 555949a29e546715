// CPU geglu kernels (torch-free; compiled once per ISA, see geglu.h).
//
// The math runs on 8-float GCC vector types (two SSE registers on the base build, one AVX register on
// the avx2 build), branch-free, in float32:
//   exp(x): x = k ln2 + r with |r| <= ln2/2 (Cody-Waite, two-part ln2), e^r by its degree-7 Taylor
//     polynomial (error < 1e-8 relative), 2^k built in the exponent bits. Saturates to +inf above
//     88.72 and to 0 below -87 (results there are denormal or zero in float32 anyway).
//   Phi(g) (the normal CDF, gelu(g) = g * Phi(g)): with t = |g| / sqrt(2), erfc(t) = exp(-t^2) *
//     erfcx(t), and erfcx(t) ~ u * P8(u), u = 2 / (2 + t): a fit of ours (iteratively reweighted least
//     squares on relative error over t in [0, 14]) good to 3e-7 relative when evaluated in float32.
//     Phi(g) = erfc(t) / 2 for g < 0, else 1 - erfc(t) / 2, so gelu keeps its relative accuracy in
//     the negative tail (4e-6 or better down to g = -16), where a 1 + erf(...) form cancels.
//   tanh form: 0.5 g (1 + tanh(y)) = g / (1 + exp(-2y)), y = sqrt(2/pi) (g + 0.044715 g^3).
// NaN propagates (every clamp is a comparison that is false for NaN). Rows of float16 / bfloat16 are
// converted into float buffers and back by the row helpers of rows.h.
#include <algorithm>
#include <cstring>

#include "cpu/kernels/convert.h"
#include "cpu/kernels/geglu.h"
#include "cpu/kernels/rows.h"

// The base build passes these 32-byte vectors through memory where it does not inline (GCC warns
// that the ABI differs from AVX's); every helper below is forced inline, so none is passed at all.
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
FD_INLINE vf select(vi mask, vf a, vf b) { return mask ? a : b; }
FD_INLINE vf vabs(vf v) { return reinterpret_cast<vf>(reinterpret_cast<vi>(v) & 0x7FFFFFFF); }

// e^x for x in [-87, 88]: x = k ln2 + r, e^r by its degree-7 Taylor polynomial, 2^k in the exponent bits.
FD_INLINE vf vexp_core(vf x) {
  // Round x / ln2 to the nearest integer k by adding 1.5 * 2^23: k sits in the low mantissa bits.
  const vf magic = splat(12582912.0f);
  const vf kf_biased = x * 1.44269504088896341f + magic;
  const vf kf = kf_biased - magic;
  const vi k = reinterpret_cast<vi>(kf_biased) - 0x4B400000;
  const vf r = (x - kf * 0.693145751953125f) - kf * 1.42860682030941723e-06f;
  vf p = splat(1.0f / 5040);
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * reinterpret_cast<vf>((k + 127) << 23);
}

// e^x, saturating to +inf above 88.72 and to 0 below -87.
FD_INLINE vf vexp(vf x) {
  const vf lo = splat(-87.0f), hi = splat(88.0f);
  vf xc = select(x < lo, lo, x);
  xc = select(xc > hi, hi, xc);
  vf e = vexp_core(xc);
  e = select(x > 88.72283935546875f, splat(__builtin_inff()), e);
  return select(x < lo, vf{}, e);
}

// exp(x) for x <= 0 or NaN (the exact GELU's only use): vexp without the overflow side.
FD_INLINE vf vexp_neg(vf x) {
  const vf lo = splat(-87.0f);
  const vf e = vexp_core(select(x < lo, lo, x));
  return select(x < lo, vf{}, e);
}

// erfcx(t) = exp(t^2) erfc(t) ~ u * P(u), u = 2 / (2 + t), t >= 0.
FD_INLINE vf verfcx(vf t) {
  const vf u = 2.0f / (t + 2.0f);
  vf p = splat(-0.05958063155412674f);
  p = p * u + 0.2869502902030945f;
  p = p * u - 0.49186959862709045f;
  p = p * u + 0.2831331193447113f;
  p = p * u - 0.02993522770702839f;
  p = p * u + 0.20401722192764282f;
  p = p * u + 0.24278312921524048f;
  p = p * u + 0.28241756558418274f;
  p = p * u + 0.28208407759666443f;
  return p * u;
}

constexpr float kSqrtHalf = 0.70710678118654752f;       // 1/sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;     // 1/sqrt(2 pi)
constexpr float kTanhK = 0.79788456080286536f;          // sqrt(2/pi)
constexpr float kTanhC = 0.044715f;

// gelu(g), and gelu'(g) when slope is wanted.
template <bool kSlope>
FD_INLINE vf gelu_exact(vf g, vf* slope) {
  const vf ag = vabs(g);
  const vf t = ag * kSqrtHalf;
  // exp(-g^2/2): rounding g^2 costs g^2 2^-25 relative (4e-6 at g = -11, where |gelu| < 1e-27);
  // splitting g to make it exact cost 30% of this loop's time for no visible gain.
  const vf e = vexp_neg(-0.5f * (ag * ag));
  const vf half_erfc = 0.5f * e * verfcx(t);
  const vf phi_cdf = select(g < 0.0f, half_erfc, 1.0f - half_erfc);
  if constexpr (kSlope) *slope = phi_cdf + g * (e * kInvSqrt2Pi);
  return g * phi_cdf;
}

template <bool kSlope>
FD_INLINE vf gelu_tanh(vf g, vf* slope) {
  const vf g2 = g * g;
  const vf y = kTanhK * (g + kTanhC * g * g2);
  const vf s = 1.0f / (1.0f + vexp(-2.0f * y));  // sigmoid(2y) = (1 + tanh y) / 2
  if constexpr (kSlope) *slope = s + g * (2.0f * s * (1.0f - s)) * (kTanhK * (1.0f + 3.0f * kTanhC * g2));
  return g * s;
}

template <bool kTanh, bool kSlope>
FD_INLINE vf gelu(vf g, vf* slope) {
  if constexpr (kTanh) return gelu_tanh<kSlope>(g, slope);
  return gelu_exact<kSlope>(g, slope);
}

// Float rows: out = a * gelu(g) for n columns (a tail shorter than kW goes through a padded block).
template <bool kTanh>
void forward_floats(const float* __restrict a, const float* __restrict g, int64_t n, float* __restrict out) {
  int64_t j = 0;
  for (; j + kW <= n; j += kW) storev(out + j, loadv(a + j) * gelu<kTanh, false>(loadv(g + j), nullptr));
  if (j < n) {
    float ta[kW] = {}, tg[kW] = {}, to[kW];
    std::copy(a + j, a + n, ta);
    std::copy(g + j, g + n, tg);
    storev(to, loadv(ta) * gelu<kTanh, false>(loadv(tg), nullptr));
    std::copy(to, to + (n - j), out + j);
  }
}

// Float rows: da = go * gelu(g), dg = go * a * gelu'(g).
template <bool kTanh>
void backward_floats(const float* __restrict go, const float* __restrict a, const float* __restrict g, int64_t n,
                     float* __restrict da, float* __restrict dg) {
  auto block = [](vf gov, vf av, vf gv, vf* dav, vf* dgv) {
    vf slope;
    *dav = gov * gelu<kTanh, true>(gv, &slope);
    *dgv = gov * av * slope;
  };
  int64_t j = 0;
  vf dav, dgv;
  for (; j + kW <= n; j += kW) {
    block(loadv(go + j), loadv(a + j), loadv(g + j), &dav, &dgv);
    storev(da + j, dav);
    storev(dg + j, dgv);
  }
  if (j < n) {
    float tgo[kW] = {}, ta[kW] = {}, tg[kW] = {}, tda[kW], tdg[kW];
    std::copy(go + j, go + n, tgo);
    std::copy(a + j, a + n, ta);
    std::copy(g + j, g + n, tg);
    block(loadv(tgo), loadv(ta), loadv(tg), &dav, &dgv);
    storev(tda, dav);
    storev(tdg, dgv);
    std::copy(tda, tda + (n - j), da + j);
    std::copy(tdg, tdg + (n - j), dg + j);
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
