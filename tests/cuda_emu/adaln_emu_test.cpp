// Runs the CUDA adaln kernels (csrc/cuda/adaln.cu: adaln_modulate, gated_residual_adaln, their
// backwards, gated_residual and its backward) on the host emulator through their launchers and
// checks them against float64 references computed from the same stored inputs (semantics: the adaln
// block of csrc/ops.cpp). Cases reach every row plan: sub-warp rows (several rows per warp, and rows
// of one warp that run different row counts), block rows, rows longer than one block (the streaming
// kernels), scalar accesses (odd D, storage misaligned by one element), per-sample and per-token
// modulation, weight/bias absent, a backward whose shared-memory accumulators need the opt-in or do
// not fit (streaming fallback), the token-sum kernel with more samples than a grid dimension holds
// (limit lowered), and the three storage types. Outputs start as NaN. Built and run by run.sh.
#include "cuda_host.h"
// clang-format off: the kernel file after cuda_host.h
#include "cuda/adaln.cu"
// clang-format on

#include <random>

#include "emu_check.h"

using fastdiff::DType;
using namespace fastdiff::cuda;
using namespace fastdiff::cuda::emu;

namespace {

constexpr double kEps32 = 0x1p-24;

// A (count,) tensor of type t: random values (stored, and kept as doubles), or NaN-poisoned.
struct Tensor {
  DType t;
  Buffer buf;
  std::vector<double> v;
  Tensor(DType type, int64_t count, size_t off_elems = 0)
      : t(type), buf(static_cast<size_t>(std::max<int64_t>(count, 0)) * elem_size(type), 0xFF, off_elems * elem_size(type)), v(count) {}
  Tensor(DType type, int64_t count, std::mt19937& rng, double mean, double spread, size_t off_elems = 0) : Tensor(type, count, off_elems) {
    std::normal_distribution<double> normal(mean, spread);
    for (int64_t i = 0; i < count; ++i) v[i] = put(t, buf.data(), i, normal(rng));
  }
  double at(int64_t i) { return get(t, buf.data(), i); }
  void* data() { return buf.data(); }
};

struct Spec {
  DType t;
  int64_t B, N, D;
  bool rms = false, fused = false;
  bool shift_pt = false, scale_pt = false, gate_pt = false;  // per token (else per sample)
  bool weight = true, bias = true;
  size_t off = 0;                  // x (and x_out / grad_x) misaligned by this many elements
  int sms = 132;                   // cudaDevAttrMultiProcessorCount (the forward's chunking)
  int smem_optin = 227 * 1024;     // cudaDevAttrMaxSharedMemoryPerBlockOptin
  unsigned max_grid_y = 65535;
};

void set_device(const Spec& p) {
  device().sm_count = p.sms, device().smem_optin = p.smem_optin, device().max_grid_y = p.max_grid_y;
}
void reset_device() { device() = Device{}; }

// Index of row r's modulation row: r (per token) or its sample.
int64_t mrow(bool per_token, int64_t r, int64_t N) { return per_token ? r : r / N; }

// Per-row float64 statistics of rows v (B*N rows of D).
void stats(const Spec& p, const std::vector<double>& v, std::vector<double>& mean, std::vector<double>& rstd) {
  const int64_t rows = p.B * p.N, D = p.D;
  mean.assign(rows, 0), rstd.assign(rows, 0);
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0, q = 0;
    if (!p.rms) {
      for (int64_t j = 0; j < D; ++j) s += v[r * D + j];
      s /= static_cast<double>(D);
    }
    for (int64_t j = 0; j < D; ++j) q += (v[r * D + j] - s) * (v[r * D + j] - s);
    mean[r] = s;
    rstd[r] = 1.0 / std::sqrt(q / static_cast<double>(D) + 1e-5);
  }
}

