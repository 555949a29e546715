// CPU adaln kernels (torch-free; compiled once per ISA, see adaln.h).
//
// Every row is computed in float32 buffers by simple loops over its D columns, which GCC vectorises:
// rows of float tensors are used in place; float16 / bfloat16 rows are converted into buffers on the
// way in and out by dedicated loops (F16C intrinsics for float16 on the avx2 build, where GCC does
// not vectorise _Float16 conversions; integer shifts for bfloat16). Row reductions (mean, variance,
// the backward's two dot products) keep kLanes independent accumulators: without -ffast-math a single
// scalar accumulator would not vectorise. Column sums over the tokens of a chunk (per-sample and
// parameter gradients) are vector adds across rows. The loops live in small functions whose pointer
// parameters are __restrict (GCC ignores restrict on local variables, and the vectoriser gives up on
// run-time alias checks between this many streams).
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif

#include "cpu/kernels/adaln.h"
#include "cpu/kernels/convert.h"
#include "cpu/kernels/rows.h"

namespace fastdiff::cpu::FASTDIFF_ISA {
namespace {

// ---- modulation factors ----------------------------------------------------------------------
// Per-column factors of one row's modulation: a1 = 1 + scale; aw = a1 * weight; c = a1 * bias + shift
// (c only when shift is given, i.e. in the forward). wf/bf: weight/bias as float (1 / 0 when absent).
inline void scale_factors(int64_t d, const float* __restrict sc, const float* __restrict wf, float* __restrict a1,
                          float* __restrict aw) {
  for (int64_t j = 0; j < d; ++j) {
    a1[j] = 1.0f + sc[j];
    aw[j] = a1[j] * wf[j];
  }
}

inline void shift_factors(int64_t d, const float* __restrict a1, const float* __restrict bf,
                          const float* __restrict sh, float* __restrict c) {
  for (int64_t j = 0; j < d; ++j) c[j] = a1[j] * bf[j] + sh[j];
}

template <typename T>
struct Modulation {
  const AdalnArgs& a;
  Scratch s;
  float *wf, *bf, *a1, *aw, *c, *tmp;
  int64_t cached = -1;  // the row (per token) or sample (per sample) whose factors are loaded

  explicit Modulation(const AdalnArgs& args) : a(args), s(6, args.dim) {
    wf = s[0], bf = s[1], a1 = s[2], aw = s[3], c = s[4], tmp = s[5];
    const int64_t d = a.dim;
    if (a.weight) {
      to_floats(static_cast<const T*>(a.weight), d, wf);
    } else {
      std::fill(wf, wf + d, 1.0f);
    }
    if (a.bias) {
      to_floats(static_cast<const T*>(a.bias), d, bf);
    } else {
      std::fill(bf, bf + d, 0.0f);
    }
  }

