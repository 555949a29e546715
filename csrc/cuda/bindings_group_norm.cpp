// CUDA implementations of group_norm and group_norm_backward (schemas and semantics: csrc/ops.cpp):
// the checks and the GroupNormArgs they fill are the CPU op's (group_norm_checks.h); here only the
// device guard, the allocations on x's device and the launch on the current stream.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "cuda/group_norm.h"
#include "group_norm_checks.h"

namespace fastdiff::cuda::ops {
namespace {

using Opt = std::optional<at::Tensor>;
namespace checks = group_norm_checks;

at::Tensor floats(int64_t count, const at::Tensor& x) { return at::empty({count}, x.options().dtype(at::kFloat)); }

at::Tensor like_x(const at::Tensor& x, const GroupNormArgs& a) {
  return at::empty(x.sizes(), x.options().memory_format(checks::memory_format(x, a.channels_last)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm(const at::Tensor& x, int64_t num_groups, const Opt& weight,
                                                          const Opt& bias, double eps, bool silu) {
  constexpr const char* op = "group_norm";
  GroupNormArgs a = checks::inputs(x, num_groups, weight, bias, silu, c10::DeviceType::CUDA, op);
  a.eps = static_cast<float>(eps);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = like_x(x, a);
  at::Tensor mean = at::empty({a.batch, a.groups}, x.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty({a.batch, a.groups}, x.options().dtype(at::kFloat));
  at::Tensor partial = floats(group_norm_partial_floats(a), x);
  a.out = out.data_ptr(), a.mean = mean.data_ptr<float>(), a.rstd = rstd.data_ptr<float>();
  a.partial = partial.data_ptr<float>();
  C10_CUDA_CHECK(cuda::group_norm_forward(a, c10::cuda::getCurrentCUDAStream(x.device().index()).stream()));
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                                   const Opt& weight, const Opt& bias,
                                                                   const at::Tensor& mean, const at::Tensor& rstd,
                                                                   int64_t num_groups, bool silu) {
  constexpr const char* op = "group_norm_backward";
  GroupNormArgs a = checks::inputs(x, num_groups, weight, bias, silu, c10::DeviceType::CUDA, op);
  a.grad_out = checks::grad_out(grad_out, x, a, op);
  a.mean = checks::stats(mean, x, a, op, "mean");
  a.rstd = checks::stats(rstd, x, a, op, "rstd");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor grad_x = like_x(x, a);
  at::Tensor grad_w = weight.has_value() ? at::empty_like(*weight) : at::empty({0}, x.options());
  at::Tensor grad_b = bias.has_value() ? at::empty_like(*bias) : at::empty({0}, x.options());
  at::Tensor partial = floats(group_norm_partial_floats(a), x);
  at::Tensor channel_sums = floats(a.batch * a.channels * 2, x), group_coef = floats(a.batch * a.groups * 2, x);
  a.grad_x = grad_x.data_ptr(), a.partial = partial.data_ptr<float>();
  a.channel_sums = channel_sums.data_ptr<float>(), a.group_coef = group_coef.data_ptr<float>();
  a.grad_weight = weight.has_value() ? grad_w.data_ptr() : nullptr;
  a.grad_bias = bias.has_value() ? grad_b.data_ptr() : nullptr;
  C10_CUDA_CHECK(cuda::group_norm_backward(a, c10::cuda::getCurrentCUDAStream(x.device().index()).stream()));
  return {grad_x, grad_w, grad_b};
}

}  // namespace
}  // namespace fastdiff::cuda::ops

TORCH_LIBRARY_IMPL(fastdiff, CUDA, m) {
  m.impl("group_norm", &fastdiff::cuda::ops::group_norm);
  m.impl("group_norm_backward", &fastdiff::cuda::ops::group_norm_backward);
}