Result forward_case(const Spec& p) {
  Result r;
  std::mt19937 rng(5);
  const DType t = p.t;
  const int64_t B = p.B, N = p.N, D = p.D, rows = B * N, nel = rows * D;
  Tensor x(t, nel, rng, 0.5, 1.0, p.off), h(t, nel, rng, 0.0, 1.0), gate(t, (p.gate_pt ? rows : B) * D, rng, 0.0, 0.5);
  Tensor shift(t, (p.shift_pt ? rows : B) * D, rng, 0.0, 0.5), scale(t, (p.scale_pt ? rows : B) * D, rng, 0.0, 0.5);
  Tensor weight(t, D, rng, 1.0, 0.3), bias(t, D, rng, 0.0, 0.3);
  Tensor out(t, nel, p.off), x_out(t, nel, p.off);
  Buffer mean(4 * rows), rstd(4 * rows);
  AdalnForwardArgs a{};
  a.dtype = t, a.batch = B, a.tokens = N, a.dim = D, a.eps = 1e-5f, a.rms = p.rms;
  a.x = x.data(), a.shift = shift.data(), a.shift_per_token = p.shift_pt, a.scale = scale.data();
  a.scale_per_token = p.scale_pt, a.weight = p.weight ? weight.data() : nullptr, a.bias = p.bias ? bias.data() : nullptr;
  if (p.fused) a.gate = gate.data(), a.gate_per_token = p.gate_pt, a.h = h.data(), a.x_out = x_out.data();
  a.out = out.data(), a.mean = reinterpret_cast<float*>(mean.data()), a.rstd = reinterpret_cast<float*>(rstd.data());
  set_device(p);
  const cudaError_t e = adaln_forward(a, nullptr);
  reset_device();
  if (e != cudaSuccess) r.fail(std::string("launcher: ") + cudaGetErrorName(e));

  // The rows normalised: x, or x_out as the kernel stored it (after checking it).
  std::vector<double> v = x.v;
  if (p.fused) {
    std::vector<double> got(nel), ref(nel), tol(nel);
    for (int64_t i = 0; i < nel; ++i) {
      const int64_t row = i / D, j = i % D;
      const double g = gate.v[mrow(p.gate_pt, row, N) * D + j];
      got[i] = x_out.at(i), ref[i] = x.v[i] + g * h.v[i];
      tol[i] = 2 * unit(t) * std::fabs(ref[i]) + 4 * kEps32 * (std::fabs(x.v[i]) + std::fabs(g * h.v[i])) + subnormal(t);
      v[i] = got[i];
    }
    expect_close(r, "x_out", got, ref, tol);
  }
  std::vector<double> mu, rs;
  stats(p, v, mu, rs);
  std::vector<double> got_m(rows), got_r(rows), tol_m(rows), tol_r(rows), got(nel), ref(nel), tol(nel);
  for (int64_t row = 0; row < rows; ++row) {
    double mag = 0;
    for (int64_t j = 0; j < D; ++j) mag += std::fabs(v[row * D + j]);
    got_m[row] = reinterpret_cast<float*>(mean.data())[row], got_r[row] = reinterpret_cast<float*>(rstd.data())[row];
    tol_m[row] = 64 * kEps32 * mag / static_cast<double>(D) + subnormal(t);
    tol_r[row] = 128 * kEps32 * rs[row];
    for (int64_t j = 0; j < D; ++j) {
      const int64_t i = row * D + j;
      const double xh = (v[i] - mu[row]) * rs[row];
      const double w = p.weight ? weight.v[j] : 1.0, b = p.bias ? bias.v[j] : 0.0;
      const double a1 = 1.0 + scale.v[mrow(p.scale_pt, row, N) * D + j], sh = shift.v[mrow(p.shift_pt, row, N) * D + j];
      got[i] = out.at(i), ref[i] = (xh * w + b) * a1 + sh;
      tol[i] = 2 * unit(t) * std::fabs(ref[i]) + 256 * kEps32 * (std::fabs(a1) * ((std::fabs(xh) + 1) * std::fabs(w) + std::fabs(b)) + std::fabs(sh));
    }
  }
  expect_close(r, "mean", got_m, mu, tol_m);
  expect_close(r, "rstd", got_r, rs, tol_r);
  expect_close(r, "out", got, ref, tol);
  for (Buffer* b : {&x.buf, &h.buf, &gate.buf, &shift.buf, &scale.buf, &weight.buf, &bias.buf, &out.buf, &x_out.buf, &mean, &rstd}) {
    if (!b->guards_intact()) r.fail("a kernel wrote outside a buffer");
  }
  return r;
}

// Sums of per-row terms into (B, D) per sample / (D,) over all rows, with the magnitudes for tolerances.
struct Sums {
  std::vector<double> v, mag;
};

void add_to(Sums& s, int64_t idx, double term, double mag) {
  s.v[idx] += term;
  s.mag[idx] += mag;
}

void expect_sums(Result& r, const char* what, Tensor& got_t, const Sums& s) {
  const int64_t n = static_cast<int64_t>(s.v.size());
  std::vector<double> got(n), tol(n);
  for (int64_t i = 0; i < n; ++i) {
    got[i] = got_t.at(i);
    tol[i] = 2 * unit(got_t.t) * std::fabs(s.v[i]) + 128 * kEps32 * s.mag[i] + subnormal(got_t.t);
  }
  expect_close(r, what, got, s.v, tol);
}

