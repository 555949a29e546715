// CPU fused sampler step (torch-free; compiled once per ISA, see kernels.h).
#include <algorithm>
#include <cmath>
#include <type_traits>

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

  // The history slots this step reads (a zero coefficient is not read: the slot may hold anything).
  constexpr int kDirect = 3;
  const TX* hp[kDirect] = {};
  float hc[kDirect] = {};
  int reads = 0;
  for (int64_t k = 0; k < K; ++k) {
    const float ch = a.coeffs[row::kHistory + k];
    if (ch == 0.0f) continue;
    if (reads < kDirect) {
      hp[reads] = hist + k * bn + b * n;
      hc[reads] = ch;
    }
    ++reads;
  }
  TX* slot_out = slot >= 0 ? hist + slot * bn + b * n : nullptr;

  // One element's update before history terms; d (the converted output) through dv.
  auto element = [&](int64_t j, float& dv) {
    float mv;
    if (a.guided) {
      const float uu = to_float(mu[j]);
      mv = f * (uu + s * (to_float(mc[j]) - uu));
    } else {
      mv = to_float(mu[j]);
    }
    const float xv = to_float(x[j]);
    dv = ca * xv + cb * mv;
    float av = cx * xv + cd * dv;
    if (z) av += cz * to_float(z[j]);
    return av;
  };
  // Up to kDirect history reads: one pass straight to the outputs. (Element j reads every slot at j
  // before writing slot[j]: the same values as reading the whole chunk first.)
  auto direct = [&](auto reads_c) {
    constexpr int R = decltype(reads_c)::value;
    const TX *h0 = hp[0], *h1 = hp[1], *h2 = hp[2];  // named, not indexed: GCC then vectorises R = 2, 3
    const float c0 = hc[0], c1 = hc[1], c2 = hc[2];
    // No element reads another's output, and a slot that is both read and written is read first at
    // each j: no loop-carried dependence, whatever the pointers alias (GCC gives up proving it for
    // this many pointers and would run the loop scalar).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC ivdep
#endif
    for (int64_t j = begin; j < end; ++j) {
      float dv;
      float av = element(j, dv);
      if constexpr (R >= 1) av += c0 * to_float(h0[j]);
      if constexpr (R >= 2) av += c1 * to_float(h1[j]);
      if constexpr (R >= 3) av += c2 * to_float(h2[j]);
      o[j] = from_float<TX>(av);
      if (slot_out) slot_out[j] = from_float<TX>(dv);
    }
  };
  switch (reads) {
    case 0: return direct(std::integral_constant<int, 0>{});
    case 1: return direct(std::integral_constant<int, 1>{});
    case 2: return direct(std::integral_constant<int, 2>{});
    case 3: return direct(std::integral_constant<int, 3>{});
    default: break;
  }

  float d[kChunk], acc[kChunk];
  for (int64_t j0 = begin; j0 < end; j0 += kChunk) {
    const int64_t len = std::min<int64_t>(kChunk, end - j0);
    for (int64_t j = 0; j < len; ++j) acc[j] = element(j0 + j, d[j]);
    // Slots whose coefficient is exactly zero are not read: they may hold anything (even NaN).
    for (int64_t k = 0; k < K; ++k) {
      const float ch = a.coeffs[row::kHistory + k];
      if (ch == 0.0f) continue;
      const TX* h = hist + k * bn + b * n + j0;
      for (int64_t j = 0; j < len; ++j) acc[j] += ch * to_float(h[j]);
    }
    for (int64_t j = 0; j < len; ++j) o[j0 + j] = from_float<TX>(acc[j]);
    if (slot_out) {
      for (int64_t j = 0; j < len; ++j) slot_out[j0 + j] = from_float<TX>(d[j]);
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
