// Runs the CUDA group_norm kernels of csrc/cuda/group_norm.cuh on the host emulator (emulator.h: each
// CTA's threads are fibers, __syncthreads its block barrier) and checks forward (out, mean, rstd) and
// backward (grad_x, grad_weight, grad_bias) against a float64 evaluation of csrc/ops.cpp's formulas:
// NCHW and channels-last, SiLU on and off, groups spanning several partial blocks, a channel tile
// that is partly outside C, float32 and float16. Outputs start as NaN, so an unwritten element fails.
// Built and run by tests/cuda_emu/run_group_norm.sh.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/group_norm.cuh"
#include "emu_check.h"
#include "emulator.h"

namespace gn = fastdiff::cuda::gn;
namespace emu = fastdiff::cuda::emu;
using fastdiff::DType;
using fastdiff::GroupNormArgs;

namespace {

struct EmuRunner {
  template <class K>
  cudaError_t launch(const GroupNormArgs& a, int64_t grid, size_t smem) {
    std::vector<char> buf(smem + 16, static_cast<char>(0xFF));  // shared memory starts poisoned
    for (int64_t blk = 0; blk < grid; ++blk) {
      std::memset(buf.data(), 0xFF, buf.size());
      emu::run_block(K::kThreads, buf.data(), smem, [&](int tid) { K::run(a, buf.data(), blk, tid); });
    }
    return cudaSuccess;
  }
};

template <typename T>
std::vector<T> store(const std::vector<double>& v) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = gn::from_f32<T>(static_cast<float>(v[i]));
  return out;
}

template <typename T>
std::vector<double> values(const std::vector<T>& v) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = gn::to_f32(v[i]);
  return out;
}

// max |got - want| / max(max |want|, 1e-3) (NaN counts as infinitely wrong).
double error(const std::vector<double>& got, const std::vector<double>& want) {
  double scale = 1e-3, err = 0.0;
  for (double w : want) scale = std::fmax(scale, std::fabs(w));
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::fabs(got[i] - want[i]);
    err = std::isnan(got[i]) ? INFINITY : std::fmax(err, e);
  }
  return err / scale;
}

