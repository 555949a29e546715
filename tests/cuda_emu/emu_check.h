// Helpers of the *_emu_test.cpp programs: poisoned "device" buffers, element access in the kernels'
// three storage types, and the case loop (name filter, one line per case, exit status).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "dtype.h"
#include "emulator.h"

namespace fastdiff::cuda::emu {

#if defined(__SANITIZE_ADDRESS__)
constexpr size_t kGuard = 0;  // exact allocations: AddressSanitizer sees any access outside them
#else
constexpr size_t kGuard = 4096;  // 0xFF-filled bytes around every buffer
#endif

// A "device" buffer of `bytes` bytes starting `offset` bytes past a 16-byte boundary (offset one
// element: the misaligned storage a tensor view can have), filled with `fill` (0xFF: NaN in every
// float format, so an element a kernel should write but does not shows) inside poisoned guards.
struct Buffer {
  std::vector<unsigned char> mem;
  size_t bytes = 0, offset = 0;
  explicit Buffer(size_t n, unsigned char fill = 0xFF, size_t off = 0)
      : mem(n + off + 2 * kGuard + 16, 0xFF), bytes(n), offset(off) {
    std::memset(data(), fill, n);
  }
  unsigned char* data() {
    auto p = reinterpret_cast<uintptr_t>(mem.data()) + kGuard;
    return reinterpret_cast<unsigned char*>((p + 15) / 16 * 16 + offset);
  }
  bool guards_intact() {
    unsigned char* d = data();
    for (unsigned char* p = mem.data(); p < d; ++p) {
      if (*p != 0xFF) return false;
    }
    for (unsigned char* p = d + bytes; p < mem.data() + mem.size(); ++p) {
      if (*p != 0xFF) return false;
    }
    return true;
  }
};

inline size_t elem_size(DType t) { return t == DType::f32 ? 4 : 2; }

// The rounding unit of a storage type (half an ulp at 1).
inline double unit(DType t) { return t == DType::f32 ? 0x1p-24 : t == DType::f16 ? 0x1p-11 : 0x1p-8; }

// Half the spacing of the type's subnormals: the absolute rounding error floor near 0.
inline double subnormal(DType t) { return t == DType::f32 ? 0x1p-150 : t == DType::f16 ? 0x1p-25 : 0x1p-134; }

// Element i of a buffer of type t, as a double.
inline double get(DType t, const void* base, int64_t i) {
  if (t == DType::f32) return static_cast<const float*>(base)[i];
  if (t == DType::f16) return __half2float(static_cast<const __half*>(base)[i]);
  return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
}

// Stores v (rounded to nearest) and returns the stored value.
inline double put(DType t, void* base, int64_t i, double v) {
  if (t == DType::f32) {
    static_cast<float*>(base)[i] = static_cast<float>(v);
  } else if (t == DType::f16) {
    static_cast<__half*>(base)[i] = __float2half_rn(static_cast<float>(v));
  } else {
    static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(static_cast<float>(v));
  }
  return get(t, base, i);
}

struct Result {
  bool ok = true;
  std::string notes;
  void fail(const std::string& why) {
    ok = false;
    notes += " FAIL(" + why + ")";
  }
};

// Checks got[i] against ref[i] within tol[i] (absolute); NaN fails. Reports the worst ratio.
inline void expect_close(Result& r, const char* what, const std::vector<double>& got, const std::vector<double>& ref,
                         const std::vector<double>& tol) {
  double worst = 0;
  int64_t at = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::isnan(got[i]) ? INFINITY : std::fabs(got[i] - ref[i]) / tol[i];
    if (!(e <= worst)) worst = e, at = static_cast<int64_t>(i);
  }
  char buf[160];
  std::snprintf(buf, sizeof buf, " %s %.2f", what, worst);
  r.notes += buf;
  if (!(worst <= 1.0)) {
    std::snprintf(buf, sizeof buf, "%s[%lld] = %g, expected %g +- %g", what, static_cast<long long>(at),
                  got[at], ref[at], tol[at]);
    r.fail(buf);
  }
}

struct Case {
  std::string name;
  std::function<Result()> run;
};

// Runs the cases whose name contains the filter argument (every case without one); with
// --shard=I/N only every N-th of them from the I-th on (run.sh runs the shards in parallel).
// Returns the process exit status.
inline int run_cases(int argc, char** argv, const std::vector<Case>& cases) {
  std::string filter;
  int shard = 0, shards = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::sscanf(argv[i], "--shard=%d/%d", &shard, &shards) == 2) continue;
    filter = argv[i];
  }
  if (shards < 1 || shard < 0 || shard >= shards) {
    std::fprintf(stderr, "bad --shard=%d/%d\n", shard, shards);
    return 2;
  }
  int failed = 0, ran = 0, matched = 0;
  for (const Case& c : cases) {
    if (!filter.empty() && c.name.find(filter) == std::string::npos) continue;
    if (matched++ % shards != shard) continue;
    const Result r = c.run();
    ++ran;
    std::printf("%-44s %s %s\n", c.name.c_str(), r.ok ? "ok  " : "FAIL", r.notes.c_str());
    std::fflush(stdout);
    failed += r.ok ? 0 : 1;
  }
  const Counters& n = counters();
  std::printf("%d cases, %d failed; emulated %llu launches, %llu blocks, %llu block barriers, %llu shuffles, %llu mma, "
              "%llu ldmatrix, %llu cp.async\n",
              ran, failed, static_cast<unsigned long long>(n.launches), static_cast<unsigned long long>(n.blocks),
              static_cast<unsigned long long>(n.block_barriers), static_cast<unsigned long long>(n.shuffles),
              static_cast<unsigned long long>(n.mma), static_cast<unsigned long long>(n.ldmatrix),
              static_cast<unsigned long long>(n.cp_async));
  // A shard may be empty; a whole run with nothing matched is an error.
  return failed == 0 && (ran > 0 || shards > 1) ? 0 : 1;
}

}  // namespace fastdiff::cuda::emu
