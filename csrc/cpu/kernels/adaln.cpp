// CPU adaln kernels (torch-free; compiled once per ISA, see adaln.h).
//
// Every loop runs over the D columns of a row with float32 arithmetic, so GCC vectorises it. Row
// reductions (mean, variance, the two backward dot products) keep kLanes independent accumulators:
// without -ffast-math a single scalar accumulator would not vectorise. Column sums over the tokens
// of a chunk (per-sample and parameter gradients) are vector adds across rows.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/kernels/adaln.h"
#include "cpu/kernels/convert.h"

namespace fastdiff::cpu::FASTDIFF_ISA {
namespace {

constexpr int kLanes = 16;

inline float lanes_total(const float* acc) {
  float s = 0.0f;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

// sum(v) and sum((v - c)^2) of one row.
inline float row_sum(const float* __restrict v, int64_t n) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += v[j + l];
  for (; j < n; ++j) acc[0] += v[j];
  return lanes_total(acc);
}

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

// A row as float32: the storage itself for float, else converted into buf.
template <typename T>
inline const float* as_float(const T* __restrict src, int64_t n, float* __restrict buf) {
  for (int64_t j = 0; j < n; ++j) buf[j] = to_float(src[j]);
  return buf;
}
template <>
inline const float* as_float<float>(const float* src, int64_t, float*) {
  return src;
}

template <typename T>
inline void store(T* __restrict dst, const float* __restrict src, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = from_float<T>(src[j]);
}

// Row statistics: (mean, rstd) of LayerNorm, or (0, rstd) of RMSNorm.
inline void row_stats(const float* v, int64_t d, float eps, bool rms, float* mean, float* rstd) {
  const float inv_d = d ? 1.0f / static_cast<float>(d) : 0.0f;
  const float m = rms ? 0.0f : row_sum(v, d) * inv_d;
  *mean = m;
  *rstd = 1.0f / std::sqrt(row_sq_dev(v, d, m) * inv_d + eps);
}

// Per-column factors of one row's modulation. a1 = 1 + scale; aw = a1 * weight; c = a1 * bias + shift
// (c only when shift is given, i.e. in the forward). wf/bf hold weight/bias as float (1 / 0 when absent).
template <typename T>
struct Modulation {
  const AdalnArgs& a;
  std::vector<float> store_;
  float *wf, *bf, *a1, *aw, *c;
  int64_t cached = -1;  // the row (per token) or sample (per sample) whose factors are loaded

  explicit Modulation(const AdalnArgs& args) : a(args), store_(5 * args.dim) {
    const int64_t d = a.dim;
    wf = store_.data(), bf = wf + d, a1 = bf + d, aw = a1 + d, c = aw + d;
    const T* w = static_cast<const T*>(a.weight);
    const T* b = static_cast<const T*>(a.bias);
    for (int64_t j = 0; j < d; ++j) wf[j] = w ? to_float(w[j]) : 1.0f;
    for (int64_t j = 0; j < d; ++j) bf[j] = b ? to_float(b[j]) : 0.0f;
  }

