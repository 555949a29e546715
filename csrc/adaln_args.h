// Argument checks of the adaln ops, shared by the CPU implementations (csrc/cpu/adaln.cpp) and the CUDA
// bindings (csrc/cuda/bindings_adaln.cpp). The two differ only in where a tensor must be: `Place` is a
// type with
//   static void check_with(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* arg);
// that fails unless t is where the backend needs it (with ref, the op's main input; ref is t for the main
// input itself) and contiguous, in the backend's own words (cpu::OnCpu for the CPU ops).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

#include "torch_args.h"

namespace fastdiff::adaln_args {

// B, N, D of the op's (B, N, D) main input.
struct Shape {
  int64_t b, n, d;
};

template <typename Place>
struct Checks {
  // x is the op's (B, N, D) main input, of a kernel dtype.
  static Shape rows(const at::Tensor& x, const char* op, const char* arg) {
    Place::check_with(x, x, op, arg);
    TORCH_CHECK(x.dim() == 3, "fastdiff.", op, ": argument '", arg, "' expected a (B, N, D) tensor, got shape ",
                x.sizes());
    to_dtype(x, op, arg);
    return {x.size(0), x.size(1), x.size(2)};
  }

  // t is placed like x and has x's dtype.
  static void like(const at::Tensor& t, const at::Tensor& x, const char* op, const char* arg) {
    Place::check_with(t, x, op, arg);
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "fastdiff.", op, ": argument '", arg, "' expected dtype ",
                x.scalar_type(), ", got ", t.scalar_type());
  }

  // t is like x and has x's shape (x_name: x's argument name, for the message).
  static void same_shape(const at::Tensor& t, const at::Tensor& x, const char* op, const char* arg,
                         const char* x_name) {
    like(t, x, op, arg);
    TORCH_CHECK(t.sizes() == x.sizes(), "fastdiff.", op, ": argument '", arg, "' expected ", x_name, "'s shape ",
                x.sizes(), ", got ", t.sizes());
  }

  // A modulation tensor: (B, D) per sample or (B, N, D) per token. Returns whether it is per token.
  static bool mod(const at::Tensor& t, const at::Tensor& x, Shape s, const char* op, const char* arg) {
    like(t, x, op, arg);
    const bool per_sample = t.dim() == 2 && t.size(0) == s.b && t.size(1) == s.d;
    const bool per_token = t.dim() == 3 && t.sizes() == x.sizes();
    TORCH_CHECK(per_sample || per_token, "fastdiff.", op, ": argument '", arg, "' expected shape (", s.b, ", ", s.d,
                ") or (", s.b, ", ", s.n, ", ", s.d, "), got ", t.sizes());
    return per_token;
  }

  // An optional (D,) parameter (weight, bias): its data, or null when absent.
  static const void* param(const std::optional<at::Tensor>& t, const at::Tensor& x, Shape s, const char* op,
                           const char* arg) {
    if (!t.has_value()) return nullptr;
    like(*t, x, op, arg);
    TORCH_CHECK(t->dim() == 1 && t->size(0) == s.d, "fastdiff.", op, ": argument '", arg, "' expected shape (", s.d,
                "), got ", t->sizes());
    return t->data_ptr();
  }

  // Saved statistics (mean, rstd): float32 (B, N), placed like x. Returns their data.
  static const float* stats(const at::Tensor& t, const at::Tensor& x, Shape s, const char* op, const char* arg) {
    Place::check_with(t, x, op, arg);
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.dim() == 2 && t.size(0) == s.b && t.size(1) == s.n, "fastdiff.", op,
                ": argument '", arg, "' expected float32 of shape (", s.b, ", ", s.n, "), got ", t.scalar_type(), " ",
                t.sizes());
    return t.data_ptr<float>();
  }
};

}  // namespace fastdiff::adaln_args
