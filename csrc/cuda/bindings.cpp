// CUDA implementations of the guidance and sampler_update ops: argument checks (mirroring
// csrc/cpu/*.cpp), device guard, current stream, outputs and scratch from torch's caching allocator,
// then the torch-free launchers of csrc/cuda/*.cu. Nothing here synchronises with the device.
#include <ATen/Functions.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "cuda/launchers.h"
#include "guidance_args.h"
#include "sampler_row.h"
#include "torch_args.h"

namespace fastdiff::cuda {
namespace {

// `t` is a contiguous tensor on `device` (a CUDA device: the first tensor argument's).
void check_on(const at::Tensor& t, const c10::Device& device, const char* op, const char* arg) {
  TORCH_CHECK(t.device() == device, "fastdiff.", op, ": argument '", arg, "' expected a tensor on ", device, ", got ",
              t.device());
  TORCH_CHECK(t.is_contiguous(), "fastdiff.", op, ": argument '", arg, "' expected a contiguous tensor");
}

void check_cuda(const at::Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK(t.is_cuda(), "fastdiff.", op, ": argument '", arg, "' expected a CUDA tensor, got ", t.device());
  check_on(t, t.device(), op, arg);
}

// Where the guidance ops need their tensors: model_out a contiguous CUDA tensor, the per-sample
// tensors contiguous on model_out's device.
struct OnModelOutDevice {
  static void check_main(const at::Tensor& t, const char* op, const char* arg) { check_cuda(t, op, arg); }
  static void check_with(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* arg) {
    check_on(t, ref.device(), op, arg);
  }
};

// Checks the guidance inputs (device, contiguous, shapes) and packs them for the launchers.
GuidanceParams guidance_params(const at::Tensor& model_out, double scale, const std::optional<at::Tensor>& scale_ps,
                               const std::optional<at::Tensor>& factor, const char* op) {
  const int64_t batch = check_guidance_inputs<OnModelOutDevice>(model_out, scale_ps, factor, op);
  GuidanceParams p{};
  p.model_out = model_out.const_data_ptr();
  p.dtype = to_dtype(model_out, op, "model_out");
  p.batch = batch;
  p.per_sample = batch ? model_out.numel() / (2 * batch) : 0;
  p.scale = static_cast<float>(scale);
  p.scale_per_sample = scale_ps.has_value() ? scale_ps->const_data_ptr<float>() : nullptr;
  p.factor = factor.has_value() ? factor->const_data_ptr<float>() : nullptr;
  return p;
}

at::Tensor guidance_combine(const at::Tensor& model_out, double scale, const std::optional<at::Tensor>& scale_ps,
                            const std::optional<at::Tensor>& factor) {
  const GuidanceParams p = guidance_params(model_out, scale, scale_ps, factor, "guidance_combine");
  const c10::cuda::CUDAGuard guard(model_out.device());
  std::vector<int64_t> shape(model_out.sizes().begin(), model_out.sizes().end());
  shape[0] = p.batch;
  at::Tensor out = at::empty(shape, model_out.options());
  if (out.numel() == 0) return out;
  C10_CUDA_CHECK(launch_guidance_combine(p, out.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor guidance_rescale_factor(const at::Tensor& model_out, double scale, const std::optional<at::Tensor>& scale_ps,
                                   double rescale) {
  const GuidanceParams p = guidance_params(model_out, scale, scale_ps, std::nullopt, "guidance_rescale_factor");
  const c10::cuda::CUDAGuard guard(model_out.device());
  at::Tensor out = at::empty({p.batch}, model_out.options().dtype(at::kFloat));
  if (p.batch == 0) return out;
  // Scratch for the per-chunk partial sums, from the caching allocator (no device sync, and
  // graph-capture safe).
  const auto bytes = static_cast<int64_t>(guidance_rescale_workspace_bytes(p.batch, p.per_sample));
  at::Tensor workspace = at::empty({bytes}, model_out.options().dtype(at::kByte));
  C10_CUDA_CHECK(launch_guidance_rescale_factor(p, rescale, workspace.mutable_data_ptr(), out.mutable_data_ptr<float>(),
                                                c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor sampler_update(const at::Tensor& x, const at::Tensor& model_out, const at::Tensor& coeffs,
                          const std::optional<at::Tensor>& history, const std::optional<at::Tensor>& noise, double scale,
                          const std::optional<at::Tensor>& scale_ps, const std::optional<at::Tensor>& factor) {
  constexpr const char* op = "sampler_update";
  check_cuda(x, op, "x");
  const c10::Device device = x.device();
  check_on(model_out, device, op, "model_out");
  check_on(coeffs, device, op, "coeffs");  // read on the device: the host never sees its values
  TORCH_CHECK(x.dim() >= 1, "fastdiff.sampler_update: argument 'x' expected a batched tensor, got a scalar");
  const int64_t batch = x.size(0), n = batch ? x.numel() / batch : 0;
  TORCH_CHECK(model_out.dim() >= 1, "fastdiff.sampler_update: argument 'model_out' expected a batched tensor, got a scalar");
  const bool guided = model_out.size(0) == 2 * batch && batch > 0;
  TORCH_CHECK(model_out.numel() == (guided ? 2 : 1) * x.numel(), "fastdiff.sampler_update: argument 'model_out' expected ",
              "shape (B or 2B, ...) matching x ", x.sizes(), ", got ", model_out.sizes());
  if (history.has_value()) {
    check_on(*history, device, op, "history");
    TORCH_CHECK(history->dim() >= 1, "fastdiff.sampler_update: argument 'history' expected (K, *x.shape), got a scalar");
  }
  const int64_t K = history.has_value() ? history->size(0) : 0;
  TORCH_CHECK(coeffs.scalar_type() == at::kFloat && coeffs.numel() == row::length(K),
              "fastdiff.sampler_update: argument 'coeffs' expected float32 of length ", row::length(K), ", got ",
              coeffs.scalar_type(), " of length ", coeffs.numel());
  if (history.has_value()) {
    TORCH_CHECK(history->scalar_type() == x.scalar_type() && history->numel() == K * x.numel(),
                "fastdiff.sampler_update: argument 'history' expected (K, *x.shape) in x's dtype, got ", history->sizes(),
                " ", history->scalar_type());
  }
  if (noise.has_value()) {
    check_on(*noise, device, op, "noise");
    TORCH_CHECK(noise->scalar_type() == x.scalar_type() && noise->sizes() == x.sizes(),
                "fastdiff.sampler_update: argument 'noise' expected x's shape and dtype, got ", noise->sizes(), " ",
                noise->scalar_type());
  }

  UpdateParams p{};
  p.x = x.const_data_ptr();
  p.x_dtype = to_dtype(x, op, "x");
  p.model_out = model_out.const_data_ptr();
  p.m_dtype = to_dtype(model_out, op, "model_out");
  p.guided = guided;
  p.scale = static_cast<float>(scale);
  if (guided) {
    const GuidanceParams g = guidance_params(model_out, scale, scale_ps, factor, op);
    p.scale_per_sample = g.scale_per_sample;
    p.factor = g.factor;
  }
  p.coeffs = coeffs.const_data_ptr<float>();
  p.history = history.has_value() ? history->mutable_data_ptr() : nullptr;
  p.history_len = K;
  p.noise = noise.has_value() ? noise->const_data_ptr() : nullptr;
  p.batch = batch;
  p.per_sample = n;

  const c10::cuda::CUDAGuard guard(device);
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  C10_CUDA_CHECK(launch_sampler_update(p, out.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace
}  // namespace fastdiff::cuda

TORCH_LIBRARY_IMPL(fastdiff, CUDA, m) {
  m.impl("guidance_combine", &fastdiff::cuda::guidance_combine);
  m.impl("guidance_rescale_factor", &fastdiff::cuda::guidance_rescale_factor);
  m.impl("sampler_update", &fastdiff::cuda::sampler_update);
}
