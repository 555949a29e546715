// The placement policy of the CUDA bindings whose argument checks are shared with the CPU ops
// (adaln_args.h, geglu_checks.h): `Place` for tensors that must sit, contiguous, on the main input's GPU.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace fastdiff::cuda::ops {

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

}  // namespace fastdiff::cuda::ops
