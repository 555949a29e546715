// Torch-side helpers shared by the CPU op files: ISA dispatch, threading, outputs. (Argument checks
// and parameter fills, shared with the CUDA bindings, are in csrc/<family>_fill.h with place.h's OnCpu.)
#pragma once

#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cpu/isa.h"
#include "cpu/kernels/kernels.h"
#include "torch_args.h"

namespace fastdiff::cpu {

// Calls isa::fn(args...) for the best compiled ISA.
#define FASTDIFF_CPU_CALL(fn, ...)                                                   \
  (::fastdiff::cpu::best_isa() == ::fastdiff::cpu::Isa::avx2 ? ::fastdiff::cpu::avx2::fn(__VA_ARGS__) \
                                                             : ::fastdiff::cpu::base::fn(__VA_ARGS__))

// Elements per parallel task: large enough to amortise the task, small enough to balance 2+ threads.
constexpr int64_t kGrain = 1 << 15;

// Runs body(b, begin, end) over every (sample, element range) of a (batch, n) problem, in parallel.
template <typename Body>
void for_each_segment(int64_t batch, int64_t n, const Body& body) {
  at::parallel_for(0, batch * n, kGrain, [&](int64_t lo, int64_t hi) {
    while (lo < hi) {
      const int64_t b = lo / n, begin = lo - b * n, end = std::min(n, begin + (hi - lo));
      body(b, begin, end);
      lo += end - begin;
    }
  });
}

// Asks the kernel to back [p, p + nbytes) with transparent huge pages where whole 2 MiB pages fit.
// Only for allocations of at least 32 MiB: glibc serves those from a fresh mapping on every call
// (smaller ones are reused from its heap), and then each 4 KiB page faults on first write. On the
// KVM guests we measured, a 39 MB output took ~75 ms of page faults with 4 KiB pages and a few ms
// with huge pages (PyTorch's own THP_MEM_ALLOC_ENABLE=1 does the same for every allocation).
// A hint only: values are unaffected, and a refusal (THP off, non-Linux) changes nothing.
inline void advise_huge_pages(void* p, size_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  constexpr size_t kFreshMapping = size_t{32} << 20;
  if (nbytes < kFreshMapping) return;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + nbytes) & ~(kHuge - 1);
  if (hi > lo) (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)p;
  (void)nbytes;
#endif
}

// A new output tensor for a CPU op (see advise_huge_pages: large outputs fault in 2 MiB pages).
inline at::Tensor empty_output(at::IntArrayRef shape, const at::TensorOptions& options) {
  at::Tensor out = at::empty(shape, options);
  advise_huge_pages(out.data_ptr(), out.nbytes());
  return out;
}

}  // namespace fastdiff::cpu
