// Argument checks of the guidance ops (guidance_combine, guidance_rescale_factor, and the guided half of
// sampler_update), shared by the CPU implementations (csrc/cpu/guidance.cpp) and the CUDA bindings
// (csrc/cuda/bindings.cpp). The two differ only in where a tensor must be: `Place` is a type with
//   static void check_main(const at::Tensor& t, const char* op, const char* arg);
//   static void check_with(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* arg);
// that fail unless t (model_out; a per-sample tensor of ref = model_out) is where the backend needs it
// and contiguous, in the backend's own words (cpu::OnCpu for the CPU ops).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

namespace fastdiff {

// Checks model_out ((2B, ...): [uncond; cond]) and the optional per-sample float32 (B,) tensors
// (scale_per_sample, factor); returns B.
template <typename Place>
int64_t check_guidance_inputs(const at::Tensor& model_out, const std::optional<at::Tensor>& scale_ps,
                              const std::optional<at::Tensor>& factor, const char* op) {
  Place::check_main(model_out, op, "model_out");
  TORCH_CHECK(model_out.dim() >= 1 && model_out.size(0) % 2 == 0, "fastdiff.", op,
              ": argument 'model_out' expected an even batch ([uncond; cond]), got shape ", model_out.sizes());
  const int64_t batch = model_out.size(0) / 2;
  for (const auto* t : {&scale_ps, &factor}) {
    if (t->has_value()) {
      Place::check_with(**t, model_out, op, t == &scale_ps ? "scale_per_sample" : "factor");
      TORCH_CHECK((*t)->scalar_type() == at::kFloat && (*t)->dim() == 1 && (*t)->size(0) == batch, "fastdiff.", op,
                  ": per-sample tensors must be float32 of shape (", batch, "), got ", (*t)->sizes(), " ",
                  (*t)->scalar_type());
    }
  }
  return batch;
}

}  // namespace fastdiff
