// UpdateParams (sampler_update_args.h) from tensors: the argument checks and the fill shared by the CPU
// op (csrc/cpu/sampler_update.cpp) and the CUDA binding (csrc/cuda/bindings.cpp). `Place` is OnCpu or
// OnCuda (place.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

#include "guidance_fill.h"
#include "sampler_row.h"
#include "sampler_update_args.h"
#include "torch_args.h"

namespace fastdiff {

// The coefficient row is checked for placement, dtype and length only: its values stay where the
// kernels read them (on the device, for CUDA), so the host never waits for them.
template <typename Place>
UpdateParams sampler_update_params(const at::Tensor& x, const at::Tensor& model_out, const at::Tensor& coeffs,
                                   const std::optional<at::Tensor>& history, const std::optional<at::Tensor>& noise,
                                   double scale, const std::optional<at::Tensor>& scale_ps,
                                   const std::optional<at::Tensor>& factor) {
  constexpr const char* op = "sampler_update";
  Place::check(x, x, op, "x");
  Place::check(model_out, x, op, "model_out");
  Place::check(coeffs, x, op, "coeffs");
  TORCH_CHECK(x.dim() >= 1, "fastdiff.sampler_update: argument 'x' expected a batched tensor, got a scalar");
  const int64_t batch = x.size(0), n = batch ? x.numel() / batch : 0;
  TORCH_CHECK(model_out.dim() >= 1, "fastdiff.sampler_update: argument 'model_out' expected a batched tensor, got a scalar");
  const bool guided = model_out.size(0) == 2 * batch && batch > 0;
  TORCH_CHECK(model_out.numel() == (guided ? 2 : 1) * x.numel(), "fastdiff.sampler_update: argument 'model_out' expected ",
              "shape (B or 2B, ...) matching x ", x.sizes(), ", got ", model_out.sizes());
  if (history.has_value()) {
    Place::check(*history, x, op, "history");
    TORCH_CHECK(history->dim() >= 1, "fastdiff.sampler_update: argument 'history' expected (K, *x.shape), got a scalar");
  }
  const int64_t K = history.has_value() ? history->size(0) : 0;
  TORCH_CHECK(coeffs.scalar_type() == at::kFloat && coeffs.numel() == row::length(K),
              "fastdiff.sampler_update: argument 'coeffs' expected float32 of length ", row::length(K), ", got ",
              coeffs.scalar_type(), " of length ", coeffs.numel());
  if (history.has_value()) {
    TORCH_CHECK(history->scalar_type() == x.scalar_type() && history->numel() == K * x.numel(),
                "fastdiff.sampler_update: argument 'history' expected (K, *x.shape) in x's dtype, got ", history->sizes(),
                " ", history->scalar_type());
  }
  if (noise.has_value()) {
    Place::check(*noise, x, op, "noise");
    TORCH_CHECK(noise->scalar_type() == x.scalar_type() && noise->sizes() == x.sizes(),
                "fastdiff.sampler_update: argument 'noise' expected x's shape and dtype, got ", noise->sizes(), " ",
                noise->scalar_type());
  }

  UpdateParams p{};
  p.x = x.const_data_ptr();
  p.x_dtype = to_dtype(x, op, "x");
  p.model_out = model_out.const_data_ptr();
  p.m_dtype = to_dtype(model_out, op, "model_out");
  p.guided = guided;
  p.scale = static_cast<float>(scale);
  if (guided) {
    const GuidanceParams g = guidance_params<Place>(model_out, scale, scale_ps, factor, op);
    p.scale_per_sample = g.scale_per_sample;
    p.factor = g.factor;
  }
  p.coeffs = coeffs.const_data_ptr<float>();
  p.history = history.has_value() ? history->mutable_data_ptr() : nullptr;
  p.history_len = K;
  p.noise = noise.has_value() ? noise->const_data_ptr() : nullptr;
  p.batch = batch;
  p.per_sample = n;
  return p;
}

}  // namespace fastdiff
