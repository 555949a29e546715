// Runs the CUDA fused solver step (csrc/cuda/sampler_update.cu) on the host emulator through its
// launcher and checks it against a float64 reference computed from the same stored inputs: out and
// the history slot it writes, every other history slot left bit-identical, a zero-coefficient slot
// holding NaN never read. Cases cover the storage types (also x and model_out of different types),
// guided and unguided steps, noise, odd sizes (scalar path), storage misaligned by one element, and
// the grid-stride loop (grid cap lowered to a few blocks). Built and run by run.sh.
#include "cuda_host.h"
// clang-format off: the kernel file after cuda_host.h
#include "cuda/sampler_update.cu"
// clang-format on

#include <random>

#include "emu_check.h"

using fastdiff::DType;
using namespace fastdiff::cuda;
using namespace fastdiff::cuda::emu;

namespace {

struct Spec {
  DType tx, tm;
  int64_t B, n;
  bool guided = false, per_sample = false, noise = false;
  int K = 0;               // history slots
  double slot = -1;        // coefficient row's slot entry (written when a whole number in [0, K))
  size_t x_off = 0, h_off = 0;  // misalignment of x / history, in elements
  int64_t max_blocks = 8192;
};

Result update_case(const Spec& p) {
  Result r;
  std::mt19937 rng(3);
  std::normal_distribution<double> normal(0.0, 1.0);
  const size_t sx = elem_size(p.tx), sm = elem_size(p.tm);
  const int64_t total = p.B * p.n, mrows = p.guided ? 2 : 1;
  Buffer x(total * sx, 0xFF, p.x_off * sx), mo(mrows * total * sm), z(total * sx), hist(p.K * total * sx + 2, 0xFF, p.h_off * sx);
  Buffer s_dev(4 * p.B), f_dev(4 * p.B), coeffs(4 * (6 + p.K)), out(total * sx);
  std::vector<double> vx(total), vm(mrows * total), vz(total), vh(p.K * total);
  for (int64_t i = 0; i < total; ++i) vx[i] = put(p.tx, x.data(), i, normal(rng));
  for (int64_t i = 0; i < mrows * total; ++i) vm[i] = put(p.tm, mo.data(), i, (1 + i / total) * normal(rng));
  for (int64_t i = 0; i < total; ++i) vz[i] = put(p.tx, z.data(), i, normal(rng));
  for (int64_t i = 0; i < p.K * total; ++i) vh[i] = put(p.tx, hist.data(), i, normal(rng));
  // Slot 1's coefficient is zero and its contents NaN: the kernel must not read it.
  if (p.K > 1) {
    for (int64_t i = total; i < 2 * total; ++i) vh[i] = put(p.tx, hist.data(), i, NAN);
  }
  auto* s = reinterpret_cast<float*>(s_dev.data());
  auto* f = reinterpret_cast<float*>(f_dev.data());
  for (int64_t b = 0; b < p.B; ++b) s[b] = static_cast<float>(2.0 + b), f[b] = static_cast<float>(0.8 + 0.1 * b);
  auto* c = reinterpret_cast<float*>(coeffs.data());
  const float row[6] = {0.9f, -0.4f, 0.6f, 1.3f, p.noise ? 0.25f : 0.0f, static_cast<float>(p.slot)};
  std::memcpy(c, row, sizeof row);
  for (int k = 0; k < p.K; ++k) c[6 + k] = k == 1 ? 0.0f : 0.3f - 0.2f * k;
  const float scale = 5.0f;

  UpdateParams up{};
  up.x = x.data(), up.x_dtype = p.tx, up.model_out = mo.data(), up.m_dtype = p.tm, up.guided = p.guided;
  up.scale = scale;
  up.scale_per_sample = p.guided && p.per_sample ? s : nullptr;
  up.factor = p.guided && p.per_sample ? f : nullptr;
  up.coeffs = c, up.history = p.K ? hist.data() : nullptr, up.history_len = p.K;
  up.noise = p.noise ? z.data() : nullptr, up.batch = p.B, up.per_sample = p.n;
  device().max_blocks = p.max_blocks;
  const uint64_t blocks_before = counters().blocks;
  if (launch_sampler_update(up, out.data(), nullptr) != cudaSuccess) r.fail("launcher refused");
  device().max_blocks = 8192;

  const bool writes = p.slot >= 0 && p.slot < p.K && p.slot == std::floor(p.slot);
  std::vector<double> got, ref, tol, got_d, ref_d, tol_d;
  for (int64_t i = 0; i < total; ++i) {
    const int64_t b = i / p.n;
    double m = vm[i], mag_m = std::fabs(m);
    if (p.guided) {
      const double ss = p.per_sample ? s[b] : scale, ff = p.per_sample ? f[b] : 1.0, cc = vm[total + i];
      m = ff * (vm[i] + ss * (cc - vm[i]));
      mag_m = std::fabs(ff) * (std::fabs(vm[i]) + std::fabs(ss) * (std::fabs(cc) + std::fabs(vm[i])));
    }
    const double d = row[0] * vx[i] + row[1] * m, mag_d = std::fabs(row[0] * vx[i]) + std::fabs(row[1]) * mag_m;
    double acc = row[2] * vx[i] + row[3] * d, mag = std::fabs(row[2] * vx[i]) + std::fabs(row[3]) * mag_d;
    if (p.noise) acc += row[4] * vz[i], mag += std::fabs(row[4] * vz[i]);
    for (int k = 0; k < p.K; ++k) {
      if (c[6 + k] != 0.0f) acc += c[6 + k] * vh[k * total + i], mag += std::fabs(c[6 + k] * vh[k * total + i]);
    }
    got.push_back(get(p.tx, out.data(), i));
    ref.push_back(acc);
    tol.push_back(2 * unit(p.tx) * std::fabs(acc) + 16 * 0x1p-24 * mag + subnormal(p.tx));
    if (writes) {
      got_d.push_back(get(p.tx, hist.data(), static_cast<int64_t>(p.slot) * total + i));
      ref_d.push_back(d);
      tol_d.push_back(2 * unit(p.tx) * std::fabs(d) + 16 * 0x1p-24 * mag_d + subnormal(p.tx));
    }
  }
  expect_close(r, "out", got, ref, tol);
  if (writes) expect_close(r, "history[slot]", got_d, ref_d, tol_d);
  for (int k = 0; k < p.K; ++k) {
    if (writes && k == static_cast<int>(p.slot)) continue;
    for (int64_t i = 0; i < total; ++i) {
      const double h = get(p.tx, hist.data(), k * total + i);
      if (!(h == vh[k * total + i] || (std::isnan(h) && std::isnan(vh[k * total + i])))) {
        r.fail("history slot " + std::to_string(k) + " changed");
        break;
      }
    }
  }
  for (Buffer* bb : {&x, &mo, &z, &hist, &s_dev, &f_dev, &coeffs, &out}) {
    if (!bb->guards_intact()) r.fail("a kernel wrote outside a buffer");
  }
  r.notes += " blocks " + std::to_string(counters().blocks - blocks_before);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  const DType F32 = DType::f32, F16 = DType::f16, BF = DType::bf16;
  std::vector<Case> cases;
  const auto add = [&](const std::string& name, const Spec& s) {
    cases.push_back({name + " " + dtype_name(s.tx) + "/" + dtype_name(s.tm), [s] { return update_case(s); }});
  };
  for (DType t : {F32, F16, BF}) {
    add("plain step vector", {t, t, 2, 8 * 40});
    add("guided per-sample, noise, K=3 slot 2, odd n", {t, t, 3, 333, true, true, true, 3, 2.0});
    add("guided uniform, K=2 slot 0, n%pack!=0", {t, t, 2, 100, true, false, false, 2, 0.0});
    add("x misaligned, K=2 slot 1", {t, t, 2, 8 * 30, false, false, true, 2, 1.0, 1, 0});
    add("history misaligned, K=3 slot 0", {t, t, 2, 8 * 30, true, true, false, 3, 0.0, 0, 1});
    add("slot 2.5 writes nothing", {t, t, 2, 64, false, false, false, 2, 2.5});
    add("slot K writes nothing", {t, t, 2, 64, false, false, false, 2, 2.0});
    add("grid stride (2 blocks), K=2 slot 1", {t, t, 2, 4000, true, true, true, 2, 1.0, 0, 0, 2});
  }
  add("mixed x f32, model_out bf16, guided, K=2", {F32, BF, 2, 8 * 33, true, true, true, 2, 0.0});
  add("mixed x f16, model_out f32, odd n", {F16, F32, 3, 77, true, false, true, 2, 1.0});
  add("mixed x bf16, model_out f16, grid stride", {BF, F16, 2, 3000, false, false, true, 3, 2.0, 0, 0, 2});
  return run_cases(argc, argv, cases);
}
