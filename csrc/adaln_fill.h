// The adaln parameter structs (adaln_args.h) from tensors: the argument checks and the fill shared by
// the CPU ops (csrc/cpu/adaln.cpp) and the CUDA bindings (csrc/cuda/bindings_adaln.cpp). `Place` is
// OnCpu or OnCuda (place.h). The fills set every input field; each backend then allocates the outputs
// (and, for CUDA, the backward's workspace) and sets their pointers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

#include "adaln_args.h"
#include "torch_args.h"

namespace fastdiff {

// B, N, D of the op's (B, N, D) main input.
struct AdalnShape {
  int64_t b, n, d;
};

template <typename A>
AdalnShape adaln_shape(const A& a) {
  return {a.batch, a.tokens, a.dim};
}

namespace adaln_detail {

template <typename Place>
struct Checks {
  // x is the op's (B, N, D) main input, of a kernel dtype.
  static AdalnShape rows(const at::Tensor& x, const char* op, const char* arg) {
    Place::check(x, x, op, arg);
    TORCH_CHECK(x.dim() == 3, "fastdiff.", op, ": argument '", arg, "' expected a (B, N, D) tensor, got shape ",
                x.sizes());
    to_dtype(x, op, arg);
    return {x.size(0), x.size(1), x.size(2)};
  }

  // t is placed like x and has x's dtype.
  static void like(const at::Tensor& t, const at::Tensor& x, const char* op, const char* arg) {
    Place::check(t, x, op, arg);
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "fastdiff.", op, ": argument '", arg, "' expected dtype ",
                x.scalar_type(), ", got ", t.scalar_type());
  }

  // t is like x and has x's shape (x_name: x's argument name, for the message). Returns t's data.
  static const void* same_shape(const at::Tensor& t, const at::Tensor& x, const char* op, const char* arg,
                                const char* x_name) {
    like(t, x, op, arg);
    TORCH_CHECK(t.sizes() == x.sizes(), "fastdiff.", op, ": argument '", arg, "' expected ", x_name, "'s shape ",
                x.sizes(), ", got ", t.sizes());
    return t.const_data_ptr();
  }

  // A modulation tensor: (B, D) per sample or (B, N, D) per token. Returns whether it is per token.
  static bool mod(const at::Tensor& t, const at::Tensor& x, AdalnShape s, const char* op, const char* arg) {
    like(t, x, op, arg);
    const bool per_sample = t.dim() == 2 && t.size(0) == s.b && t.size(1) == s.d;
    const bool per_token = t.dim() == 3 && t.sizes() == x.sizes();
    TORCH_CHECK(per_sample || per_token, "fastdiff.", op, ": argument '", arg, "' expected shape (", s.b, ", ", s.d,
                ") or (", s.b, ", ", s.n, ", ", s.d, "), got ", t.sizes());
    return per_token;
  }

  // An optional (D,) parameter (weight, bias): its data, or null when absent.
  static const void* param(const std::optional<at::Tensor>& t, const at::Tensor& x, AdalnShape s, const char* op,
                           const char* arg) {
    if (!t.has_value()) return nullptr;
    like(*t, x, op, arg);
    TORCH_CHECK(t->dim() == 1 && t->size(0) == s.d, "fastdiff.", op, ": argument '", arg, "' expected shape (", s.d,
                "), got ", t->sizes());
    return t->const_data_ptr();
  }

  // Saved statistics (mean, rstd): float32 (B, N), placed like x. Returns their data.
  static const float* stats(const at::Tensor& t, const at::Tensor& x, AdalnShape s, const char* op, const char* arg) {
    Place::check(t, x, op, arg);
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.dim() == 2 && t.size(0) == s.b && t.size(1) == s.n, "fastdiff.", op,
                ": argument '", arg, "' expected float32 of shape (", s.b, ", ", s.n, "), got ", t.scalar_type(), " ",
                t.sizes());
    return t.const_data_ptr<float>();
  }
};

}  // namespace adaln_detail

