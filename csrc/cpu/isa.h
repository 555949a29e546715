// Run-time choice between the CPU kernel builds (csrc/cpu/kernels/*.cpp are compiled once per ISA).
// FASTDIFF_CPU_ISA=base (read once, at the first kernel call) forces the base build on any CPU, so
// its loops are tested on machines that would otherwise always take avx2.
#pragma once

#include <cstdlib>
#include <cstring>

namespace fastdiff::cpu {

enum class Isa { base, avx2 };

inline Isa best_isa() {
#if defined(__x86_64__) || defined(__i386__)
  static const Isa isa = [] {
    const char* forced = std::getenv("FASTDIFF_CPU_ISA");
    if (forced != nullptr && std::strcmp(forced, "base") == 0) return Isa::base;
    return (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
               ? Isa::avx2
               : Isa::base;
  }();
  return isa;
#else
  return Isa::base;
#endif
}

inline const char* isa_name(Isa isa) { return isa == Isa::avx2 ? "avx2" : "base"; }

}  // namespace fastdiff::cpu