Result backward_case(const Spec& p) {
  Result r;
  std::mt19937 rng(9);
  const DType t = p.t;
  const int64_t B = p.B, N = p.N, D = p.D, rows = B * N, nel = rows * D;
  Tensor x(t, nel, rng, 0.5, 1.0, p.off), g(t, nel, rng, 0.0, 1.0), gxo(t, nel, rng, 0.0, 1.0), h(t, nel, rng, 0.0, 1.0);
  Tensor gate(t, (p.gate_pt ? rows : B) * D, rng, 0.0, 0.5), scale(t, (p.scale_pt ? rows : B) * D, rng, 0.0, 0.5);
  Tensor weight(t, D, rng, 1.0, 0.3), bias(t, D, rng, 0.0, 0.3);
  std::vector<double> mu, rs;
  stats(p, x.v, mu, rs);
  Buffer mean(4 * rows), rstd(4 * rows);
  auto* fm = reinterpret_cast<float*>(mean.data());
  auto* fr = reinterpret_cast<float*>(rstd.data());
  for (int64_t row = 0; row < rows; ++row) fm[row] = static_cast<float>(mu[row]), fr[row] = static_cast<float>(rs[row]);
  Tensor grad_x(t, nel, p.off), grad_h(t, nel), grad_gate(t, (p.gate_pt ? rows : B) * D);
  Tensor grad_shift(t, (p.shift_pt ? rows : B) * D), grad_scale(t, (p.scale_pt ? rows : B) * D), grad_w(t, D), grad_b(t, D);

  AdalnBackwardArgs a{};
  a.dtype = t, a.batch = B, a.tokens = N, a.dim = D, a.rms = p.rms, a.grad_out = g.data(), a.x = x.data();
  a.scale = scale.data(), a.scale_per_token = p.scale_pt, a.shift_per_token = p.shift_pt;
  a.weight = p.weight ? weight.data() : nullptr, a.bias = p.bias ? bias.data() : nullptr, a.mean = fm, a.rstd = fr;
  if (p.fused) {
    a.grad_x_out = gxo.data(), a.gate = gate.data(), a.gate_per_token = p.gate_pt, a.h = h.data();
    a.grad_h = grad_h.data(), a.grad_gate = grad_gate.data();
  }
  a.grad_x = grad_x.data(), a.grad_shift = grad_shift.data(), a.grad_scale = grad_scale.data();
  a.grad_weight = p.weight ? grad_w.data() : nullptr, a.grad_bias = p.bias ? grad_b.data() : nullptr;
  set_device(p);
  Buffer ws(adaln_backward_workspace_bytes(a) + 16);
  const cudaError_t e = adaln_backward(a, ws.data(), nullptr);
  reset_device();
  if (e != cudaSuccess) r.fail(std::string("launcher: ") + cudaGetErrorName(e));

  std::vector<double> rx(nel), tx(nel), rh(nel), th(nel), gx_got(nel), gh_got(nel);
  const auto sums = [](size_t n) { return Sums{std::vector<double>(n), std::vector<double>(n)}; };
  Sums s_shift = sums(grad_shift.v.size()), s_scale = sums(grad_scale.v.size()), s_gate = sums(grad_gate.v.size());
  Sums s_w = sums(D), s_b = sums(D);
  for (int64_t row = 0; row < rows; ++row) {
    double m1 = 0, m2 = 0, a1m = 0, a2m = 0;
    std::vector<double> xh(D), gx(D);
    for (int64_t j = 0; j < D; ++j) {
      const int64_t i = row * D + j;
      const double w = p.weight ? weight.v[j] : 1.0, a1 = 1.0 + scale.v[mrow(p.scale_pt, row, N) * D + j];
      xh[j] = (x.v[i] - fm[row]) * fr[row];
      gx[j] = g.v[i] * a1 * w;
      m1 += gx[j], m2 += gx[j] * xh[j], a1m += std::fabs(gx[j]), a2m += std::fabs(gx[j] * xh[j]);
    }
    const double inv = 1.0 / static_cast<double>(D);
    m1 = p.rms ? 0 : m1 * inv, m2 *= inv, a1m *= inv, a2m *= inv;
    for (int64_t j = 0; j < D; ++j) {
      const int64_t i = row * D + j;
      const double w = p.weight ? weight.v[j] : 1.0, b = p.bias ? bias.v[j] : 0.0;
      const double a1 = 1.0 + scale.v[mrow(p.scale_pt, row, N) * D + j];
      const double dx = fr[row] * (gx[j] - m1 - xh[j] * m2);
      const double mag_dx = fr[row] * (std::fabs(gx[j]) + a1m + std::fabs(xh[j]) * a2m);
      double total = dx, mag_t = mag_dx;
      if (p.fused) {
        total += gxo.v[i], mag_t += std::fabs(gxo.v[i]);
        const int64_t gi = mrow(p.gate_pt, row, N) * D + j;
        rh[i] = total * gate.v[gi], th[i] = 2 * unit(t) * std::fabs(rh[i]) + 64 * kEps32 * mag_t * std::fabs(gate.v[gi]) + subnormal(t);
        gh_got[i] = grad_h.at(i);
        add_to(s_gate, gi, total * h.v[i], mag_t * std::fabs(h.v[i]));
      }
      rx[i] = total, tx[i] = 2 * unit(t) * std::fabs(total) + 64 * kEps32 * mag_t + subnormal(t);
      gx_got[i] = grad_x.at(i);
      add_to(s_shift, mrow(p.shift_pt, row, N) * D + j, g.v[i], std::fabs(g.v[i]));
      add_to(s_scale, mrow(p.scale_pt, row, N) * D + j, g.v[i] * (xh[j] * w + b), std::fabs(g.v[i]) * (std::fabs(xh[j] * w) + std::fabs(b)));
      add_to(s_w, j, g.v[i] * a1 * xh[j], std::fabs(g.v[i] * a1 * xh[j]));
      add_to(s_b, j, g.v[i] * a1, std::fabs(g.v[i] * a1));
    }
  }
  expect_close(r, "grad_x", gx_got, rx, tx);
  if (p.fused) {
    expect_close(r, "grad_h", gh_got, rh, th);
    expect_sums(r, "grad_gate", grad_gate, s_gate);
  }
  expect_sums(r, "grad_shift", grad_shift, s_shift);
  expect_sums(r, "grad_scale", grad_scale, s_scale);
  if (p.weight) expect_sums(r, "grad_weight", grad_w, s_w);
  if (p.bias) expect_sums(r, "grad_bias", grad_b, s_b);
  for (Buffer* b : {&x.buf, &g.buf, &gxo.buf, &h.buf, &gate.buf, &scale.buf, &weight.buf, &bias.buf, &mean, &rstd, &grad_x.buf,
                    &grad_h.buf, &grad_gate.buf, &grad_shift.buf, &grad_scale.buf, &grad_w.buf, &grad_b.buf, &ws}) {
    if (!b->guards_intact()) r.fail("a kernel wrote outside a buffer");
  }
  return r;
}

