// Run-time choice between the CPU kernel builds (csrc/cpu/kernels/*.cpp are compiled once per ISA).
#pragma once

namespace fastdiff::cpu {

enum class Isa { base, avx2 };

inline Isa best_isa() {
#if defined(__x86_64__) || defined(__i386__)
  static const Isa isa = (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c"))
                             ? Isa::avx2
                             : Isa::base;
  return isa;
#else
  return Isa::base;
#endif
}

inline const char* isa_name(Isa isa) { return isa == Isa::avx2 ? "avx2" : "base"; }

}  // namespace fastdiff::cpu
