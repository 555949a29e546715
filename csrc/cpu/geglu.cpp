// CPU implementations of fastdiff::geglu and fastdiff::geglu_backward (schemas and semantics:
// csrc/ops.cpp): checks (geglu_fill.h), allocation and threading here, the loops in
// cpu/kernels/geglu.cpp. Elementwise, so the result does not depend on the thread count.
#include <torch/library.h>

#include "cpu/common.h"
#include "cpu/kernels/geglu.h"
#include "geglu_fill.h"

namespace fastdiff::cpu {
namespace {

at::Tensor geglu(const at::Tensor& x, bool tanh) {
  GegluArgs a = geglu_fill::input<::fastdiff::OnCpu>(x, tanh, "geglu");
  at::Tensor out = empty_output(geglu_fill::out_shape(x), x.options());
  if (out.numel() == 0) return out;
  a.out = out.data_ptr();
  for_each_segment(a.rows, a.half,
                   [&](int64_t r, int64_t begin, int64_t end) { FASTDIFF_CPU_CALL(geglu_forward, a, r, begin, end); });
  return out;
}

at::Tensor geglu_backward(const at::Tensor& grad_out, const at::Tensor& x, bool tanh) {
  GegluArgs a = geglu_fill::input<::fastdiff::OnCpu>(x, tanh, "geglu_backward");
  geglu_fill::grad_out<::fastdiff::OnCpu>(grad_out, x, a, "geglu_backward");
  at::Tensor grad_x = empty_output(x.sizes(), x.options());
  if (grad_x.numel() == 0) return grad_x;
  a.grad_out = grad_out.data_ptr();
  a.grad_x = grad_x.data_ptr();
  for_each_segment(a.rows, a.half,
                   [&](int64_t r, int64_t begin, int64_t end) { FASTDIFF_CPU_CALL(geglu_backward, a, r, begin, end); });
  return grad_x;
}

}  // namespace
}  // namespace fastdiff::cpu

TORCH_LIBRARY_IMPL(fastdiff, CPU, m) {
  m.impl("geglu", &fastdiff::cpu::geglu);
  m.impl("geglu_backward", &fastdiff::cpu::geglu_backward);
}
