// Every fastdiff op schema, in one place. Kernels register against these names beside their code:
// cpu/<family>.cpp (CPU), cuda/bindings.cpp (CUDA); the Triton variants (<op>_triton) and the
// fake (meta) kernels are registered from Python (fastdiff/ops/<family>.py).
#include <torch/library.h>

TORCH_LIBRARY(fastdiff, m) {
  // ---- guidance: classifier-free guidance on a batched [uncond; cond] model output ----------------
  // out[b] = factor[b] * (u[b] + s_b * (c[b] - u[b])), s_b = scale_per_sample[b] if given else scale.
  m.def("guidance_combine(Tensor model_out, float scale, Tensor? scale_per_sample, Tensor? factor) -> Tensor");
  // Per-sample multiplier of guidance rescale: 1 - phi + phi * std(c[b]) / std(guided[b]); float32 (B,).
  m.def("guidance_rescale_factor(Tensor model_out, float scale, Tensor? scale_per_sample, float rescale) -> Tensor");

  // ---- sampler_update: one fused step of any linear solver ---------------------------------------
  // coeffs = [a, b, c_x, c_d, c_z, slot, c_h0 .. c_h{K-1}] (float32, on x's device);
  // m = guided(model_out) or model_out;  d = a*x + b*m;
  // x_next = c_x*x + c_d*d + sum_k c_hk*history[k] + c_z*noise;  history[slot] = d when 0 <= slot < K.
  m.def("sampler_update(Tensor x, Tensor model_out, Tensor coeffs, Tensor(a!)? history, Tensor? noise, "
        "float scale, Tensor? scale_per_sample, Tensor? factor) -> Tensor");

  // ---- Triton variants: same schemas, kernels in fastdiff/triton/ ---------------------------------
  m.def("guidance_combine_triton(Tensor model_out, float scale, Tensor? scale_per_sample, Tensor? factor) -> Tensor");
  m.def("guidance_rescale_factor_triton(Tensor model_out, float scale, Tensor? scale_per_sample, float rescale) -> Tensor");
  m.def("sampler_update_triton(Tensor x, Tensor model_out, Tensor coeffs, Tensor(a!)? history, Tensor? noise, "
        "float scale, Tensor? scale_per_sample, Tensor? factor) -> Tensor");
}
