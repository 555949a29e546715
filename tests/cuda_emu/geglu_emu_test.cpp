// Runs the CUDA geglu kernels of csrc/cuda/geglu_kernels.cuh on the host emulator (emulator.h: every
// thread of a block a fiber) and checks forward and backward against a float64 reference: every
// dtype, both GELU forms, the 16-byte and the scalar path (odd H, unaligned views), a grid smaller
// than the work (the threads' stride loop). Outputs start as NaN and sit between NaN guard bands:
// an unwritten element or a write out of bounds fails. Built and run by `tests/cuda_emu/run.sh geglu`.
//
// Criterion, per element: |got - ref| <= tol * |ref| + 1e-3 * tol * max|ref|, tol = 1e-5 for float32
// and one unit of the dtype's rounding (2^-11 fp16, 2^-8 bf16) otherwise: the kernels compute in
// float32 and round once.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/geglu_kernels.cuh"
#include "emu_check.h"
#include "emulator.h"

using fastdiff::DType;
using fastdiff::GegluArgs;
namespace g = fastdiff::cuda::geglu;
namespace emu = fastdiff::cuda::emu;

namespace {

constexpr size_t kGuard = 256;

// Element storage with NaN guard bands on both sides; `shift` elements of misalignment.
struct Buffer {
  std::vector<unsigned char> mem;
  size_t bytes, offset;
  Buffer(size_t n, size_t shift) : mem(n + 2 * kGuard + 32, 0xFF), bytes(n) {
    const auto base = reinterpret_cast<uintptr_t>(mem.data()) + kGuard;
    offset = ((base + 15) / 16 * 16 - reinterpret_cast<uintptr_t>(mem.data())) + shift;
  }
  unsigned char* data() { return mem.data() + offset; }
  bool guards_intact() const {
    for (size_t i = 0; i < mem.size(); ++i)
      if ((i < offset || i >= offset + bytes) && mem[i] != 0xFF) return false;
    return true;
  }
};

double load(DType t, const unsigned char* p, int64_t i) {
  switch (t) {
    case DType::f32: return reinterpret_cast<const float*>(p)[i];
    case DType::f16: return __half2float(reinterpret_cast<const __half*>(p)[i]);
    default: return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(p)[i]);
  }
}

void put(DType t, unsigned char* p, int64_t i, float v) {
  switch (t) {
    case DType::f32: reinterpret_cast<float*>(p)[i] = v; break;
    case DType::f16: reinterpret_cast<__half*>(p)[i] = __float2half_rn(v); break;
    default: reinterpret_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
  }
}

int elem_size(DType t) { return t == DType::f32 ? 4 : 2; }

void gelu_ref(double x, bool tanh, double* value, double* slope) {
  if (tanh) {
    const double k = std::sqrt(2.0 / M_PI), c = 0.044715, th = std::tanh(k * (x + c * x * x * x));
    *value = 0.5 * x * (1 + th);
    *slope = 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * k * (1 + 3 * c * x * x);
  } else {
    const double cdf = 0.5 * std::erfc(-x / std::sqrt(2.0));
    *value = x * cdf;
    *slope = cdf + x * std::exp(-0.5 * x * x) / std::sqrt(2 * M_PI);
  }
}

// Runs the kernel of this call's specialisation over `blocks` blocks (0: the launchers' count).
void run(const GegluArgs& a, bool backward, int64_t blocks) {
  g::dispatch(a, backward, [&](auto tag, auto n, auto vec, auto tanh, int64_t items) {
    using T = typename decltype(tag)::type;
    constexpr int kN = decltype(n)::value;
    constexpr bool kVec = decltype(vec)::value, kTanh = decltype(tanh)::value;
    const int64_t grid = blocks ? blocks : g::blocks_for(items);
    for (int64_t b = 0; b < grid; ++b)
      emu::run_block(g::kThreads, nullptr, 0, [&](int t) {
        if (backward)
          g::backward_thread<T, kN, kVec, kTanh>(a, b, grid, t, g::kThreads);
        else
          g::forward_thread<T, kN, kVec, kTanh>(a, b, grid, t, g::kThreads);
      });
    return 0;
  });
}

struct Case {
  DType dtype;
  int64_t rows, half;
  bool tanh;
  size_t shift;      // misalignment of every buffer, in bytes (a multiple of the element size)
  int64_t blocks;    // 0: as launched; else a smaller grid (stride loop)
  bool expect_vector;
};

