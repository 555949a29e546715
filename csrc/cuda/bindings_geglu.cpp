// CUDA implementations of fastdiff::geglu and fastdiff::geglu_backward (schemas: csrc/ops.cpp): the
// checks shared with the CPU op (geglu_fill.h), device guard, current stream, outputs allocated
// through torch; the kernels are the torch-free launchers of cuda/geglu.cu.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/geglu.h"
#include "geglu_fill.h"

namespace fastdiff::cuda::ops {
namespace {

at::Tensor geglu(const at::Tensor& x, bool tanh) {
  GegluArgs a = geglu_fill::input<::fastdiff::OnCuda>(x, tanh, "geglu");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(geglu_fill::out_shape(x), x.options());
  a.out = out.data_ptr();
  C10_CUDA_CHECK(cuda::geglu_forward(a, c10::cuda::getCurrentCUDAStream(x.device().index()).stream()));
  return out;
}

at::Tensor geglu_backward(const at::Tensor& grad_out, const at::Tensor& x, bool tanh) {
  GegluArgs a = geglu_fill::input<::fastdiff::OnCuda>(x, tanh, "geglu_backward");
  geglu_fill::grad_out<::fastdiff::OnCuda>(grad_out, x, a, "geglu_backward");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor grad_x = at::empty_like(x);
  a.grad_out = grad_out.data_ptr();
  a.grad_x = grad_x.data_ptr();
  C10_CUDA_CHECK(cuda::geglu_backward(a, c10::cuda::getCurrentCUDAStream(x.device().index()).stream()));
  return grad_x;
}

}  // namespace
}  // namespace fastdiff::cuda::ops

TORCH_LIBRARY_IMPL(fastdiff, CUDA, m) {
  m.impl("geglu", &fastdiff::cuda::ops::geglu);
  m.impl("geglu_backward", &fastdiff::cuda::ops::geglu_backward);
}
