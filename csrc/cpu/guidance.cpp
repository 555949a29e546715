// CPU implementations of fastdiff::guidance_combine and fastdiff::guidance_rescale_factor.
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "cpu/common.h"
#include "cpu/kernels/convert.h"
#include "guidance_fill.h"
#include "place.h"

namespace fastdiff::cpu {
namespace {

at::Tensor guidance_combine(const at::Tensor& model_out, double scale, const std::optional<at::Tensor>& scale_ps,
                            const std::optional<at::Tensor>& factor) {
  const GuidanceParams a = guidance_params<OnCpu>(model_out, scale, scale_ps, factor, "guidance_combine");
  std::vector<int64_t> shape(model_out.sizes().begin(), model_out.sizes().end());
  shape[0] = a.batch;
  at::Tensor out = empty_output(shape, model_out.options());
  if (out.numel() == 0) return out;
  void* o = out.data_ptr();
  for_each_segment(a.batch, a.per_sample,
                   [&](int64_t b, int64_t begin, int64_t end) { FASTDIFF_CPU_CALL(guidance_combine, a, o, b, begin, end); });
  return out;
}

at::Tensor guidance_rescale_factor(const at::Tensor& model_out, double scale, const std::optional<at::Tensor>& scale_ps,
                                   double rescale) {
  const GuidanceParams a = guidance_params<OnCpu>(model_out, scale, scale_ps, std::nullopt, "guidance_rescale_factor");
  at::Tensor out = at::empty({a.batch}, model_out.options().dtype(at::kFloat));
  const int64_t n = a.per_sample;
  // Fixed-size chunks, summed in order: the result does not depend on the thread count.
  constexpr int64_t kChunkSums = 1 << 14;
  const int64_t chunks = n ? (n + kChunkSums - 1) / kChunkSums : 0;
  std::vector<MomentSums> partial(a.batch * chunks);
  std::vector<float> shift_c(a.batch), shift_g(a.batch);
  for (int64_t b = 0; b < a.batch && n; ++b) {
    // Shift by the first element so the one-pass variance does not cancel catastrophically.
    const float u0 = load_float(a.model_out, a.dtype, b * n), c0 = load_float(a.model_out, a.dtype, (a.batch + b) * n);
    const float s = a.scale_per_sample ? a.scale_per_sample[b] : a.scale;
    shift_c[b] = c0;
    shift_g[b] = u0 + s * (c0 - u0);
  }
  at::parallel_for(0, a.batch * chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t b = i / chunks, begin = (i % chunks) * kChunkSums, end = std::min(n, begin + kChunkSums);
      partial[i] = FASTDIFF_CPU_CALL(guidance_moments, a, b, begin, end, shift_c[b], shift_g[b]);
    }
  });
  float* f = out.data_ptr<float>();
  for (int64_t b = 0; b < a.batch; ++b) {
    MomentSums t{0, 0, 0, 0};
    for (int64_t i = 0; i < chunks; ++i) {
      const MomentSums& p = partial[b * chunks + i];
      t.c1 += p.c1, t.c2 += p.c2, t.g1 += p.g1, t.g2 += p.g2;
    }
    const double inv = n ? 1.0 / static_cast<double>(n) : 0.0;
    const double var_c = std::max(0.0, t.c2 * inv - (t.c1 * inv) * (t.c1 * inv));
    const double var_g = std::max(0.0, t.g2 * inv - (t.g1 * inv) * (t.g1 * inv));
    const double ratio = var_g > 0.0 ? std::sqrt(var_c / var_g) : 1.0;
    f[b] = static_cast<float>(1.0 - rescale + rescale * ratio);
  }
  return out;
}

}  // namespace
}  // namespace fastdiff::cpu

TORCH_LIBRARY_IMPL(fastdiff, CPU, m) {
  m.impl("guidance_combine", &fastdiff::cpu::guidance_combine);
  m.impl("guidance_rescale_factor", &fastdiff::cpu::guidance_rescale_factor);
}
