// Shared by the CPU guidance and sampler-update op files.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "cpu/kernels/kernels.h"

namespace fastdiff::cpu {

// Checks the guidance inputs (CPU, contiguous, shapes) and packs them for the kernels.
GuidanceArgs guidance_args(const at::Tensor& model_out, double scale, const std::optional<at::Tensor>& scale_ps,
                           const std::optional<at::Tensor>& factor, const char* op);

}  // namespace fastdiff::cpu
