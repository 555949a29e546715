// Argument checks of the geglu ops, filling the torch-free GegluArgs once for the CPU op
// (csrc/cpu/geglu.cpp) and the CUDA binding (csrc/cuda/bindings_geglu.cpp), which differ only in where
// a tensor must be (`Place`: place.h's OnCpu or OnCuda) and in how outputs are allocated and kernels
// launched.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <vector>

#include "geglu_args.h"
#include "place.h"
#include "torch_args.h"

namespace fastdiff::geglu_fill {

// x: (..., 2H) with H >= 0. Returns the args with x, dtype, rows, half and tanh filled.
template <typename Place>
GegluArgs input(const at::Tensor& x, bool tanh, const char* op) {
  Place::check(x, x, op, "x");
  GegluArgs a{};
  a.dtype = to_dtype(x, op, "x");
  TORCH_CHECK(x.dim() >= 1, "fastdiff.", op, ": argument 'x' expected at least 1 dimension, got a 0-d tensor");
  const int64_t full = x.size(-1);
  TORCH_CHECK(full % 2 == 0, "fastdiff.", op, ": argument 'x' expected an even last dim ([a | gate] halves), got ",
              full, " (shape ", x.sizes(), ")");
  a.half = full / 2;
  a.rows = 1;
  for (int64_t i = 0; i + 1 < x.dim(); ++i) a.rows *= x.size(i);
  a.tanh = tanh;
  a.x = x.data_ptr();
  return a;
}

// grad_out: x's shape with the last dim halved, x's dtype, placed like x.
template <typename Place>
void grad_out(const at::Tensor& g, const at::Tensor& x, const GegluArgs& a, const char* op) {
  Place::check(g, x, op, "grad_out");
  TORCH_CHECK(g.scalar_type() == x.scalar_type(), "fastdiff.", op, ": argument 'grad_out' expected dtype ",
              x.scalar_type(), " (x's), got ", g.scalar_type());
  auto want = x.sizes().vec();
  want.back() = a.half;
  TORCH_CHECK(g.sizes() == at::IntArrayRef(want), "fastdiff.", op, ": argument 'grad_out' expected shape ",
              at::IntArrayRef(want), ", got ", g.sizes());
}

// The shape of the forward output: x's with the last dim halved.
inline std::vector<int64_t> out_shape(const at::Tensor& x) {
  auto s = x.sizes().vec();
  s.back() /= 2;
  return s;
}

}  // namespace fastdiff::geglu_fill
