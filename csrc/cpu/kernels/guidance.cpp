// CPU guidance kernels (torch-free; compiled once per ISA, see kernels.h).
#include <algorithm>

#include "cpu/kernels/convert.h"
#include "cpu/kernels/kernels.h"

namespace fastdiff::cpu::FASTDIFF_ISA {
namespace {

template <typename T>
void combine(const GuidanceParams& a, T* out, int64_t b, int64_t begin, int64_t end) {
  const int64_t n = a.per_sample;
  const T* u = static_cast<const T*>(a.model_out) + b * n;
  const T* c = u + a.batch * n;
  const float s = a.scale_per_sample ? a.scale_per_sample[b] : a.scale;
  const float f = a.factor ? a.factor[b] : 1.0f;
  T* o = out + b * n;
  for (int64_t j = begin; j < end; ++j) {
    const float uu = to_float(u[j]);
    o[j] = from_float<T>(f * (uu + s * (to_float(c[j]) - uu)));
  }
}

template <typename T>
MomentSums moments(const GuidanceParams& a, int64_t b, int64_t begin, int64_t end, float sc, float sg) {
  const int64_t n = a.per_sample;
  const T* u = static_cast<const T*>(a.model_out) + b * n;
  const T* c = u + a.batch * n;
  const float s = a.scale_per_sample ? a.scale_per_sample[b] : a.scale;
  MomentSums r{0, 0, 0, 0};
  // Eight independent float lanes per block (vectorisable without reassociation), blocks summed in double.
  constexpr int L = 8;
  constexpr int64_t kBlock = 1024;
  for (int64_t j0 = begin; j0 < end; j0 += kBlock) {
    const int64_t stop = std::min(end, j0 + kBlock);
    float c1[L] = {}, c2[L] = {}, g1[L] = {}, g2[L] = {};
    int64_t j = j0;
    for (; j + L <= stop; j += L) {
      for (int l = 0; l < L; ++l) {
        const float uu = to_float(u[j + l]), cc = to_float(c[j + l]);
        const float dc = cc - sc, dg = (uu + s * (cc - uu)) - sg;
        c1[l] += dc;
        c2[l] += dc * dc;
        g1[l] += dg;
        g2[l] += dg * dg;
      }
    }
    for (; j < stop; ++j) {
      const float uu = to_float(u[j]), cc = to_float(c[j]);
      const float dc = cc - sc, dg = (uu + s * (cc - uu)) - sg;
      c1[0] += dc;
      c2[0] += dc * dc;
      g1[0] += dg;
      g2[0] += dg * dg;
    }
    for (int l = 0; l < L; ++l) {
      r.c1 += c1[l];
      r.c2 += c2[l];
      r.g1 += g1[l];
      r.g2 += g2[l];
    }
  }
  return r;
}

}  // namespace

void guidance_combine(const GuidanceParams& a, void* out, int64_t b, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case DType::f32: return combine(a, static_cast<float*>(out), b, begin, end);
    case DType::f16: return combine(a, static_cast<half*>(out), b, begin, end);
    case DType::bf16: return combine(a, static_cast<bf16*>(out), b, begin, end);
  }
}

MomentSums guidance_moments(const GuidanceParams& a, int64_t b, int64_t begin, int64_t end, float sc, float sg) {
  switch (a.dtype) {
    case DType::f32: return moments<float>(a, b, begin, end, sc, sg);
    case DType::f16: return moments<half>(a, b, begin, end, sc, sg);
    case DType::bf16: return moments<bf16>(a, b, begin, end, sc, sg);
  }
  return {};
}

}  // namespace fastdiff::cpu::FASTDIFF_ISA
