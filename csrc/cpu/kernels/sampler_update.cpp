// CPU fused sampler step (torch-free; compiled once per ISA, see kernels.h).
#include <algorithm>
#include <cmath>

#include "cpu/kernels/convert.h"
#include "cpu/kernels/kernels.h"
#include "sampler_row.h"

namespace fastdiff::cpu::FASTDIFF_ISA {
namespace {

template <typename TX, typename TM>
void update(const UpdateParams& a, TX* out, int64_t b, int64_t begin, int64_t end) {
  const int64_t n = a.per_sample, bn = a.batch * n;
  const float ca = a.coeffs[row::kA], cb = a.coeffs[row::kB], cx = a.coeffs[row::kCX], cd = a.coeffs[row::kCD];
  const float cz = a.coeffs[row::kCZ], slot_f = a.coeffs[row::kSlot];
  const int64_t K = a.history_len;
  // Only a whole number in [0, K) names a slot (as in the reference); NaN, fractions and
  // out-of-range values write nothing.
  const int64_t slot =
      (slot_f >= 0.0f && slot_f < static_cast<float>(K) && slot_f == std::floor(slot_f)) ? static_cast<int64_t>(slot_f) : -1;
  const TX* x = static_cast<const TX*>(a.x) + b * n;
  const TM* mu = static_cast<const TM*>(a.model_out) + b * n;
  const TM* mc = mu + bn;  // cond half, read only when guided
  const float s = a.scale_per_sample ? a.scale_per_sample[b] : a.scale;
  const float f = a.factor ? a.factor[b] : 1.0f;
  const TX* z = (a.noise && cz != 0.0f) ? static_cast<const TX*>(a.noise) + b * n : nullptr;
  TX* hist = static_cast<TX*>(a.history);
  TX* o = out + b * n;

  float m[kChunk], d[kChunk], acc[kChunk];
  for (int64_t j0 = begin; j0 < end; j0 += kChunk) {
    const int64_t len = std::min<int64_t>(kChunk, end - j0);
    if (a.guided) {
      for (int64_t j = 0; j < len; ++j) {
        const float uu = to_float(mu[j0 + j]);
        m[j] = f * (uu + s * (to_float(mc[j0 + j]) - uu));
      }
    } else {
      for (int64_t j = 0; j < len; ++j) m[j] = to_float(mu[j0 + j]);
    }
    for (int64_t j = 0; j < len; ++j) {
      const float xv = to_float(x[j0 + j]);
      d[j] = ca * xv + cb * m[j];
      acc[j] = cx * xv + cd * d[j];
    }
    if (z) {
      for (int64_t j = 0; j < len; ++j) acc[j] += cz * to_float(z[j0 + j]);
    }
    // Slots whose coefficient is exactly zero are not read: they may hold anything (even NaN).
    for (int64_t k = 0; k < K; ++k) {
      const float ch = a.coeffs[row::kHistory + k];
      if (ch == 0.0f) continue;
      const TX* h = hist + k * bn + b * n + j0;
      for (int64_t j = 0; j < len; ++j) acc[j] += ch * to_float(h[j]);
    }
    for (int64_t j = 0; j < len; ++j) o[j0 + j] = from_float<TX>(acc[j]);
    if (slot >= 0) {
      TX* h = hist + slot * bn + b * n + j0;
      for (int64_t j = 0; j < len; ++j) h[j] = from_float<TX>(d[j]);
    }
  }
}

template <typename TX>
void dispatch_m(const UpdateParams& a, void* out, int64_t b, int64_t begin, int64_t end) {
  TX* o = static_cast<TX*>(out);
  switch (a.m_dtype) {
    case DType::f32: return update<TX, float>(a, o, b, begin, end);
    case DType::f16: return update<TX, half>(a, o, b, begin, end);
    case DType::bf16: return update<TX, bf16>(a, o, b, begin, end);
  }
}

}  // namespace

void sampler_update(const UpdateParams& a, void* out, int64_t b, int64_t begin, int64_t end) {
  switch (a.x_dtype) {
    case DType::f32: return dispatch_m<float>(a, out, b, begin, end);
    case DType::f16: return dispatch_m<half>(a, out, b, begin, end);
    case DType::bf16: return dispatch_m<bf16>(a, out, b, begin, end);
  }
}

}  // namespace fastdiff::cpu::FASTDIFF_ISA
