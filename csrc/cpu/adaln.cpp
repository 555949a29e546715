// CPU implementations of the adaln ops (schemas and semantics: csrc/ops.cpp). Parameters checked and
// filled by adaln_fill.h (as for CUDA); allocation and threading here; the row loops in cpu/kernels/adaln.cpp.
//
// Backward sums over tokens (per-sample modulation) and over all rows (weight, bias) are deterministic:
// the rows of each sample are cut into chunks whose size depends only on the shape, each chunk sums
// its rows into its own partial arrays, and the partials are then added in chunk order.
#include <torch/library.h>

#include <tuple>

#include "adaln_fill.h"
#include "cpu/common.h"
#include "cpu/kernels/adaln.h"
#include "place.h"

namespace fastdiff::cpu {
namespace {

using Opt = std::optional<at::Tensor>;

using Shape = AdalnShape;

// Rows per parallel task of the forwards: about kGrain elements.
int64_t row_grain(int64_t d) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(d, 1)); }

// Rows per backward chunk: a function of the shape only, so the sums never depend on the thread count.
int64_t chunk_rows(Shape s) { return std::max<int64_t>(1, std::min<int64_t>(s.n, (1 << 16) / std::max<int64_t>(s.d, 1))); }

// Runs fn(args, r0, r1, partial) over every chunk of rows, then returns the partials as a float32
// (B, chunks, kAdalnPartials, D) tensor.
template <typename Fn>
at::Tensor run_chunks(Shape s, const at::Tensor& like, const Fn& fn) {
  const int64_t rows = chunk_rows(s), chunks = s.n ? (s.n + rows - 1) / rows : 0;
  at::Tensor partial = at::empty({s.b, chunks, kAdalnPartials, s.d}, like.options().dtype(at::kFloat));
  float* p = partial.data_ptr<float>();
  if (s.b * chunks * s.d == 0) return partial;
  at::parallel_for(0, s.b * chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t b = i / chunks, c = i % chunks;
      const int64_t r0 = b * s.n + c * rows, r1 = b * s.n + std::min(s.n, (c + 1) * rows);
      fn(r0, r1, p + i * kAdalnPartials * s.d);
    }
  });
  return partial;
}

// Sum of partial array `which` over the chunks of each sample: float32 (B, D).
at::Tensor per_sample_sum(const at::Tensor& partial, int which) {
  const int64_t b = partial.size(0), chunks = partial.size(1), d = partial.size(3);
  at::Tensor out = at::empty({b, d}, partial.options());
  if (out.numel() == 0) return out;
  const float* p = partial.data_ptr<float>() + which * d;
  float* o = out.data_ptr<float>();
  constexpr int64_t kCols = 512;
  const int64_t col_blocks = (d + kCols - 1) / kCols;
  at::parallel_for(0, b * col_blocks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t s = i / col_blocks, j0 = (i % col_blocks) * kCols, j1 = std::min(d, j0 + kCols);
      FASTDIFF_CPU_CALL(sum_strided, p + s * chunks * kAdalnPartials * d, kAdalnPartials * d, chunks, j0, j1,
                          o + s * d);
    }
  });
  return out;
}