// adaln_modulate (gate and h null) or gated_residual_adaln: every input; x_out, out, mean, rstd unset.
template <typename Place>
AdalnForwardArgs adaln_forward_params(const at::Tensor& x, const at::Tensor* gate, const at::Tensor* h,
                                      const at::Tensor& shift, const at::Tensor& scale,
                                      const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                      double eps, bool rms, const char* op) {
  using Check = adaln_detail::Checks<Place>;
  const AdalnShape s = Check::rows(x, op, "x");
  AdalnForwardArgs a{};
  a.dtype = to_dtype(x, op, "x");
  a.batch = s.b, a.tokens = s.n, a.dim = s.d, a.eps = static_cast<float>(eps), a.rms = rms;
  a.x = x.const_data_ptr();
  if (gate != nullptr) {
    a.gate_per_token = Check::mod(*gate, x, s, op, "gate");
    a.gate = gate->const_data_ptr();
    a.h = Check::same_shape(*h, x, op, "h", "x");
  }
  a.shift_per_token = Check::mod(shift, x, s, op, "shift");
  a.scale_per_token = Check::mod(scale, x, s, op, "scale");
  a.shift = shift.const_data_ptr(), a.scale = scale.const_data_ptr();
  a.weight = Check::param(weight, x, s, op, "weight");
  a.bias = Check::param(bias, x, s, op, "bias");
  return a;
}

// adaln_modulate_backward (grad_x_out, gate and h null; x is the forward's x) or
// gated_residual_adaln_backward (x is the forward's x_out): every input; the gradients unset.
template <typename Place>
AdalnBackwardArgs adaln_backward_params(const at::Tensor* grad_x_out, const at::Tensor& grad_out, const at::Tensor& x,
                                        const at::Tensor* gate, const at::Tensor* h, const at::Tensor& scale,
                                        const std::optional<at::Tensor>& weight,
                                        const std::optional<at::Tensor>& bias, const at::Tensor& mean,
                                        const at::Tensor& rstd, bool rms, bool shift_per_token, const char* op) {
  using Check = adaln_detail::Checks<Place>;
  const char* x_name = grad_x_out != nullptr ? "x_out" : "x";
  const AdalnShape s = Check::rows(x, op, x_name);
  AdalnBackwardArgs a{};
  if (grad_x_out != nullptr) a.grad_x_out = Check::same_shape(*grad_x_out, x, op, "grad_x_out", x_name);
  a.grad_out = Check::same_shape(grad_out, x, op, "grad_out", x_name);
  if (grad_x_out != nullptr) {
    a.h = Check::same_shape(*h, x, op, "h", x_name);
    a.gate_per_token = Check::mod(*gate, x, s, op, "gate");
    a.gate = gate->const_data_ptr();
  }
  a.dtype = to_dtype(x, op, x_name);
  a.batch = s.b, a.tokens = s.n, a.dim = s.d, a.rms = rms, a.shift_per_token = shift_per_token;
  a.x = x.const_data_ptr();
  a.scale_per_token = Check::mod(scale, x, s, op, "scale");
  a.scale = scale.const_data_ptr();
  a.weight = Check::param(weight, x, s, op, "weight");
  a.bias = Check::param(bias, x, s, op, "bias");
  a.mean = Check::stats(mean, x, s, op, "mean");
  a.rstd = Check::stats(rstd, x, s, op, "rstd");
  return a;
}

// gated_residual: x, gate, h; out unset.
template <typename Place>
GatedResidualArgs gated_residual_params(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& h,
                                        const char* op) {
  using Check = adaln_detail::Checks<Place>;
  const AdalnShape s = Check::rows(x, op, "x");
  GatedResidualArgs a{};
  a.dtype = to_dtype(x, op, "x");
  a.batch = s.b, a.tokens = s.n, a.dim = s.d;
  a.x = x.const_data_ptr();
  a.gate_per_token = Check::mod(gate, x, s, op, "gate");
  a.gate = gate.const_data_ptr();
  a.h = Check::same_shape(h, x, op, "h", "x");
  return a;
}

// gated_residual_backward: grad_out, gate, h; grad_gate and grad_h unset.
template <typename Place>
GatedResidualArgs gated_residual_backward_params(const at::Tensor& grad_out, const at::Tensor& gate,
                                                 const at::Tensor& h, const char* op) {
  using Check = adaln_detail::Checks<Place>;
  const AdalnShape s = Check::rows(h, op, "h");
  GatedResidualArgs a{};
  a.grad_out = Check::same_shape(grad_out, h, op, "grad_out", "h");
  a.dtype = to_dtype(h, op, "h");
  a.batch = s.b, a.tokens = s.n, a.dim = s.d;
  a.gate_per_token = Check::mod(gate, h, s, op, "gate");
  a.gate = gate.const_data_ptr();
  a.h = h.const_data_ptr();
  return a;
}

}  // namespace fastdiff
