// Runs the CUDA guidance kernels (csrc/cuda/guidance.cu: guidance_combine, guidance_rescale_factor)
// on the host emulator through their launchers and checks them against float64 references computed
// from the same stored inputs. Cases cover the three storage types, the vector and scalar paths,
// storage misaligned by one element, per-sample scale and factor, samples spanning several
// 4096-element rescale chunks, and the grid-stride loop (grid cap lowered to a few blocks).
// Outputs start as NaN, so an element a kernel does not write fails. Built and run by run.sh.
#include "cuda_host.h"
// clang-format off: the kernel file after cuda_host.h
#include "cuda/guidance.cu"
// clang-format on

#include <random>

#include "emu_check.h"

using fastdiff::DType;
using namespace fastdiff::cuda;
using namespace fastdiff::cuda::emu;

namespace {

struct Spec {
  DType t;
  int64_t B, n;
  bool per_sample_scale = false, factor = false;
  size_t in_off = 0, out_off = 0;  // misalignment of model_out / out, in elements
  int64_t max_blocks = 8192;       // the launcher's grid cap
};

// model_out (2B, n) = [uncond; cond]: per-sample mean and spread, so that a wrong sample index shows.
struct Inputs {
  Buffer mo;
  std::vector<double> u, c;  // the stored values
  std::vector<float> s, f;
  Buffer s_dev, f_dev;
  Inputs(const Spec& p, std::mt19937& rng)
      : mo(2 * p.B * p.n * elem_size(p.t), 0xFF, p.in_off * elem_size(p.t)), s_dev(4 * p.B), f_dev(4 * p.B) {
    std::normal_distribution<double> normal(0.0, 1.0);
    const int64_t total = p.B * p.n;
    u.resize(total), c.resize(total);
    for (int64_t i = 0; i < total; ++i) {
      const double b = static_cast<double>(i / p.n);
      u[i] = put(p.t, mo.data(), i, 3.0 + b + (0.5 + b) * normal(rng));
      c[i] = put(p.t, mo.data(), total + i, 3.0 - b + (1.0 + 0.5 * b) * normal(rng));
    }
    for (int64_t b = 0; b < p.B; ++b) {
      s.push_back(static_cast<float>(1.5 + 2.0 * b));
      f.push_back(static_cast<float>(0.5 + 0.25 * b));
    }
    std::memcpy(s_dev.data(), s.data(), 4 * p.B);
    std::memcpy(f_dev.data(), f.data(), 4 * p.B);
  }
  GuidanceParams params(const Spec& p, float scale) {
    return GuidanceParams{mo.data(), p.t, p.B, p.n, scale, p.per_sample_scale ? reinterpret_cast<float*>(s_dev.data()) : nullptr,
                          p.factor ? reinterpret_cast<float*>(f_dev.data()) : nullptr};
  }
};

constexpr float kScale = 7.5f;

Result combine_case(const Spec& p) {
  Result r;
  std::mt19937 rng(7);
  device().max_blocks = p.max_blocks;
  Inputs in(p, rng);
  const size_t es = elem_size(p.t);
  Buffer out(p.B * p.n * es, 0xFF, p.out_off * es);
  const uint64_t blocks_before = counters().blocks;
  if (launch_guidance_combine(in.params(p, kScale), out.data(), nullptr) != cudaSuccess) r.fail("launcher refused");
  device().max_blocks = 8192;
  std::vector<double> got, ref, tol;
  for (int64_t i = 0; i < p.B * p.n; ++i) {
    const int64_t b = i / p.n;
    const double s = p.per_sample_scale ? in.s[b] : kScale, f = p.factor ? in.f[b] : 1.0;
    const double uu = in.u[i], cc = in.c[i];
    got.push_back(get(p.t, out.data(), i));
    ref.push_back(f * (uu + s * (cc - uu)));
    // float32 arithmetic on the magnitudes involved, then one rounding to the storage type.
    tol.push_back(2 * unit(p.t) * std::fabs(ref.back()) + 8 * 0x1p-24 * std::fabs(f) * (std::fabs(uu) + std::fabs(s) * (std::fabs(cc) + std::fabs(uu))) + subnormal(p.t));
  }
  expect_close(r, "out", got, ref, tol);
  if (!in.mo.guards_intact() || !out.guards_intact()) r.fail("a kernel wrote outside a buffer");
  r.notes += " blocks " + std::to_string(counters().blocks - blocks_before);
  return r;
}

constexpr double kRescale = 0.7;

Result rescale_case(const Spec& p) {
  Result r;
  std::mt19937 rng(11);
  Inputs in(p, rng);
  Buffer ws(guidance_rescale_workspace_bytes(p.B, p.n) + 16), out(4 * p.B);
  if (launch_guidance_rescale_factor(in.params(p, kScale), kRescale, ws.data(), reinterpret_cast<float*>(out.data()), nullptr) != cudaSuccess) {
    r.fail("launcher refused");
  }
  std::vector<double> got, ref, tol;
  for (int64_t b = 0; b < p.B; ++b) {
    const double s = p.per_sample_scale ? in.s[b] : kScale;
    double c1 = 0, c2 = 0, g1 = 0, g2 = 0;
    for (int64_t i = b * p.n; i < (b + 1) * p.n; ++i) {
      const double g = in.u[i] + s * (in.c[i] - in.u[i]);
      c1 += in.c[i], c2 += in.c[i] * in.c[i], g1 += g, g2 += g * g;
    }
    const double n = static_cast<double>(p.n);
    const double var_c = p.n ? c2 / n - (c1 / n) * (c1 / n) : 0, var_g = p.n ? g2 / n - (g1 / n) * (g1 / n) : 0;
    ref.push_back(1 - kRescale + kRescale * (var_g > 0 ? std::sqrt(var_c / var_g) : 1.0));
    got.push_back(reinterpret_cast<float*>(out.data())[b]);
    tol.push_back(1e-5 * std::fabs(ref.back()) + 1e-6);  // float32 per-thread sums over 16 elements
  }
  expect_close(r, "factor", got, ref, tol);
  if (!in.mo.guards_intact() || !out.guards_intact() || !ws.guards_intact()) r.fail("a kernel wrote outside a buffer");
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Case> cases;
  for (DType t : {DType::f32, DType::f16, DType::bf16}) {
    const std::string d = dtype_name(t);
    const auto add = [&](const std::string& name, Result (*fn)(const Spec&), Spec s) {
      s.t = t;
      cases.push_back({name + " " + d, [fn, s] { return fn(s); }});
    };
    // combine: vector path (n a multiple of the 16-byte pack), scalar path (odd n), misaligned
    // storage, uniform scale with n not a multiple of the pack but B n one (vector path), grid stride.
    add("combine vector", combine_case, {t, 3, 8 * 37});
    add("combine odd n per-sample scale+factor", combine_case, {t, 3, 1001, true, true});
    add("combine model_out misaligned", combine_case, {t, 2, 8 * 20, true, false, 1, 0});
    add("combine out misaligned", combine_case, {t, 2, 8 * 20, false, true, 0, 1});
    add("combine uniform n%pack!=0", combine_case, {t, 2, 100});
    add("combine grid stride (3 blocks)", combine_case, {t, 2, 5000, true, false, 0, 0, 3});
    add("combine n=1", combine_case, {t, 5, 1, true, true});
    // rescale: several 4096-element chunks per sample (vector and scalar), misaligned, n = 1, n = 0.
    add("rescale 3 chunks vector", rescale_case, {t, 2, 4096 * 2 + 64});
    add("rescale 3 chunks odd n per-sample", rescale_case, {t, 3, 4096 * 2 + 37, true});
    add("rescale misaligned", rescale_case, {t, 2, 800, false, false, 1});
    add("rescale n=1", rescale_case, {t, 3, 1});
    add("rescale n=0", rescale_case, {t, 2, 0});
  }
  return run_cases(argc, argv, cases);
}