  // Loads the factors of row r (no work when they are per sample and already loaded).
  void load(int64_t r) {
    const int64_t d = a.dim, b = r / a.tokens;
    const bool per_token = a.scale_per_token || (a.shift && a.shift_per_token);
    const int64_t key = per_token ? r : b;
    if (key == cached) return;
    cached = key;
    const T* sc = static_cast<const T*>(a.scale) + (a.scale_per_token ? r : b) * d;
    for (int64_t j = 0; j < d; ++j) {
      a1[j] = 1.0f + to_float(sc[j]);
      aw[j] = a1[j] * wf[j];
    }
    if (a.shift) {
      const T* sh = static_cast<const T*>(a.shift) + (a.shift_per_token ? r : b) * d;
      for (int64_t j = 0; j < d; ++j) c[j] = a1[j] * bf[j] + to_float(sh[j]);
    }
  }
};

template <typename T>
const T* mod_row(const void* p, bool per_token, int64_t r, int64_t tokens, int64_t d) {
  return static_cast<const T*>(p) + (per_token ? r : r / tokens) * d;
}

template <typename T>
void forward(const AdalnArgs& a, int64_t r0, int64_t r1) {
  const int64_t d = a.dim;
  Modulation<T> mod(a);
  std::vector<float> buf(d);
  float* __restrict v = buf.data();
  for (int64_t r = r0; r < r1; ++r) {
    mod.load(r);
    const T* x = static_cast<const T*>(a.x) + r * d;
    const float* row;
    if (a.h) {  // fused: the row is x + gate * h as stored in T (the backward recomputes xhat from it)
      const T* g = mod_row<T>(a.gate, a.gate_per_token, r, a.tokens, d);
      const T* h = static_cast<const T*>(a.h) + r * d;
      T* xo = static_cast<T*>(a.x_out) + r * d;
      for (int64_t j = 0; j < d; ++j) {
        const T stored = from_float<T>(to_float(x[j]) + to_float(g[j]) * to_float(h[j]));
        xo[j] = stored;
        v[j] = to_float(stored);
      }
      row = v;
    } else {
      row = as_float(x, d, v);
    }
    float mean, rstd;
    row_stats(row, d, a.eps, a.rms, &mean, &rstd);
    a.mean[r] = mean;
    a.rstd[r] = rstd;
    T* __restrict o = static_cast<T*>(a.out) + r * d;
    const float* __restrict aw = mod.aw;
    const float* __restrict c = mod.c;
    for (int64_t j = 0; j < d; ++j) o[j] = from_float<T>((row[j] - mean) * rstd * aw[j] + c[j]);
  }
}

template <typename T>
void residual_forward(const AdalnArgs& a, int64_t r0, int64_t r1) {
  const int64_t d = a.dim;
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict x = static_cast<const T*>(a.x) + r * d;
    const T* __restrict g = mod_row<T>(a.gate, a.gate_per_token, r, a.tokens, d);
    const T* __restrict h = static_cast<const T*>(a.h) + r * d;
    T* __restrict o = static_cast<T*>(a.out) + r * d;
    for (int64_t j = 0; j < d; ++j) o[j] = from_float<T>(to_float(x[j]) + to_float(g[j]) * to_float(h[j]));
  }
}

template <typename T>
void backward(const AdalnArgs& a, int64_t r0, int64_t r1, float* partial) {
  const int64_t d = a.dim;
  const bool fused = a.h != nullptr;
  Modulation<T> mod(a);  // a.shift is null here: only a1 and aw are loaded
  std::vector<float> buf(6 * d);
  float* __restrict xbuf = buf.data();
  float* __restrict gbuf = xbuf + d;
  float* __restrict xhat = gbuf + d;
  float* __restrict gx = xhat + d;
  float* __restrict dx = gx + d;
  float* __restrict tbuf = dx + d;
  float* __restrict p_shift = a.shift_per_token ? nullptr : partial + kPartShift * d;
  float* __restrict p_scale = a.scale_per_token ? nullptr : partial + kPartScale * d;
  float* __restrict p_weight = a.weight ? partial + kPartWeight * d : nullptr;
  float* __restrict p_bias = a.bias ? partial + kPartBias * d : nullptr;
  float* __restrict p_gate = (fused && !a.gate_per_token) ? partial + kPartGate * d : nullptr;
  for (float* p : {p_shift, p_scale, p_weight, p_bias, p_gate})
    if (p) std::fill(p, p + d, 0.0f);
  const float inv_d = d ? 1.0f / static_cast<float>(d) : 0.0f;
  const float* __restrict wf = mod.wf;
  const float* __restrict bf = mod.bf;

  for (int64_t r = r0; r < r1; ++r) {
    mod.load(r);
    const float* __restrict a1 = mod.a1;
    const float* __restrict aw = mod.aw;
    const float* __restrict x = as_float(static_cast<const T*>(a.x) + r * d, d, xbuf);
    const float* __restrict g = as_float(static_cast<const T*>(a.grad_out) + r * d, d, gbuf);
    const float mean = a.mean[r], rstd = a.rstd[r];

    // xhat, gx = g * (1 + scale) * weight, and the row sums of gx and gx * xhat.
    float s1[kLanes] = {}, s2[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= d; j += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        const float xh = (x[j + l] - mean) * rstd, gv = g[j + l] * aw[j + l];
        xhat[j + l] = xh;
        gx[j + l] = gv;
        s1[l] += gv;
        s2[l] += gv * xh;
      }
    for (; j < d; ++j) {
      const float xh = (x[j] - mean) * rstd, gv = g[j] * aw[j];
      xhat[j] = xh;
      gx[j] = gv;
      s1[0] += gv;
      s2[0] += gv * xh;
    }
    const float m1 = a.rms ? 0.0f : lanes_total(s1) * inv_d, m2 = lanes_total(s2) * inv_d;
    for (j = 0; j < d; ++j) dx[j] = rstd * (gx[j] - m1 - xhat[j] * m2);

    if (fused) {  // total = grad_x_out + dx flows to x, h and gate
      const float* __restrict gxo = as_float(static_cast<const T*>(a.grad_x_out) + r * d, d, tbuf);
      const T* __restrict gate = mod_row<T>(a.gate, a.gate_per_token, r, a.tokens, d);
      const T* __restrict h = static_cast<const T*>(a.h) + r * d;
      T* __restrict gxr = static_cast<T*>(a.grad_x) + r * d;
      T* __restrict ghr = static_cast<T*>(a.grad_h) + r * d;
      for (j = 0; j < d; ++j) {
        const float t = gxo[j] + dx[j];
        gxr[j] = from_float<T>(t);
        ghr[j] = from_float<T>(t * to_float(gate[j]));
        dx[j] = t * to_float(h[j]);  // dx now holds the gate gradient of this row
      }
      if (p_gate) {
        for (j = 0; j < d; ++j) p_gate[j] += dx[j];
      } else {
        store(static_cast<T*>(a.grad_gate) + r * d, dx, d);
      }
    } else {
      store(static_cast<T*>(a.grad_x) + r * d, dx, d);
    }

    if (p_shift) {
      for (j = 0; j < d; ++j) p_shift[j] += g[j];
    } else {
      store(static_cast<T*>(a.grad_shift) + r * d, g, d);
    }
    if (p_scale) {
      for (j = 0; j < d; ++j) p_scale[j] += g[j] * (xhat[j] * wf[j] + bf[j]);
    } else {
      T* __restrict gs = static_cast<T*>(a.grad_scale) + r * d;
      for (j = 0; j < d; ++j) gs[j] = from_float<T>(g[j] * (xhat[j] * wf[j] + bf[j]));
    }
    if (p_weight)
      for (j = 0; j < d; ++j) p_weight[j] += g[j] * a1[j] * xhat[j];
    if (p_bias)
      for (j = 0; j < d; ++j) p_bias[j] += g[j] * a1[j];
  }
}

template <typename T>
void residual_backward(const AdalnArgs& a, int64_t r0, int64_t r1, float* partial) {
  const int64_t d = a.dim;
  float* __restrict p_gate = a.gate_per_token ? nullptr : partial + kPartGate * d;
  if (p_gate) std::fill(p_gate, p_gate + d, 0.0f);
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict g = static_cast<const T*>(a.grad_out) + r * d;
    const T* __restrict gate = mod_row<T>(a.gate, a.gate_per_token, r, a.tokens, d);
    const T* __restrict h = static_cast<const T*>(a.h) + r * d;
    T* __restrict gh = static_cast<T*>(a.grad_h) + r * d;
    for (int64_t j = 0; j < d; ++j) gh[j] = from_float<T>(to_float(g[j]) * to_float(gate[j]));
    if (p_gate) {
      for (int64_t j = 0; j < d; ++j) p_gate[j] += to_float(g[j]) * to_float(h[j]);
    } else {
      T* __restrict gg = static_cast<T*>(a.grad_gate) + r * d;
      for (int64_t j = 0; j < d; ++j) gg[j] = from_float<T>(to_float(g[j]) * to_float(h[j]));
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
  float* __restrict o = out;
  for (int64_t j = j0; j < j1; ++j) o[j] = 0.0f;
  for (int64_t i = 0; i < count; ++i) {
    const float* __restrict s = src + i * stride;
    for (int64_t j = j0; j < j1; ++j) o[j] += s[j];
  }
}

}  // namespace fastdiff::cpu::FASTDIFF_ISA
