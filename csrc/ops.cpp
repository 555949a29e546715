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

  // ---- adaln: normalisation + adaptive modulation and gated residuals of DiT blocks --------------
  // Layout and dtypes (all ops of this block, every backend):
  //   x, h, out, grad_*: (B, N, D), contiguous, one dtype (float32, float16 or bfloat16) for every tensor
  //   except the statistics. Modulation tensors shift, scale, gate: each independently (B, D) "per sample"
  //   (broadcast over the N tokens) or (B, N, D) "per token", contiguous, told apart by dim(). weight, bias:
  //   (D,) or absent. Statistics mean, rstd: float32 (B, N), contiguous; arithmetic in float32.
  //   Row r = b*N + n of x is normalised on its own; a per-sample tensor is read at [b, :], a per-token one
  //   at [b, n, :].
  // Normalisation of one row v (length D):
  //   layer (rms=False): mean = sum(v)/D, var = sum((v-mean)^2)/D, rstd = 1/sqrt(var + eps)
  //   rms   (rms=True):  mean = 0 (stored as 0), rstd = 1/sqrt(sum(v^2)/D + eps)
  //   xhat = (v - mean) * rstd;  nrm = xhat * weight + bias  (weight = 1, bias = 0 when absent)
  //   out = nrm * (1 + scale) + shift
  // Backward, per row, with g = grad_out (float32 arithmetic):
  //   gn = g * (1 + scale);  gx = gn * weight
  //   grad_x = rstd * (gx - sum(gx)/D - xhat * sum(gx*xhat)/D)   (layer; rms drops the sum(gx)/D term)
  //   grad_shift = g, grad_scale = g * nrm            (per token), or their sums over the N tokens (per sample)
  //   grad_weight = sum over all B*N rows of gn * xhat, grad_bias = sum of gn   ((D,); shape (0,) when absent)
  //   Sums over tokens/rows must be deterministic (no float atomics): fixed per-block partials, then a second
  //   reduction in a fixed order. grad_* come back in the dtype of the tensor they belong to.
  //
  // out, mean, rstd = adaln_modulate(...): mean/rstd are saved for the backward (mean is 0 for rms).
  m.def("adaln_modulate(Tensor x, Tensor shift, Tensor scale, Tensor? weight, Tensor? bias, float eps, bool rms) "
        "-> (Tensor out, Tensor mean, Tensor rstd)");
  // Recomputes xhat from x, mean, rstd. shift_per_token: whether grad_shift is (B, N, D) or (B, D)
  // (shift itself is not needed). Returns (grad_x, grad_shift, grad_scale, grad_weight, grad_bias).
  m.def("adaln_modulate_backward(Tensor grad_out, Tensor x, Tensor scale, Tensor? weight, Tensor? bias, "
        "Tensor mean, Tensor rstd, bool rms, bool shift_per_token) "
        "-> (Tensor grad_x, Tensor grad_shift, Tensor grad_scale, Tensor grad_weight, Tensor grad_bias)");
  // out = x + gate * h. Nothing is saved but the inputs gate and h.
  m.def("gated_residual(Tensor x, Tensor gate, Tensor h) -> Tensor");
  // grad_gate = g * h (per token) or its sum over the N tokens (per sample, deterministic); grad_h = g * gate.
  // (grad_x = g is returned by autograd itself.)
  m.def("gated_residual_backward(Tensor grad_out, Tensor gate, Tensor h) -> (Tensor grad_gate, Tensor grad_h)");
  // The seam between the attention and MLP halves of a DiT block, one pass:
  //   x_out = x + gate * h (float32 arithmetic, stored in x's dtype);
  //   out, mean, rstd = adaln_modulate(x_out, shift, scale, weight, bias, eps, rms) of x_out AS STORED (rounded
  //   to x's dtype), so the op equals gated_residual followed by adaln_modulate, and the backward, which
  //   recomputes xhat from the stored x_out, sees exactly the rows the statistics were taken of.
  // Saved for the backward: x_out (an output), gate, h, scale, weight, bias, mean, rstd.
  m.def("gated_residual_adaln(Tensor x, Tensor gate, Tensor h, Tensor shift, Tensor scale, Tensor? weight, "
        "Tensor? bias, float eps, bool rms) -> (Tensor x_out, Tensor out, Tensor mean, Tensor rstd)");
  // g_total = grad_x_out + (grad_x of adaln_modulate_backward(grad_out, x_out, ...)), in float32; then
  //   grad_x = g_total, grad_h = g_total * gate, grad_gate = g_total * h (per token) or its sum over tokens,
  //   grad_shift, grad_scale, grad_weight, grad_bias as in adaln_modulate_backward (xhat recomputed from the
  //   stored x_out). Returns (grad_x, grad_gate, grad_h, grad_shift, grad_scale, grad_weight, grad_bias).
  m.def("gated_residual_adaln_backward(Tensor grad_x_out, Tensor grad_out, Tensor x_out, Tensor gate, Tensor h, "
        "Tensor scale, Tensor? weight, Tensor? bias, Tensor mean, Tensor rstd, bool rms, bool shift_per_token) "
        "-> (Tensor grad_x, Tensor grad_gate, Tensor grad_h, Tensor grad_shift, Tensor grad_scale, "
        "Tensor grad_weight, Tensor grad_bias)");

  // ---- adaln Triton variants: same schemas, kernels in fastdiff/triton/adaln.py -----------------
  m.def("adaln_modulate_triton(Tensor x, Tensor shift, Tensor scale, Tensor? weight, Tensor? bias, float eps, "
        "bool rms) -> (Tensor out, Tensor mean, Tensor rstd)");
  m.def("adaln_modulate_backward_triton(Tensor grad_out, Tensor x, Tensor scale, Tensor? weight, Tensor? bias, "
        "Tensor mean, Tensor rstd, bool rms, bool shift_per_token) "
        "-> (Tensor grad_x, Tensor grad_shift, Tensor grad_scale, Tensor grad_weight, Tensor grad_bias)");
  m.def("gated_residual_triton(Tensor x, Tensor gate, Tensor h) -> Tensor");
  m.def("gated_residual_backward_triton(Tensor grad_out, Tensor gate, Tensor h) -> (Tensor grad_gate, Tensor grad_h)");
  m.def("gated_residual_adaln_triton(Tensor x, Tensor gate, Tensor h, Tensor shift, Tensor scale, Tensor? weight, "
        "Tensor? bias, float eps, bool rms) -> (Tensor x_out, Tensor out, Tensor mean, Tensor rstd)");
  m.def("gated_residual_adaln_backward_triton(Tensor grad_x_out, Tensor grad_out, Tensor x_out, Tensor gate, "
        "Tensor h, Tensor scale, Tensor? weight, Tensor? bias, Tensor mean, Tensor rstd, bool rms, "
        "bool shift_per_token) -> (Tensor grad_x, Tensor grad_gate, Tensor grad_h, Tensor grad_shift, "
        "Tensor grad_scale, Tensor grad_weight, Tensor grad_bias)");
  // ---- attention: softmax(scale * q k^T + bias) v, flash-style (online softmax, nothing N^2 stored) --
  // Layout (B, N, H, D), read through strides:
  //   q (B, Nq, H, D); k, v (B, Nk, H, D); same dtype (kernels: float16 or bfloat16), same device.
  //   Any strides on B, N and H; the head dim is contiguous (stride(3) == 1). The entry point
  //   (fastdiff/ops/attention.py) also guarantees B/N/H strides and the storage offset are multiples
  //   of 8 elements (16-byte aligned rows), copying otherwise, so kernels may use 16-byte vector loads.
  //   diffusers' (B, H, N, D) tensors are passed as q.transpose(1, 2) views: no copy.
  //   Nq, Nk >= 1; B, H >= 1; D a multiple of 8 in [8, 256] (empty inputs never reach a kernel).
  //   The CPU kernel (cpu/attention.cpp) also takes float32, any D >= 1, any strides and empty inputs.
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

  // ---- noise: torch.randn's values on a CPU tensor, from (and advancing) the same generator ----
  m.def("torch_randn_(Tensor(a!) out, Generator? generator) -> Tensor(a!)");

  // ---- geglu: the gated GELU of transformer feed-forwards (diffusers' GEGLU after its projection) ---
  // x: (..., 2H), contiguous, float32/float16/bfloat16, H >= 0 (an odd last dim is an argument error).
  // Each row is [a | gate], a = x[..., :H], gate = x[..., H:]; out = a * gelu(gate), (..., H), x's dtype.
  // gelu(g) = g * Phi(g) (Phi the standard normal CDF), or with tanh = true
  //   gelu(g) = 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))). Arithmetic in float32.
  m.def("geglu(Tensor x, bool tanh) -> Tensor");
  // grad_out: (..., H) in x's dtype, contiguous. Returns grad_x (..., 2H) = [grad_out * gelu(gate) |
  // grad_out * a * gelu'(gate)], x's dtype. Elementwise: no reductions, the same bits at any thread count.
  m.def("geglu_backward(Tensor grad_out, Tensor x, bool tanh) -> Tensor");
  // Triton variants: same schemas and contract, kernels in fastdiff/triton/geglu.py.
  m.def("geglu_triton(Tensor x, bool tanh) -> Tensor");
  m.def("geglu_backward_triton(Tensor grad_out, Tensor x, bool tanh) -> Tensor");
  // ---- group_norm: GroupNorm (+ SiLU) of U-Net / VAE ResNet blocks ---------------------------------
  // x: (N, C, *) (4-D NCHW, 5-D video, any rank >= 2), contiguous or channels-last (4-D ChannelsLast,
  //   5-D ChannelsLast3d); float32, float16 or bfloat16. C % num_groups == 0; group g of sample n is the
  //   channels [g*C/G, (g+1)*C/G) at every position (M = C/G * S elements, S = product of the dims after C).
  // weight, bias: (C,) in x's dtype, contiguous, or absent (1, 0). Statistics and arithmetic in float32;
  //   mean/rstd come from fp32-exact partial sums about a centre, combined in double (no cancellation
  //   when |mean| >> std): mean = sum(x)/M, var = sum((x-mean)^2)/M, rstd = 1/sqrt(var + eps).
  // out = act(y), y = (x - mean) * rstd * weight + bias, act = silu (y * sigmoid(y)) when silu, else the
  //   identity; out has x's shape, dtype and layout. mean, rstd: float32 (N, G), saved for the backward
  //   (an empty group has mean 0, rstd 1/sqrt(eps)).
  m.def("group_norm(Tensor x, int num_groups, Tensor? weight, Tensor? bias, float eps, bool silu) "
        "-> (Tensor out, Tensor mean, Tensor rstd)");
  // Backward by recomputation of xhat = (x - mean) * rstd and y from x and the saved statistics; with
  //   dy = grad_out * act'(y) (silu'(y) = s (1 + y (1 - s)), s = sigmoid(y)) and, per (n, c),
  //   A = sum_s dy, B = sum_s dy * xhat; per group m1 = sum_c w_c A / M, m2 = sum_c w_c B / M:
  //   grad_x = rstd * (dy * w - m1 - xhat * m2)  (x's layout), grad_weight = sum_n B, grad_bias = sum_n A
  //   ((C,) in x's dtype; shape (0,) when the parameter is absent). grad_out has x's shape and layout.
  //   Deterministic: every sum in a fixed order of shape-determined blocks (no float atomics).
  m.def("group_norm_backward(Tensor grad_out, Tensor x, Tensor? weight, Tensor? bias, Tensor mean, Tensor rstd, "
        "int num_groups, bool silu) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
  m.def("group_norm_triton(Tensor x, int num_groups, Tensor? weight, Tensor? bias, float eps, bool silu) "
        "-> (Tensor out, Tensor mean, Tensor rstd)");
  m.def("group_norm_backward_triton(Tensor grad_out, Tensor x, Tensor? weight, Tensor? bias, Tensor mean, "
        "Tensor rstd, int num_groups, bool silu) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
}
