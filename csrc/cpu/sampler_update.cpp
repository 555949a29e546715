// CPU implementation of fastdiff::sampler_update.
#include <torch/library.h>

#include "cpu/common.h"
#include "place.h"
#include "sampler_update_fill.h"

namespace fastdiff::cpu {
namespace {

at::Tensor sampler_update(const at::Tensor& x, const at::Tensor& model_out, const at::Tensor& coeffs,
                          const std::optional<at::Tensor>& history, const std::optional<at::Tensor>& noise, double scale,
                          const std::optional<at::Tensor>& scale_ps, const std::optional<at::Tensor>& factor) {
  const UpdateParams a = sampler_update_params<OnCpu>(x, model_out, coeffs, history, noise, scale, scale_ps, factor);
  at::Tensor out = empty_output(x.sizes(), x.options());
  if (out.numel() == 0) return out;
  void* o = out.data_ptr();
  for_each_segment(a.batch, a.per_sample, [&](int64_t b, int64_t begin, int64_t end) { FASTDIFF_CPU_CALL(sampler_update, a, o, b, begin, end); });
  return out;
}

}  // namespace
}  // namespace fastdiff::cpu

TORCH_LIBRARY_IMPL(fastdiff, CPU, m) { m.impl("sampler_update", &fastdiff::cpu::sampler_update); }
