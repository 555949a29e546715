// CUDA implementations of the adaln ops (schemas and semantics: csrc/ops.cpp): argument checks, device
// guard, current stream, outputs and the backward's workspace allocated through torch; the kernels are
// the torch-free launchers of cuda/adaln.cu.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "adaln_args.h"
#include "cuda/adaln.h"

// The op implementations live in their own namespace: several share their names with the launchers.
namespace fastdiff::cuda::ops {
namespace {

using Opt = std::optional<at::Tensor>;

// Where the CUDA ops need a tensor: a contiguous CUDA tensor on ref's device.
struct OnRefDevice {
  static void check_with(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* arg) {
    TORCH_CHECK(t.is_cuda(), "fastdiff.", op, ": argument '", arg, "' expected a CUDA tensor, got a tensor on ",
                t.device());
    TORCH_CHECK(t.device() == ref.device(), "fastdiff.", op, ": argument '", arg, "' expected a tensor on ",
                ref.device(), " (like the other inputs), got a tensor on ", t.device());
    TORCH_CHECK(t.is_contiguous(), "fastdiff.", op, ": argument '", arg, "' expected a contiguous tensor, got strides ",
                t.strides());
  }
};

using Shape = adaln_args::Shape;
using Check = adaln_args::Checks<OnRefDevice>;

cudaStream_t stream_of(const at::Tensor& x) { return c10::cuda::getCurrentCUDAStream(x.device().index()).stream(); }

at::Tensor stats_like(const at::Tensor& x, Shape s) { return at::empty({s.b, s.n}, x.options().dtype(at::kFloat)); }

// A (B, N, D) gradient when per token, else (B, D).
at::Tensor mod_grad(const at::Tensor& x, Shape s, bool per_token) {
  return per_token ? at::empty_like(x) : at::empty({s.b, s.d}, x.options());
}

at::Tensor param_grad(const Opt& p, const at::Tensor& x) {
  return p.has_value() ? at::empty_like(*p) : at::empty({0}, x.options());
}

void* ptr_if(const Opt& p, at::Tensor& t) { return p.has_value() ? t.data_ptr() : nullptr; }

at::Tensor workspace(size_t bytes, const at::Tensor& x) {
  return at::empty({static_cast<int64_t>(bytes / sizeof(float))}, x.options().dtype(at::kFloat));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaln_modulate(const at::Tensor& x, const at::Tensor& shift,
                                                              const at::Tensor& scale, const Opt& weight,
                                                              const Opt& bias, double eps, bool rms) {
  constexpr const char* op = "adaln_modulate";
  const Shape s = Check::rows(x, op, "x");
  AdalnForwardArgs a{};
  a.dtype = to_dtype(x, op, "x");
  a.batch = s.b, a.tokens = s.n, a.dim = s.d, a.eps = static_cast<float>(eps), a.rms = rms;
  a.shift_per_token = Check::mod(shift, x, s, op, "shift");
  a.scale_per_token = Check::mod(scale, x, s, op, "scale");
  a.weight = Check::param(weight, x, s, op, "weight");
  a.bias = Check::param(bias, x, s, op, "bias");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x), mean = stats_like(x, s), rstd = stats_like(x, s);
  a.x = x.data_ptr(), a.shift = shift.data_ptr(), a.scale = scale.data_ptr();
  a.out = out.data_ptr(), a.mean = mean.data_ptr<float>(), a.rstd = rstd.data_ptr<float>();
  C10_CUDA_CHECK(cuda::adaln_forward(a, stream_of(x)));
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> adaln_modulate_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& scale, const Opt& weight, const Opt& bias,
    const at::Tensor& mean, const at::Tensor& rstd, bool rms, bool shift_per_token) {
  constexpr const char* op = "adaln_modulate_backward";
  const Shape s = Check::rows(x, op, "x");
  Check::same_shape(grad_out, x, op, "grad_out", "x");
  AdalnBackwardArgs a{};
  a.dtype = to_dtype(x, op, "x");
  a.batch = s.b, a.tokens = s.n, a.dim = s.d, a.rms = rms, a.shift_per_token = shift_per_token;
  a.scale_per_token = Check::mod(scale, x, s, op, "scale");
  a.weight = Check::param(weight, x, s, op, "weight");
  a.bias = Check::param(bias, x, s, op, "bias");
  a.mean = Check::stats(mean, x, s, op, "mean");
  a.rstd = Check::stats(rstd, x, s, op, "rstd");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_shift = mod_grad(x, s, shift_per_token), grad_scale = mod_grad(x, s, a.scale_per_token);
  at::Tensor grad_w = param_grad(weight, x), grad_b = param_grad(bias, x);
  a.grad_out = grad_out.data_ptr(), a.x = x.data_ptr(), a.scale = scale.data_ptr();
  a.grad_x = grad_x.data_ptr(), a.grad_shift = grad_shift.data_ptr(), a.grad_scale = grad_scale.data_ptr();
  a.grad_weight = ptr_if(weight, grad_w), a.grad_bias = ptr_if(bias, grad_b);
  at::Tensor ws = workspace(cuda::adaln_backward_workspace_bytes(a), x);
  C10_CUDA_CHECK(cuda::adaln_backward(a, ws.numel() ? ws.data_ptr() : nullptr, stream_of(x)));
  return {grad_x, grad_shift, grad_scale, grad_w, grad_b};
}

at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& h) {
  constexpr const char* op = "gated_residual";
  const Shape s = Check::rows(x, op, "x");
  GatedResidualArgs a{};
  a.dtype = to_dtype(x, op, "x");
  a.batch = s.b, a.tokens = s.n, a.dim = s.d;
  a.gate_per_token = Check::mod(gate, x, s, op, "gate");
  Check::same_shape(h, x, op, "h", "x");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  a.x = x.data_ptr(), a.gate = gate.data_ptr(), a.h = h.data_ptr(), a.out = out.data_ptr();
  C10_CUDA_CHECK(cuda::gated_residual_forward(a, stream_of(x)));
  return out;
}

std::tuple<at::Tensor, at::Tensor> gated_residual_backward(const at::Tensor& grad_out, const at::Tensor& gate,
                                                           const at::Tensor& h) {
  constexpr const char* op = "gated_residual_backward";
  const Shape s = Check::rows(h, op, "h");
  Check::same_shape(grad_out, h, op, "grad_out", "h");
  GatedResidualArgs a{};
  a.dtype = to_dtype(h, op, "h");
  a.batch = s.b, a.tokens = s.n, a.dim = s.d;
  a.gate_per_token = Check::mod(gate, h, s, op, "gate");
  const c10::cuda::CUDAGuard guard(h.device());
  at::Tensor grad_gate = mod_grad(h, s, a.gate_per_token), grad_h = at::empty_like(h);
  a.grad_out = grad_out.data_ptr(), a.gate = gate.data_ptr(), a.h = h.data_ptr();
  a.grad_gate = grad_gate.data_ptr(), a.grad_h = grad_h.data_ptr();
  at::Tensor ws = workspace(cuda::gated_residual_backward_workspace_bytes(a), h);
  C10_CUDA_CHECK(cuda::gated_residual_backward(a, ws.numel() ? ws.data_ptr() : nullptr, stream_of(h)));
  return {grad_gate, grad_h};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gated_residual_adaln(
    const at::Tensor& x, const at::Tensor& gate, const at::Tensor& h, const at::Tensor& shift, const at::Tensor& scale,
    const Opt& weight, const Opt& bias, double eps, bool rms) {
  constexpr const char* op = "gated_residual_adaln";
  const Shape s = Check::rows(x, op, "x");
  AdalnForwardArgs a{};
  a.dtype = to_dtype(x, op, "x");
  a.batch = s.b, a.tokens = s.n, a.dim = s.d, a.eps = static_cast<float>(eps), a.rms = rms;
  a.gate_per_token = Check::mod(gate, x, s, op, "gate");
  Check::same_shape(h, x, op, "h", "x");
  a.shift_per_token = Check::mod(shift, x, s, op, "shift");
  a.scale_per_token = Check::mod(scale, x, s, op, "scale");
  a.weight = Check::param(weight, x, s, op, "weight");
  a.bias = Check::param(bias, x, s, op, "bias");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor x_out = at::empty_like(x), out = at::empty_like(x), mean = stats_like(x, s), rstd = stats_like(x, s);
  a.x = x.data_ptr(), a.gate = gate.data_ptr(), a.h = h.data_ptr();
  a.shift = shift.data_ptr(), a.scale = scale.data_ptr();
  a.x_out = x_out.data_ptr(), a.out = out.data_ptr(), a.mean = mean.data_ptr<float>(), a.rstd = rstd.data_ptr<float>();
  C10_CUDA_CHECK(cuda::adaln_forward(a, stream_of(x)));
  return {x_out, out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gated_residual_adaln_backward(const at::Tensor& grad_x_out, const at::Tensor& grad_out, const at::Tensor& x_out,
                              const at::Tensor& gate, const at::Tensor& h, const at::Tensor& scale, const Opt& weight,
                              const Opt& bias, const at::Tensor& mean, const at::Tensor& rstd, bool rms,
                              bool shift_per_token) {
  constexpr const char* op = "gated_residual_adaln_backward";
  const Shape s = Check::rows(x_out, op, "x_out");
  Check::same_shape(grad_x_out, x_out, op, "grad_x_out", "x_out");
  Check::same_shape(grad_out, x_out, op, "grad_out", "x_out");
  Check::same_shape(h, x_out, op, "h", "x_out");
  AdalnBackwardArgs a{};
  a.dtype = to_dtype(x_out, op, "x_out");
  a.batch = s.b, a.tokens = s.n, a.dim = s.d, a.rms = rms, a.shift_per_token = shift_per_token;
  a.gate_per_token = Check::mod(gate, x_out, s, op, "gate");
  a.scale_per_token = Check::mod(scale, x_out, s, op, "scale");
  a.weight = Check::param(weight, x_out, s, op, "weight");
  a.bias = Check::param(bias, x_out, s, op, "bias");
  a.mean = Check::stats(mean, x_out, s, op, "mean");
  a.rstd = Check::stats(rstd, x_out, s, op, "rstd");
  const c10::cuda::CUDAGuard guard(x_out.device());
  at::Tensor grad_x = at::empty_like(x_out), grad_h = at::empty_like(x_out);
  at::Tensor grad_gate = mod_grad(x_out, s, a.gate_per_token);
  at::Tensor grad_shift = mod_grad(x_out, s, shift_per_token), grad_scale = mod_grad(x_out, s, a.scale_per_token);
  at::Tensor grad_w = param_grad(weight, x_out), grad_b = param_grad(bias, x_out);
  a.grad_out = grad_out.data_ptr(), a.x = x_out.data_ptr(), a.scale = scale.data_ptr();
  a.grad_x_out = grad_x_out.data_ptr(), a.gate = gate.data_ptr(), a.h = h.data_ptr();
  a.grad_x = grad_x.data_ptr(), a.grad_h = grad_h.data_ptr(), a.grad_gate = grad_gate.data_ptr();
  a.grad_shift = grad_shift.data_ptr(), a.grad_scale = grad_scale.data_ptr();
  a.grad_weight = ptr_if(weight, grad_w), a.grad_bias = ptr_if(bias, grad_b);
  at::Tensor ws = workspace(cuda::adaln_backward_workspace_bytes(a), x_out);
  C10_CUDA_CHECK(cuda::adaln_backward(a, ws.numel() ? ws.data_ptr() : nullptr, stream_of(x_out)));
  return {grad_x, grad_gate, grad_h, grad_shift, grad_scale, grad_w, grad_b};
}

}  // namespace
}  // namespace fastdiff::cuda::ops

TORCH_LIBRARY_IMPL(fastdiff, CUDA, m) {
  m.impl("adaln_modulate", &fastdiff::cuda::ops::adaln_modulate);
  m.impl("adaln_modulate_backward", &fastdiff::cuda::ops::adaln_modulate_backward);
  m.impl("gated_residual", &fastdiff::cuda::ops::gated_residual);
  m.impl("gated_residual_backward", &fastdiff::cuda::ops::gated_residual_backward);
  m.impl("gated_residual_adaln", &fastdiff::cuda::ops::gated_residual_adaln);
  m.impl("gated_residual_adaln_backward", &fastdiff::cuda::ops::gated_residual_adaln_backward);
}
