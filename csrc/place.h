// Where each backend needs its tensors: the placement policies of the argument checks shared by the
// CPU ops and the CUDA bindings (csrc/<family>_fill.h). A policy is a type with
//   static void check(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* arg);
// that fails, in the backend's own words, unless t is a contiguous tensor where the backend runs; ref
// is the op's main input (t itself when t is the main input, which is checked first). Torch side only;
// no CUDA headers needed.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace fastdiff {

// The C++ CPU kernels: every tensor a contiguous CPU tensor.
struct OnCpu {
  static void check(const at::Tensor& t, const at::Tensor& /*ref*/, const char* op, const char* arg) {
    TORCH_CHECK(t.device().is_cpu(), "fastdiff.", op, ": argument '", arg, "' expected a CPU tensor, got ", t.device());
    TORCH_CHECK(t.is_contiguous(), "fastdiff.", op, ": argument '", arg, "' expected a contiguous tensor");
  }
};

// The CUDA kernels: the main input a contiguous CUDA tensor, every other tensor contiguous on its device.
struct OnCuda {
  static void check(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* arg) {
    if (t.is_same(ref)) {
      TORCH_CHECK(t.is_cuda(), "fastdiff.", op, ": argument '", arg, "' expected a CUDA tensor, got a tensor on ",
                  t.device());
    } else {
      TORCH_CHECK(t.device() == ref.device(), "fastdiff.", op, ": argument '", arg, "' expected a tensor on ",
                  ref.device(), " (like the other inputs), got a tensor on ", t.device());
    }
    TORCH_CHECK(t.is_contiguous(), "fastdiff.", op, ": argument '", arg, "' expected a contiguous tensor, got strides ",
                t.strides());
  }
};

}  // namespace fastdiff