bool check(const char* what, DType t, const unsigned char* got, const std::vector<double>& ref) {
  double scale = 0;
  for (double r : ref) scale = std::max(scale, std::fabs(r));
  const double tol = t == DType::f32 ? 1e-5 : t == DType::f16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
  for (size_t i = 0; i < ref.size(); ++i) {
    const double v = load(t, got, static_cast<int64_t>(i));
    if (!(std::fabs(v - ref[i]) <= tol * std::fabs(ref[i]) + 1e-3 * tol * scale)) {
      std::printf("    %s[%zu] = %.9g, reference %.9g\n", what, i, v, ref[i]);
      return false;
    }
  }
  return true;
}

bool run_case(const Case& c, std::mt19937& rng) {
  const int es = elem_size(c.dtype);
  const int64_t h = c.half, xs = c.rows * 2 * h, os = c.rows * h;
  Buffer x(xs * es, c.shift), go(os * es, c.shift), out(os * es, c.shift), gx(xs * es, c.shift);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  for (int64_t i = 0; i < xs; ++i) put(c.dtype, x.data(), i, nd(rng));
  for (int64_t i = 0; i < os; ++i) put(c.dtype, go.data(), i, nd(rng));
  GegluArgs a{};
  a.dtype = c.dtype, a.rows = c.rows, a.half = h, a.tanh = c.tanh;
  a.x = x.data(), a.grad_out = go.data(), a.out = out.data(), a.grad_x = gx.data();
  if (g::vector_path(a, false, es) != c.expect_vector || g::vector_path(a, true, es) != c.expect_vector) {
    std::printf("    expected the %s path\n", c.expect_vector ? "16-byte" : "scalar");
    return false;
  }
  run(a, false, c.blocks);
  run(a, true, c.blocks);
  std::vector<double> ref_out(os), ref_gx(xs);
  for (int64_t r = 0; r < c.rows; ++r)
    for (int64_t j = 0; j < h; ++j) {
      const double av = load(c.dtype, x.data(), r * 2 * h + j), gv = load(c.dtype, x.data(), r * 2 * h + h + j);
      const double gov = load(c.dtype, go.data(), r * h + j);
      double value, slope;
      gelu_ref(gv, c.tanh, &value, &slope);
      ref_out[r * h + j] = av * value;
      ref_gx[r * 2 * h + j] = gov * value;
      ref_gx[r * 2 * h + h + j] = gov * av * slope;
    }
  bool ok = check("out", c.dtype, out.data(), ref_out) && check("grad_x", c.dtype, gx.data(), ref_gx);
  for (Buffer* b : {&x, &go, &out, &gx})
    if (!b->guards_intact()) {
      std::printf("    a write outside its buffer\n");
      ok = false;
    }
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Case> cases;
  for (DType t : {DType::f32, DType::f16, DType::bf16}) {
    const int64_t per = 16 / elem_size(t);
    for (bool tanh : {false, true}) {
      cases.push_back({t, 3, 8 * per, tanh, 0, 0, true});           // 16-byte path
      cases.push_back({t, 37, 2 * per, tanh, 0, 2, true});          // 16-byte path, grid smaller than the work
      cases.push_back({t, 5, 7, tanh, 0, 0, false});                // odd H: scalar path
      cases.push_back({t, 1, 1, tanh, 0, 0, false});                // one element
      cases.push_back({t, 4, 4 * per, tanh, static_cast<size_t>(elem_size(t)), 0, false});  // unaligned view: scalar path
      cases.push_back({t, 300, 1000 / per * per + 3, tanh, 0, 0, false});  // several blocks, scalar
    }
  }
  // run.sh's interface (name filter, --shard=I/N) through emu::run_cases.
  std::vector<emu::Case> runs;
  for (size_t k = 0; k < cases.size(); ++k) {
    const Case c = cases[k];
    char name[160];
    std::snprintf(name, sizeof name, "%s %s R=%lld H=%lld shift=%zu blocks=%lld", fastdiff::dtype_name(c.dtype),
                  c.tanh ? "tanh" : "exact", static_cast<long long>(c.rows), static_cast<long long>(c.half), c.shift,
                  static_cast<long long>(c.blocks));
    runs.push_back({name, [c, k] {
                      std::mt19937 rng(1234u + static_cast<unsigned>(k));  // per case: the same values in any shard
                      emu::Result r;
                      if (!run_case(c, rng)) r.fail("see the lines above");
                      return r;
                    }});
  }
  return emu::run_cases(argc, argv, runs);
}
