// CUDA implementations of the guidance and sampler_update ops: the parameters checked and filled as
// for the CPU ops (csrc/<family>_fill.h with OnCuda), device guard, current stream, outputs and scratch
// from torch's caching allocator, then the torch-free launchers of csrc/cuda/*.cu. Nothing here
// synchronises with the device.
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
#include "guidance_fill.h"
#include "place.h"
#include "sampler_update_fill.h"

namespace fastdiff::cuda {
namespace {

at::Tensor guidance_combine(const at::Tensor& model_out, double scale, const std::optional<at::Tensor>& scale_ps,
                            const std::optional<at::Tensor>& factor) {
  const GuidanceParams p = guidance_params<OnCuda>(model_out, scale, scale_ps, factor, "guidance_combine");
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
  const GuidanceParams p = guidance_params<OnCuda>(model_out, scale, scale_ps, std::nullopt, "guidance_rescale_factor");
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
  const UpdateParams p = sampler_update_params<OnCuda>(x, model_out, coeffs, history, noise, scale, scale_ps, factor);
  const c10::cuda::CUDAGuard guard(x.device());
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
