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

  // ---- attention: softmax(scale * q k^T + bias) v, flash-style (online softmax, nothing N^2 stored) --
  // Layout (B, N, H, D), read through strides:
  //   q (B, Nq, H, D); k, v (B, Nk, H, D); same dtype (kernels: float16 or bfloat16), same device.
  //   Any strides on B, N and H; the head dim is contiguous (stride(3) == 1). The entry point
  //   (fastdiff/ops/attention.py) also guarantees B/N/H strides and the storage offset are multiples
  //   of 8 elements (16-byte aligned rows), copying otherwise, so kernels may use 16-byte vector loads.
  //   diffusers' (B, H, N, D) tensors are passed as q.transpose(1, 2) views: no copy.
  //   Nq, Nk >= 1; B, H >= 1; D a multiple of 8 in [8, 256] (empty inputs never reach a kernel).
  // key_mask: bool (B, Nk), contiguous; True = attend, False = this key is excluded for every query.
  // bias: q's dtype, a (B, H, Nq, Nk)-shaped view with arbitrary strides (0 on broadcast dims, e.g.
  //   stride(2) == 0 for a bias shared by all queries); added after scaling:
  //   s[b,h,i,j] = scale * <q[b,i,h,:], k[b,j,h,:]> + bias[b,h,i,j]; -inf entries exclude the key.
  //   key_mask and bias may both be given (both apply); the public op passes at most one.
  // scale: finite float (the public op defaults it to 1/sqrt(D)).
  // Returns out (B, Nq, H, D) contiguous in q's dtype, and lse float32 (B, H, Nq) contiguous:
  //   lse[b,h,i] = log(sum_j exp(s[b,h,i,j])) in natural-log units over the attended keys.
  // Fully masked rows (no attended key): out row = 0 and lse = +inf, so that the backward's
  //   recomputed probabilities exp(s - lse) are exactly 0 and every gradient of that row is 0.
  // Softmax statistics (running max, running sum) and all accumulation in float32.
  m.def("attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? key_mask, Tensor? bias, float scale) -> (Tensor out, Tensor lse)");
  // Backward by recomputation: P = exp(s - lse) is rebuilt from q, k and the saved lse;
  //   delta[b,h,i] = sum_d grad_out[b,i,h,d] * out[b,i,h,d] (float32, computed inside);
  //   dv = P^T dO; dP = dO v^T; dS = P * (dP - delta); dq = scale * dS k; dk = scale * dS^T q.
  // grad_out: (B, Nq, H, D), q's dtype, any B/N/H strides, stride(3) == 1 (same alignment promise as q).
  // q, k, v, key_mask, bias, scale: exactly those of the forward; out, lse: the forward's outputs.
  // Returns grad_q (B, Nq, H, D), grad_k, grad_v (B, Nk, H, D), contiguous, in q's dtype.
  // Deterministic: no atomics (dk/dv accumulated per key block over all queries, dq per query block
  //   over all keys, in separate passes), so equal inputs give bitwise equal gradients.
  // The bias gets no gradient (the public op routes a bias that requires grad to the reference).
  m.def("attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? key_mask, "
        "Tensor? bias, float scale) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
  // Triton variants of attention: same schemas and contract, kernels in fastdiff/triton/attention.py.
  m.def("attention_fwd_triton(Tensor q, Tensor k, Tensor v, Tensor? key_mask, Tensor? bias, float scale) -> (Tensor out, Tensor lse)");
  m.def("attention_bwd_triton(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? key_mask, "
        "Tensor? bias, float scale) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
}
