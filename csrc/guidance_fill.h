// GuidanceParams (guidance_args.h) from tensors: the argument checks and the fill shared by the CPU ops
// (csrc/cpu/guidance.cpp) and the CUDA bindings (csrc/cuda/bindings.cpp). `Place` is OnCpu or OnCuda
// (place.h); everything else is the same for both backends.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

#include "guidance_args.h"
#include "torch_args.h"

namespace fastdiff {

// Checks model_out ((2B, ...): [uncond; cond]) and the optional per-sample float32 (B,) tensors
// (scale_per_sample, factor), and points the parameters at them.
template <typename Place>
GuidanceParams guidance_params(const at::Tensor& model_out, double scale, const std::optional<at::Tensor>& scale_ps,
                               const std::optional<at::Tensor>& factor, const char* op) {
  Place::check(model_out, model_out, op, "model_out");
  TORCH_CHECK(model_out.dim() >= 1 && model_out.size(0) % 2 == 0, "fastdiff.", op,
              ": argument 'model_out' expected an even batch ([uncond; cond]), got shape ", model_out.sizes());
  const int64_t batch = model_out.size(0) / 2;
  for (const auto* t : {&scale_ps, &factor}) {
    if (t->has_value()) {
      Place::check(**t, model_out, op, t == &scale_ps ? "scale_per_sample" : "factor");
      TORCH_CHECK((*t)->scalar_type() == at::kFloat && (*t)->dim() == 1 && (*t)->size(0) == batch, "fastdiff.", op,
                  ": per-sample tensors must be float32 of shape (", batch, "), got ", (*t)->sizes(), " ",
                  (*t)->scalar_type());
    }
  }
  GuidanceParams p{};
  p.model_out = model_out.const_data_ptr();
  p.dtype = to_dtype(model_out, op, "model_out");
  p.batch = batch;
  p.per_sample = batch ? model_out.numel() / (2 * batch) : 0;
  p.scale = static_cast<float>(scale);
  p.scale_per_sample = scale_ps.has_value() ? scale_ps->const_data_ptr<float>() : nullptr;
  p.factor = factor.has_value() ? factor->const_data_ptr<float>() : nullptr;
  return p;
}

}  // namespace fastdiff