// gated_residual forward and backward; expect_refusal: the launcher must refuse (grid too large) and
// write nothing.
Result residual_case(const Spec& p, bool expect_refusal) {
  Result r;
  std::mt19937 rng(13);
  const DType t = p.t;
  const int64_t B = p.B, N = p.N, D = p.D, rows = B * N, nel = rows * D, ng = (p.gate_pt ? rows : B) * D;
  Tensor x(t, nel, rng, 0.0, 1.0, p.off), h(t, nel, rng, 0.0, 1.0), gate(t, ng, rng, 0.0, 0.5), g(t, nel, rng, 0.0, 1.0);
  Tensor out(t, nel, p.off), grad_h(t, nel, p.off), grad_gate(t, ng);
  GatedResidualArgs a{};
  a.dtype = t, a.batch = B, a.tokens = N, a.dim = D, a.x = x.data(), a.gate = gate.data(), a.gate_per_token = p.gate_pt;
  a.h = h.data(), a.out = out.data();
  set_device(p);
  const cudaError_t ef = gated_residual_forward(a, nullptr);
  GatedResidualArgs bw = a;
  bw.x = nullptr, bw.out = nullptr, bw.grad_out = g.data(), bw.grad_gate = grad_gate.data(), bw.grad_h = grad_h.data();
  Buffer ws(gated_residual_backward_workspace_bytes(bw) + 16);
  const cudaError_t eb = gated_residual_backward(bw, ws.data(), nullptr);
  reset_device();
  if (expect_refusal) {
    if (ef != cudaErrorInvalidConfiguration || eb != cudaErrorInvalidConfiguration) r.fail("launcher did not refuse");
    for (int64_t i = 0; i < nel; ++i) {
      if (!std::isnan(out.at(i)) || !std::isnan(grad_h.at(i))) {
        r.fail("a refused launch wrote");
        break;
      }
    }
    return r;
  }
  if (ef != cudaSuccess || eb != cudaSuccess) r.fail("launcher refused");
  std::vector<double> go(nel), ro(nel), to(nel), gh(nel), rh(nel), th(nel);
  Sums sg{std::vector<double>(ng), std::vector<double>(ng)};  // grad_gate per token or summed
  for (int64_t i = 0; i < nel; ++i) {
    const int64_t gi = mrow(p.gate_pt, i / D, N) * D + i % D;
    go[i] = out.at(i), ro[i] = x.v[i] + gate.v[gi] * h.v[i];
    to[i] = 2 * unit(t) * std::fabs(ro[i]) + 4 * kEps32 * (std::fabs(x.v[i]) + std::fabs(gate.v[gi] * h.v[i])) + subnormal(t);
    gh[i] = grad_h.at(i), rh[i] = g.v[i] * gate.v[gi], th[i] = 2 * unit(t) * std::fabs(rh[i]) + subnormal(t);
    add_to(sg, gi, g.v[i] * h.v[i], std::fabs(g.v[i] * h.v[i]));
  }
  expect_close(r, "out", go, ro, to);
  expect_close(r, "grad_h", gh, rh, th);
  expect_sums(r, "grad_gate", grad_gate, sg);
  for (Buffer* b : {&x.buf, &h.buf, &gate.buf, &g.buf, &out.buf, &grad_h.buf, &grad_gate.buf, &ws}) {
    if (!b->guards_intact()) r.fail("a kernel wrote outside a buffer");
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  const DType F32 = DType::f32, F16 = DType::f16, BF = DType::bf16;
  std::vector<Case> cases;
  const auto fwd_bwd = [&](const std::string& name, Spec s) {
    const std::string d = std::string(" ") + dtype_name(s.t);
    cases.push_back({"fwd " + name + d, [s] { return forward_case(s); }});
    cases.push_back({"bwd " + name + d, [s] { return backward_case(s); }});
  };
  for (DType t : {F32, F16, BF}) {
    Spec s{t, 2, 7, 40};  // sub-warp rows; N odd, so the warp's row groups run different row counts
    fwd_bwd("D=40 sub-warp", s);
    s = {t, 2, 5, 40, true, true, true, false, true};
    fwd_bwd("D=40 rms fused, shift per token", s);
    s = {t, 2, 9, 1000, false, true, false, true, false, true, false};
    fwd_bwd("D=1000 block rows fused, scale per token, no bias", s);
    s = {t, 1, 3, 2049};
    s.rms = true, s.weight = false;
    fwd_bwd("D=2049 streaming (scalar), rms, no weight", s);
    s = {t, 2, 6, 200};
    s.off = 1;
    fwd_bwd("D=200 x misaligned (scalar)", s);
  }
  Spec s{F16, 1, 2, 8200, false, true};
  s.gate_pt = true;
  fwd_bwd("D=8200 streaming (vector dtype), fused", s);
  s = {F32, 1, 3, 3};
  fwd_bwd("D=3 tiny rows", s);
  s = {BF, 2, 33, 256, false, true};
  s.sms = 1;  // few SMs: many tokens per forward chunk
  fwd_bwd("D=256 one SM (long chunks), fused", s);
  s = {F32, 1, 20, 4096};
  fwd_bwd("D=4096 f32 block rows (smem opt-in)", s);
  s = {BF, 2, 20, 512, false, true};
  s.smem_optin = 4096;  // accumulators do not fit: streaming backward
  fwd_bwd("D=512 smem too small (streaming bwd)", s);
  s = {F16, 5, 3, 24};
  s.max_grid_y = 2;  // token sums over 5 samples with gridDim.y capped at 2
  fwd_bwd("D=24 five samples, grid.y limit 2", s);

  const auto res = [&](const std::string& name, Spec sp, bool refuse = false) {
    cases.push_back({"residual " + name + " " + dtype_name(sp.t), [sp, refuse] { return residual_case(sp, refuse); }});
  };
  for (DType t : {F32, F16, BF}) {
    res("D=40 gate per sample", {t, 3, 9, 40});
    Spec q{t, 2, 5, 37};
    q.gate_pt = true;
    res("D=37 gate per token", q);
    q = {t, 2, 7, 64};
    q.off = 1;
    res("D=64 misaligned", q);
    q = {t, 2, 3, 2000};
    res("D=2000 several column tiles", q);
  }
  Spec q{F16, 5, 2, 16};
  q.max_grid_y = 2;
  res("five samples, grid.y limit 2", q);
  q = {F16, 1, 2, 8 * 256 * 3};
  q.max_grid_y = 2;
  res("3 column tiles over a grid.y limit of 2", q, true);
  return run_cases(argc, argv, cases);
}