// The gradient of a per-sample tensor (B, D), or of a parameter (D,) (summed over samples in order), in dtype.
at::Tensor finish(const at::Tensor& partial, int which, bool over_samples, at::ScalarType dtype) {
  at::Tensor s = per_sample_sum(partial, which);
  if (over_samples) {
    at::Tensor total = at::empty({s.size(1)}, s.options());
    FASTDIFF_CPU_CALL(sum_strided, s.data_ptr<float>(), s.size(1), s.size(0), 0, s.size(1), total.data_ptr<float>());
    s = total;
  }
  return dtype == at::kFloat ? s : s.to(dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaln_modulate(const at::Tensor& x, const at::Tensor& shift,
                                                              const at::Tensor& scale, const Opt& weight,
                                                              const Opt& bias, double eps, bool rms) {
  AdalnForwardArgs a =
      adaln_forward_params<OnCpu>(x, nullptr, nullptr, shift, scale, weight, bias, eps, rms, "adaln_modulate");
  const Shape s = adaln_shape(a);
  at::Tensor out = at::empty_like(x);
  at::Tensor mean = at::empty({s.b, s.n}, x.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty({s.b, s.n}, x.options().dtype(at::kFloat));
  a.out = out.data_ptr(), a.mean = mean.data_ptr<float>(), a.rstd = rstd.data_ptr<float>();
  if (s.b * s.n == 0) return {out, mean, rstd};
  at::parallel_for(0, s.b * s.n, row_grain(s.d), [&](int64_t lo, int64_t hi) { FASTDIFF_CPU_CALL(adaln_forward, a, lo, hi); });
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> adaln_modulate_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& scale, const Opt& weight, const Opt& bias,
    const at::Tensor& mean, const at::Tensor& rstd, bool rms, bool shift_per_token) {
  AdalnBackwardArgs a = adaln_backward_params<OnCpu>(nullptr, grad_out, x, nullptr, nullptr, scale, weight, bias, mean,
                                                     rstd, rms, shift_per_token, "adaln_modulate_backward");
  const Shape s = adaln_shape(a);
  at::Tensor grad_x = at::empty_like(x);
  a.grad_x = grad_x.data_ptr();
  at::Tensor grad_shift = shift_per_token ? at::empty_like(x) : at::Tensor();
  at::Tensor grad_scale = a.scale_per_token ? at::empty_like(x) : at::Tensor();
  if (shift_per_token) a.grad_shift = grad_shift.data_ptr();
  if (a.scale_per_token) a.grad_scale = grad_scale.data_ptr();
  at::Tensor partial = run_chunks(s, x, [&](int64_t r0, int64_t r1, float* p) { FASTDIFF_CPU_CALL(adaln_backward, a, r0, r1, p); });
  const auto dt = x.scalar_type();
  if (!shift_per_token) grad_shift = finish(partial, kPartShift, false, dt);
  if (!a.scale_per_token) grad_scale = finish(partial, kPartScale, false, dt);
  at::Tensor grad_w = weight.has_value() ? finish(partial, kPartWeight, true, dt) : at::empty({0}, x.options());
  at::Tensor grad_b = bias.has_value() ? finish(partial, kPartBias, true, dt) : at::empty({0}, x.options());
  return {grad_x, grad_shift, grad_scale, grad_w, grad_b};
}

at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& h) {
  GatedResidualArgs a = gated_residual_params<OnCpu>(x, gate, h, "gated_residual");
  const Shape s = adaln_shape(a);
  at::Tensor out = at::empty_like(x);
  a.out = out.data_ptr();
  if (out.numel() == 0) return out;
  at::parallel_for(0, s.b * s.n, row_grain(s.d), [&](int64_t lo, int64_t hi) { FASTDIFF_CPU_CALL(gated_residual_forward, a, lo, hi); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gated_residual_backward(const at::Tensor& grad_out, const at::Tensor& gate,
                                                           const at::Tensor& h) {
  GatedResidualArgs a = gated_residual_backward_params<OnCpu>(grad_out, gate, h, "gated_residual_backward");
  const Shape s = adaln_shape(a);
  at::Tensor grad_h = at::empty_like(h);
  at::Tensor grad_gate = a.gate_per_token ? at::empty_like(h) : at::Tensor();
  a.grad_h = grad_h.data_ptr();
  if (a.gate_per_token) a.grad_gate = grad_gate.data_ptr();
  at::Tensor partial =
      run_chunks(s, h, [&](int64_t r0, int64_t r1, float* p) { FASTDIFF_CPU_CALL(gated_residual_backward, a, r0, r1, p); });
  if (!a.gate_per_token) grad_gate = finish(partial, kPartGate, false, h.scalar_type());
  return {grad_gate, grad_h};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gated_residual_adaln(
    const at::Tensor& x, const at::Tensor& gate, const at::Tensor& h, const at::Tensor& shift, const at::Tensor& scale,
    const Opt& weight, const Opt& bias, double eps, bool rms) {
  AdalnForwardArgs a =
      adaln_forward_params<OnCpu>(x, &gate, &h, shift, scale, weight, bias, eps, rms, "gated_residual_adaln");
  const Shape s = adaln_shape(a);
  at::Tensor x_out = at::empty_like(x), out = at::empty_like(x);
  at::Tensor mean = at::empty({s.b, s.n}, x.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty({s.b, s.n}, x.options().dtype(at::kFloat));
  a.x_out = x_out.data_ptr(), a.out = out.data_ptr(), a.mean = mean.data_ptr<float>(), a.rstd = rstd.data_ptr<float>();
  if (s.b * s.n == 0) return {x_out, out, mean, rstd};
  at::parallel_for(0, s.b * s.n, row_grain(s.d), [&](int64_t lo, int64_t hi) { FASTDIFF_CPU_CALL(adaln_forward, a, lo, hi); });
  return {x_out, out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gated_residual_adaln_backward(const at::Tensor& grad_x_out, const at::Tensor& grad_out, const at::Tensor& x_out,
                              const at::Tensor& gate, const at::Tensor& h, const at::Tensor& scale, const Opt& weight,
                              const Opt& bias, const at::Tensor& mean, const at::Tensor& rstd, bool rms,
                              bool shift_per_token) {
  AdalnBackwardArgs a = adaln_backward_params<OnCpu>(&grad_x_out, grad_out, x_out, &gate, &h, scale, weight, bias, mean,
                                                     rstd, rms, shift_per_token, "gated_residual_adaln_backward");
  const Shape s = adaln_shape(a);
  at::Tensor grad_x = at::empty_like(x_out), grad_h = at::empty_like(x_out);
  a.grad_x = grad_x.data_ptr(), a.grad_h = grad_h.data_ptr();
  at::Tensor grad_gate = a.gate_per_token ? at::empty_like(x_out) : at::Tensor();
  at::Tensor grad_shift = shift_per_token ? at::empty_like(x_out) : at::Tensor();
  at::Tensor grad_scale = a.scale_per_token ? at::empty_like(x_out) : at::Tensor();
  if (a.gate_per_token) a.grad_gate = grad_gate.data_ptr();
  if (shift_per_token) a.grad_shift = grad_shift.data_ptr();
  if (a.scale_per_token) a.grad_scale = grad_scale.data_ptr();
  at::Tensor partial = run_chunks(s, x_out, [&](int64_t r0, int64_t r1, float* p) { FASTDIFF_CPU_CALL(adaln_backward, a, r0, r1, p); });
  const auto dt = x_out.scalar_type();
  if (!a.gate_per_token) grad_gate = finish(partial, kPartGate, false, dt);
  if (!shift_per_token) grad_shift = finish(partial, kPartShift, false, dt);
  if (!a.scale_per_token) grad_scale = finish(partial, kPartScale, false, dt);
  at::Tensor grad_w = weight.has_value() ? finish(partial, kPartWeight, true, dt) : at::empty({0}, x_out.options());
  at::Tensor grad_b = bias.has_value() ? finish(partial, kPartBias, true, dt) : at::empty({0}, x_out.options());
  return {grad_x, grad_gate, grad_h, grad_shift, grad_scale, grad_w, grad_b};
}

#undef FASTDIFF_ADALN_CALL

}  // namespace
}  // namespace fastdiff::cpu

TORCH_LIBRARY_IMPL(fastdiff, CPU, m) {
  m.impl("adaln_modulate", &fastdiff::cpu::adaln_modulate);
  m.impl("adaln_modulate_backward", &fastdiff::cpu::adaln_modulate_backward);
  m.impl("gated_residual", &fastdiff::cpu::gated_residual);
  m.impl("gated_residual_backward", &fastdiff::cpu::gated_residual_backward);
  m.impl("gated_residual_adaln", &fastdiff::cpu::gated_residual_adaln);
  m.impl("gated_residual_adaln_backward", &fastdiff::cpu::gated_residual_adaln_backward);
}
