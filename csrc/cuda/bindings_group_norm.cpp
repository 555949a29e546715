// CUDA implementations of group_norm and group_norm_backward (schemas and semantics: csrc/ops.cpp):
// the checks, the GroupNormArgs they fill and the buffers are the CPU op's (group_norm_fill.h); here
// only the device guard and the launch on the current stream.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "cuda/group_norm.h"
#include "group_norm_fill.h"

namespace fastdiff::cuda::ops {
namespace {

using Opt = std::optional<at::Tensor>;
namespace fill = group_norm_fill;

cudaStream_t stream_of(const at::Tensor& x) { return c10::cuda::getCurrentCUDAStream(x.device().index()).stream(); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm(const at::Tensor& x, int64_t num_groups, const Opt& weight,
                                                          const Opt& bias, double eps, bool silu) {
  constexpr const char* op = "group_norm";
  GroupNormArgs a = fill::inputs(x, num_groups, weight, bias, silu, c10::DeviceType::CUDA, op);
  a.eps = static_cast<float>(eps);
  const c10::cuda::CUDAGuard guard(x.device());
  fill::Buffers f = fill::forward_buffers(a, x);
  C10_CUDA_CHECK(cuda::group_norm_forward(a, stream_of(x)));
  return {f.out, f.mean, f.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                                   const Opt& weight, const Opt& bias,
                                                                   const at::Tensor& mean, const at::Tensor& rstd,
                                                                   int64_t num_groups, bool silu) {
  constexpr const char* op = "group_norm_backward";
  GroupNormArgs a =
      fill::backward_inputs(grad_out, x, weight, bias, mean, rstd, num_groups, silu, c10::DeviceType::CUDA, op);
  const c10::cuda::CUDAGuard guard(x.device());
  fill::Buffers f = fill::backward_buffers(a, x, weight, bias);
  C10_CUDA_CHECK(cuda::group_norm_backward(a, stream_of(x)));
  return {f.grad_x, f.grad_weight, f.grad_bias};
}

}  // namespace
}  // namespace fastdiff::cuda::ops

TORCH_LIBRARY_IMPL(fastdiff, CUDA, m) {
  m.impl("group_norm", &fastdiff::cuda::ops::group_norm);
  m.impl("group_norm_backward", &fastdiff::cuda::ops::group_norm_backward);
}