template <typename T>
bool run_case(const char* name, int64_t N, int64_t C, int64_t S, int64_t G, bool cl, bool silu, double tol) {
  std::mt19937 rng(static_cast<unsigned>(N * 131 + C * 17 + S + G + cl + 2 * silu));
  std::normal_distribution<double> normal;
  const int64_t total = N * C * S;
  std::vector<double> xd(total), gd(total), wd(C), bd(C);
  for (auto& v : xd) v = 3.0 + 2.0 * normal(rng);
  for (auto& v : gd) v = normal(rng);
  for (auto& v : wd) v = 1.0 + 0.5 * normal(rng);
  for (auto& v : bd) v = 0.5 * normal(rng);
  std::vector<T> x = store<T>(xd), g = store<T>(gd), w = store<T>(wd), b = store<T>(bd);
  xd = values(x), gd = values(g), wd = values(w), bd = values(b);  // the reference sees the stored inputs

  GroupNormArgs a{};
  a.dtype = std::is_same_v<T, float> ? DType::f32 : DType::f16;
  a.batch = N, a.channels = C, a.spatial = S, a.groups = G, a.channels_last = cl, a.silu = silu, a.eps = 1e-5f;
  fastdiff::group_norm_partition(a);
  const T nan = gn::from_f32<T>(NAN);
  std::vector<T> out(total, nan), gx(total, nan), gw(C, nan), gb(C, nan);
  std::vector<float> mean(N * G, NAN), rstd(N * G, NAN), partial(fastdiff::group_norm_partial_floats(a), NAN);
  std::vector<float> cs(N * C * 2, NAN), coef(N * G * 2, NAN);
  a.x = x.data(), a.weight = w.data(), a.bias = b.data(), a.out = out.data(), a.mean = mean.data();
  a.rstd = rstd.data(), a.partial = partial.data(), a.grad_out = g.data(), a.grad_x = gx.data();
  a.channel_sums = cs.data(), a.group_coef = coef.data(), a.grad_weight = gw.data(), a.grad_bias = gb.data();
  EmuRunner runner;
  gn::dispatch<false>(a, runner);
  gn::dispatch<true>(a, runner);

  // float64 reference
  auto at = [&](int64_t n, int64_t c, int64_t s) { return cl ? (n * S + s) * C + c : (n * C + c) * S + s; };
  const int64_t cg = C / G;
  std::vector<double> rm(N * G), rr(N * G), ro(total), rgx(total), rgw(C, 0.0), rgb(C, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t q = 0; q < G; ++q) {
      double s1 = 0, s2 = 0;
      for (int64_t c = q * cg; c < (q + 1) * cg; ++c)
        for (int64_t s = 0; s < S; ++s) s1 += xd[at(n, c, s)];
      const double mu = s1 / (cg * S);
      for (int64_t c = q * cg; c < (q + 1) * cg; ++c)
        for (int64_t s = 0; s < S; ++s) s2 += (xd[at(n, c, s)] - mu) * (xd[at(n, c, s)] - mu);
      const double r = 1.0 / std::sqrt(s2 / (cg * S) + 1e-5);
      rm[n * G + q] = mu, rr[n * G + q] = r;
      double m1 = 0, m2 = 0;
      std::vector<double> dy(cg * S), xh(cg * S);
      for (int64_t c = q * cg; c < (q + 1) * cg; ++c)
        for (int64_t s = 0; s < S; ++s) {
          const int64_t i = at(n, c, s), k = (c - q * cg) * S + s;
          xh[k] = (xd[i] - mu) * r;
          const double y = xh[k] * wd[c] + bd[c], sg = 1.0 / (1.0 + std::exp(-y));
          ro[i] = silu ? y * sg : y;
          dy[k] = gd[i] * (silu ? sg * (1 + y * (1 - sg)) : 1.0);
          m1 += dy[k] * wd[c], m2 += dy[k] * wd[c] * xh[k];
          rgw[c] += dy[k] * xh[k], rgb[c] += dy[k];
        }
      m1 /= cg * S, m2 /= cg * S;
      for (int64_t c = q * cg; c < (q + 1) * cg; ++c)
        for (int64_t s = 0; s < S; ++s) {
          const int64_t k = (c - q * cg) * S + s;
          rgx[at(n, c, s)] = r * (dy[k] * wd[c] - m1 - xh[k] * m2);
        }
    }
  std::vector<double> md(mean.begin(), mean.end()), rd(rstd.begin(), rstd.end());
  const double errs[] = {error(values(out), ro), error(md, rm), error(rd, rr), error(values(gx), rgx),
                         error(values(gw), rgw), error(values(gb), rgb)};
  const char* names[] = {"out", "mean", "rstd", "grad_x", "grad_weight", "grad_bias"};
  bool ok = true;
  std::string report;
  for (int k = 0; k < 6; ++k) {
    ok = ok && errs[k] <= tol;
    char line[64];
    std::snprintf(line, sizeof line, " %s %.2e", names[k], errs[k]);
    report += line;
  }
  std::printf("%-4s %s:%s\n", ok ? "ok" : "FAIL", name, report.c_str());
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  struct Named {
    const char* name;
    bool (*run)(const char*);
  };
  const Named cases[] = {
      {"f32 nchw silu", [](const char* n) { return run_case<float>(n, 2, 8, 35, 4, false, true, 2e-5); }},
      {"f32 nchw plain, 2 blocks per channel", [](const char* n) { return run_case<float>(n, 1, 2, 16900, 1, false, false, 2e-5); }},
      {"f32 channels-last silu, 2 channel tiles", [](const char* n) { return run_case<float>(n, 2, 40, 21, 8, true, true, 2e-5); }},
      {"f32 channels-last, 3 blocks", [](const char* n) { return run_case<float>(n, 1, 4, 10000, 2, true, true, 2e-5); }},
      {"f16 nchw silu", [](const char* n) { return run_case<__half>(n, 2, 6, 60, 3, false, true, 4e-3); }},
      {"f16 channels-last", [](const char* n) { return run_case<__half>(n, 2, 6, 60, 2, true, false, 4e-3); }},
  };
  // run.sh's interface (name filter, --shard=I/N) through emu::run_cases.
  std::vector<emu::Case> runs;
  for (const Named& c : cases)
    runs.push_back({c.name, [c] {
                      emu::Result r;
                      if (!c.run(c.name)) r.fail("see the line above");
                      return r;
                    }});
  return emu::run_cases(argc, argv, runs);
}