  // Loads the factors of row r (no work when they are per sample and already loaded).
  void load(int64_t r) {
    const int64_t d = a.dim, b = r / a.tokens;
    const bool per_token = a.scale_per_token || (a.shift && a.shift_per_token);
    const int64_t key = per_token ? r : b;
    if (key == cached) return;
    cached = key;
    const T* sc = static_cast<const T*>(a.scale) + (a.scale_per_token ? r : b) * d;
    scale_factors(d, in_row(sc, d, tmp), wf, a1, aw);
    if (a.shift) {
      const T* sh = static_cast<const T*>(a.shift) + (a.shift_per_token ? r : b) * d;
      shift_factors(d, a1, bf, in_row(sh, d, tmp), c);
    }
  }
};

template <typename T>
const T* mod_row(const void* p, bool per_token, int64_t r, int64_t tokens, int64_t d) {
  return static_cast<const T*>(p) + (per_token ? r : r / tokens) * d;
}

// ---- forward -----------------------------------------------------------------------------------
inline void gated_sum(int64_t d, const float* __restrict x, const float* __restrict g, const float* __restrict h,
                      float* __restrict out) {
  for (int64_t j = 0; j < d; ++j) out[j] = x[j] + g[j] * h[j];
}

inline void modulate_row(int64_t d, const float* __restrict v, float mean, float rstd, const float* __restrict aw,
                         const float* __restrict c, float* __restrict out) {
  for (int64_t j = 0; j < d; ++j) out[j] = (v[j] - mean) * rstd * aw[j] + c[j];
}

template <typename T>
void forward(const AdalnArgs& a, int64_t r0, int64_t r1) {
  const int64_t d = a.dim;
  Modulation<T> mod(a);
  Scratch s(5, d);
  for (int64_t r = r0; r < r1; ++r) {
    mod.load(r);
    const T* x = static_cast<const T*>(a.x) + r * d;
    const float* row;
    if (a.h) {  // fused: the row is x + gate * h as stored in T (the backward recomputes xhat from it)
      T* xo = static_cast<T*>(a.x_out) + r * d;
      float* v = out_row(xo, s[0]);
      gated_sum(d, in_row(x, d, s[1]), in_row(mod_row<T>(a.gate, a.gate_per_token, r, a.tokens, d), d, s[2]),
                in_row(static_cast<const T*>(a.h) + r * d, d, s[3]), v);
      flush(xo, v, d);
      row = in_row(xo, d, s[0]);  // the rounded values (a no-op for float)
    } else {
      row = in_row(x, d, s[0]);
    }
    const float inv_d = d ? 1.0f / static_cast<float>(d) : 0.0f;
    const float mean = a.rms ? 0.0f : row_sum(row, d) * inv_d;
    const float rstd = 1.0f / std::sqrt(row_sq_dev(row, d, mean) * inv_d + a.eps);
    a.mean[r] = mean;
    a.rstd[r] = rstd;
    T* o = static_cast<T*>(a.out) + r * d;
    float* of = out_row(o, s[4]);
    modulate_row(d, row, mean, rstd, mod.aw, mod.c, of);
    flush(o, of, d);
  }
}

template <typename T>
void residual_forward(const AdalnArgs& a, int64_t r0, int64_t r1) {
  const int64_t d = a.dim;
  Scratch s(4, d);
  for (int64_t r = r0; r < r1; ++r) {
    T* o = static_cast<T*>(a.out) + r * d;
    float* of = out_row(o, s[3]);
    gated_sum(d, in_row(static_cast<const T*>(a.x) + r * d, d, s[0]),
              in_row(mod_row<T>(a.gate, a.gate_per_token, r, a.tokens, d), d, s[1]),
              in_row(static_cast<const T*>(a.h) + r * d, d, s[2]), of);
    flush(o, of, d);
  }
}

// ---- backward ----------------------------------------------------------------------------------
inline void backward_pass1(int64_t d, const float* __restrict x, const float* __restrict g, const float* __restrict aw,
                           float mean, float rstd, float* __restrict xhat, float* __restrict gx) {
  for (int64_t j = 0; j < d; ++j) {
    xhat[j] = (x[j] - mean) * rstd;
    gx[j] = g[j] * aw[j];
  }
}

// Pass 2: grad_x (fused: total = grad_x_out + dx, grad_h = total * gate) and the per-column terms of
// the modulation gradients: summed into the partials (kSampleMods) or staged in g_nrm / g_gate.
template <bool kFused, bool kAffine, bool kSampleMods>
inline void backward_pass2(int64_t d, const float* __restrict g, const float* __restrict xhat,
                           const float* __restrict gx, const float* __restrict wf, const float* __restrict bf,
                           const float* __restrict gxo, const float* __restrict gate, const float* __restrict h,
                           float* __restrict grad_x, float* __restrict grad_h, float* __restrict p_shift,
                           float* __restrict p_scale, float* __restrict p_gate, float* __restrict g_nrm,
                           float* __restrict g_gate, float rstd, float m1, float m2) {
  for (int64_t j = 0; j < d; ++j) {
    const float xh = xhat[j];
    const float nrm = kAffine ? xh * wf[j] + bf[j] : xh;
    float t = rstd * (gx[j] - m1 - xh * m2);
    if constexpr (kFused) {
      t += gxo[j];
      grad_h[j] = t * gate[j];
    }
    grad_x[j] = t;
    if constexpr (kSampleMods) {
      p_shift[j] += g[j];
      p_scale[j] += g[j] * nrm;
      if constexpr (kFused) p_gate[j] += t * h[j];
    } else {
      g_nrm[j] = g[j] * nrm;
      if constexpr (kFused) g_gate[j] = t * h[j];
    }
  }
}

inline void add_to(int64_t d, const float* __restrict v, float* __restrict acc) {
  for (int64_t j = 0; j < d; ++j) acc[j] += v[j];
}

inline void param_terms(int64_t d, const float* __restrict g, const float* __restrict a1,
                        const float* __restrict xhat, float* __restrict p_weight, float* __restrict p_bias) {
  if (p_weight)
    for (int64_t j = 0; j < d; ++j) p_weight[j] += g[j] * a1[j] * xhat[j];
  if (p_bias)
    for (int64_t j = 0; j < d; ++j) p_bias[j] += g[j] * a1[j];
}

// Sums a staged row into its partial (per sample), or writes it as that row's gradient (per token).
template <typename T>
inline void sum_or_store(int64_t d, const float* v, float* partial, void* grad, int64_t r) {
  if (partial) {
    add_to(d, v, partial);
  } else {
    from_floats(v, d, static_cast<T*>(grad) + r * d);
  }
}

// Rows [r0, r1) of one sample. Pass 1 stages xhat and gx = g * (1 + scale) * weight and takes their
// two row sums; pass 2 writes everything else. kSampleMods: shift, scale and (fused) gate all per
// sample, the DiT layout, summed inside pass 2. kAffine: weight or bias present.
template <typename T, bool kFused, bool kAffine, bool kSampleMods>
void backward_rows(const AdalnArgs& a, int64_t r0, int64_t r1, float* partial) {
  const int64_t d = a.dim;
  Modulation<T> mod(a);  // a.shift is null here: only a1 and aw are loaded
  Scratch s(11, d);
  float *xhat = s[0], *gx = s[1], *g_nrm = s[2], *g_gate = s[3];
  float* p_shift = a.shift_per_token ? nullptr : partial + kPartShift * d;
  float* p_scale = a.scale_per_token ? nullptr : partial + kPartScale * d;
  float* p_weight = a.weight ? partial + kPartWeight * d : nullptr;
  float* p_bias = a.bias ? partial + kPartBias * d : nullptr;
  float* p_gate = (kFused && !a.gate_per_token) ? partial + kPartGate * d : nullptr;
  for (float* p : {p_shift, p_scale, p_weight, p_bias, p_gate})
    if (p) std::fill(p, p + d, 0.0f);
  const float inv_d = d ? 1.0f / static_cast<float>(d) : 0.0f;

  for (int64_t r = r0; r < r1; ++r) {
    mod.load(r);
    const float* x = in_row(static_cast<const T*>(a.x) + r * d, d, s[4]);
    const float* g = in_row(static_cast<const T*>(a.grad_out) + r * d, d, s[5]);
    const float mean = a.mean[r], rstd = a.rstd[r];

    backward_pass1(d, x, g, mod.aw, mean, rstd, xhat, gx);
    const float m1 = a.rms ? 0.0f : row_sum(gx, d) * inv_d, m2 = row_dot(gx, xhat, d) * inv_d;

    T* gxr = static_cast<T*>(a.grad_x) + r * d;
    float* gxf = out_row(gxr, s[6]);
    T* ghr = kFused ? static_cast<T*>(a.grad_h) + r * d : nullptr;
    float* ghf = kFused ? out_row(ghr, s[7]) : nullptr;
    const float *gxo = nullptr, *gate = nullptr, *h = nullptr;
    if constexpr (kFused) {
      gxo = in_row(static_cast<const T*>(a.grad_x_out) + r * d, d, s[8]);
      gate = in_row(mod_row<T>(a.gate, a.gate_per_token, r, a.tokens, d), d, s[9]);
      h = in_row(static_cast<const T*>(a.h) + r * d, d, s[10]);
    }
    backward_pass2<kFused, kAffine, kSampleMods>(d, g, xhat, gx, mod.wf, mod.bf, gxo, gate, h, gxf, ghf, p_shift,
                                                 p_scale, p_gate, g_nrm, g_gate, rstd, m1, m2);
    flush(gxr, gxf, d);
    if constexpr (kFused) flush(ghr, ghf, d);
    if constexpr (!kSampleMods) {
      sum_or_store<T>(d, g, p_shift, a.grad_shift, r);
      sum_or_store<T>(d, g_nrm, p_scale, a.grad_scale, r);
      if constexpr (kFused) sum_or_store<T>(d, g_gate, p_gate, a.grad_gate, r);
    }
    if constexpr (kAffine) param_terms(d, g, mod.a1, xhat, p_weight, p_bias);
  }
}

template <typename T>
void backward(const AdalnArgs& a, int64_t r0, int64_t r1, float* partial) {
  const bool fused = a.h != nullptr, affine = a.weight || a.bias;
  const bool sample_mods = !a.shift_per_token && !a.scale_per_token && !(fused && a.gate_per_token);
  if (fused) {
    if (affine) return sample_mods ? backward_rows<T, true, true, true>(a, r0, r1, partial)
                                   : backward_rows<T, true, true, false>(a, r0, r1, partial);
    return sample_mods ? backward_rows<T, true, false, true>(a, r0, r1, partial)
                       : backward_rows<T, true, false, false>(a, r0, r1, partial);
  }
  if (affine) return sample_mods ? backward_rows<T, false, true, true>(a, r0, r1, partial)
                                 : backward_rows<T, false, true, false>(a, r0, r1, partial);
  return sample_mods ? backward_rows<T, false, false, true>(a, r0, r1, partial)
                     : backward_rows<T, false, false, false>(a, r0, r1, partial);
}

inline void product(int64_t d, const float* __restrict u, const float* __restrict v, float* __restrict out) {
  for (int64_t j = 0; j < d; ++j) out[j] = u[j] * v[j];
}

inline void add_product(int64_t d, const float* __restrict u, const float* __restrict v, float* __restrict acc) {
  for (int64_t j = 0; j < d; ++j) acc[j] += u[j] * v[j];
}

template <typename T>
void residual_backward(const AdalnArgs& a, int64_t r0, int64_t r1, float* partial) {
  const int64_t d = a.dim;
  Scratch s(5, d);
  float* p_gate = a.gate_per_token ? nullptr : partial + kPartGate * d;
  if (p_gate) std::fill(p_gate, p_gate + d, 0.0f);
  for (int64_t r = r0; r < r1; ++r) {
    const float* g = in_row(static_cast<const T*>(a.grad_out) + r * d, d, s[0]);
    const float* gate = in_row(mod_row<T>(a.gate, a.gate_per_token, r, a.tokens, d), d, s[1]);
    const float* h = in_row(static_cast<const T*>(a.h) + r * d, d, s[2]);
    T* gh = static_cast<T*>(a.grad_h) + r * d;
    float* ghf = out_row(gh, s[3]);
    product(d, g, gate, ghf);
    flush(gh, ghf, d);
    if (p_gate) {
      add_product(d, g, h, p_gate);
    } else {
      T* gg = static_cast<T*>(a.grad_gate) + r * d;
      float* ggf = out_row(gg, s[4]);
      product(d, g, h, ggf);
      flush(gg, ggf, d);
    }
  }
}

}  // namespace

#define FASTDIFF_ADALN_DISPATCH(fn, ...)                          \
  switch (a.dtype) {                                              \
    case DType::f32: return fn<float>(__VA_ARGS__);               \
    case DType::f16: return fn<half>(__VA_ARGS__);                \
    case DType::bf16: return fn<bf16>(__VA_ARGS__);               \
  }

void adaln_forward(const AdalnArgs& a, int64_t r0, int64_t r1) { FASTDIFF_ADALN_DISPATCH(forward, a, r0, r1) }

void gated_residual_forward(const AdalnArgs& a, int64_t r0, int64_t r1) {
  FASTDIFF_ADALN_DISPATCH(residual_forward, a, r0, r1)
}

void adaln_backward(const AdalnArgs& a, int64_t r0, int64_t r1, float* partial) {
  FASTDIFF_ADALN_DISPATCH(backward, a, r0, r1, partial)
}

void gated_residual_backward(const AdalnArgs& a, int64_t r0, int64_t r1, float* partial) {
  FASTDIFF_ADALN_DISPATCH(residual_backward, a, r0, r1, partial)
}

#undef FASTDIFF_ADALN_DISPATCH

void sum_strided(const float* src, int64_t stride, int64_t count, int64_t j0, int64_t j1, float* out) {
  float* __restrict o = out + j0;
  const int64_t n = j1 - j0;
  std::fill(o, o + n, 0.0f);
  for (int64_t i = 0; i < count; ++i) add_to(n, src + i * stride + j0, o);
}

}  // namespace fastdiff::cpu::FASTDIFF_ISA
