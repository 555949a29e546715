// CPU implementation of fastdiff::sampler_update.
#include <torch/library.h>

#include "cpu/common.h"
#include "cpu/guidance.h"
#include "sampler_row.h"

namespace fastdiff::cpu {
namespace {

at::Tensor sampler_update(const at::Tensor& x, const at::Tensor& model_out, const at::Tensor& coeffs,
                          const std::optional<at::Tensor>& history, const std::optional<at::Tensor>& noise, double scale,
                          const std::optional<at::Tensor>& scale_ps, const std::optional<at::Tensor>& factor) {
  constexpr const char* op = "sampler_update";
  check_cpu_contiguous(x, op, "x");
  check_cpu_contiguous(model_out, op, "model_out");
  check_cpu_contiguous(coeffs, op, "coeffs");
  TORCH_CHECK(x.dim() >= 1, "fastdiff.sampler_update: argument 'x' expected a batched tensor, got a scalar");
  const int64_t batch = x.size(0), n = batch ? x.numel() / batch : 0;
  const bool guided = model_out.size(0) == 2 * batch && batch > 0;
  TORCH_CHECK(model_out.numel() == (guided ? 2 : 1) * x.numel(), "fastdiff.sampler_update: argument 'model_out' expected ",
              "shape (B or 2B, ...) matching x ", x.sizes(), ", got ", model_out.sizes());
  const int64_t K = history.has_value() ? history->size(0) : 0;
  TORCH_CHECK(coeffs.scalar_type() == at::kFloat && coeffs.numel() == row::length(K),
              "fastdiff.sampler_update: argument 'coeffs' expected float32 of length ", row::length(K), ", got ",
              coeffs.scalar_type(), " of length ", coeffs.numel());
  if (history.has_value()) {
    check_cpu_contiguous(*history, op, "history");
    TORCH_CHECK(history->scalar_type() == x.scalar_type() && history->numel() == K * x.numel(),
                "fastdiff.sampler_update: argument 'history' expected (K, *x.shape) in x's dtype, got ", history->sizes(),
                " ", history->scalar_type());
  }
  if (noise.has_value()) {
    check_cpu_contiguous(*noise, op, "noise");
    TORCH_CHECK(noise->scalar_type() == x.scalar_type() && noise->sizes() == x.sizes(),
                "fastdiff.sampler_update: argument 'noise' expected x's shape and dtype, got ", noise->sizes(), " ",
                noise->scalar_type());
  }

  UpdateArgs a{};
  a.x = x.data_ptr();
  a.x_dtype = to_dtype(x, op, "x");
  a.model_out = model_out.data_ptr();
  a.m_dtype = to_dtype(model_out, op, "model_out");
  a.guided = guided;
  if (guided) a.guidance = guidance_args(model_out, scale, scale_ps, factor, op);
  a.coeffs = coeffs.data_ptr<float>();
  a.history = history.has_value() ? history->data_ptr() : nullptr;
  a.history_len = K;
  a.noise = noise.has_value() ? noise->data_ptr() : nullptr;
  a.batch = batch;
  a.per_sample = n;

  at::Tensor out = empty_output(x.sizes(), x.options());
  if (out.numel() == 0) return out;
  void* o = out.data_ptr();
  for_each_segment(batch, n, [&](int64_t b, int64_t begin, int64_t end) { FASTDIFF_CPU_CALL(sampler_update, a, o, b, begin, end); });
  return out;
}

}  // namespace
}  // namespace fastdiff::cpu

TORCH_LIBRARY_IMPL(fastdiff, CPU, m) { m.impl("sampler_update", &fastdiff::cpu::sampler_update); }
