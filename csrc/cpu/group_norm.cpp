// CPU implementations of group_norm and group_norm_backward (schemas and semantics: csrc/ops.cpp).
// Checks and allocation in group_norm_fill.h (shared with the CUDA binding), threading here, the loops in
// cpu/kernels/group_norm.cpp.
//
// Deterministic at any thread count: every sum is cut into the blocks of group_norm_args.h (a function
// of the shape), each block is summed by one task, and blocks are combined in a fixed order. Small
// NCHW groups run whole in one task (statistics, then the output while the group is still in cache);
// larger groups and channels-last inputs run in three phases over tasks of about kGrain elements.
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <tuple>
#include <vector>

#include "cpu/common.h"
#include "cpu/kernels/group_norm.h"
#include "group_norm_fill.h"

namespace fastdiff::cpu {
namespace {

using Opt = std::optional<at::Tensor>;
namespace fill = group_norm_fill;

// Elements of an NCHW group that one task handles whole (1 MiB of float32: an L2 on the machines we use).
constexpr int64_t kLocalGroup = 1 << 18;

// Channels-last tasks on CPU: blocks of about kRowsBlock elements in whole rows, overriding the shared
// partition (group_norm_args.h, sized for CUDA blocks) before the buffers are sized. Larger blocks
// than the shared 16K elements: each per-channel record costs the finalize a step, and a block of
// few rows (12 at C = 1280) has too little work per task; 64K float32 (256 KiB) of x and of
// grad_out still fit the L2 together. Still a function of the shape only (determinism).
constexpr int64_t kRowsBlock = 1 << 16;

void cpu_partition(GroupNormArgs& a) {
  if (!a.channels_last || a.spatial <= 0) return;
  a.block_len = std::clamp<int64_t>(kRowsBlock / std::max<int64_t>(a.channels, 1), 1, a.spatial);
  a.blocks = (a.spatial + a.block_len - 1) / a.block_len;
}

bool group_local(const GroupNormArgs& a) {
  return !a.channels_last && (a.channels / a.groups) * a.spatial <= kLocalGroup;
}

// Runs body(lo, hi) over consecutive ranges covering [0, total), in parallel. Ranges are handed out as
// threads ask (guided: about remaining / (2 * threads) indices, at least one), not split up front: a
// thread that the OS deschedules on a busy machine holds up one small range, not half of the work.
// Every index is computed by one call whatever thread makes it, so the bits never depend on the
// schedule; ranges of consecutive indices keep the kernels' prefetch of the next group useful.
template <typename Body>
void for_ranges(int64_t total, const Body& body) {
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), total);
  if (threads <= 1) {
    if (total > 0) body(int64_t{0}, total);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    int64_t lo = next.load(std::memory_order_relaxed);
    while (lo < total) {
      const int64_t take = std::max<int64_t>(1, (total - lo) / (2 * threads));
      if (next.compare_exchange_weak(lo, lo + take, std::memory_order_relaxed)) {
        body(lo, std::min(total, lo + take));
        lo = next.load(std::memory_order_relaxed);
      }
    }
  });
}

// Runs fn(n, c0, c1, b) over every task of the partition, in parallel: channels-last tasks are the
// blocks of rows (all channels); NCHW tasks are one block of a run of channels of one sample.
template <typename Fn>
void for_tasks(const GroupNormArgs& a, const Fn& fn) {
  if (a.channels_last) {
    for_ranges(a.batch * a.blocks, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) fn(i / a.blocks, 0, a.channels, i % a.blocks);
    });
    return;
  }
  // Channels per task when a channel is one block; else one channel per task.
  const int64_t run = a.blocks == 1 ? std::max<int64_t>(1, kGrain / std::max<int64_t>(a.spatial, 1)) : 1;
  const int64_t runs = (a.channels + run - 1) / run;
  for_ranges(a.batch * runs * a.blocks, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t b = i % a.blocks, r = (i / a.blocks) % runs, n = i / (a.blocks * runs);
      fn(n, r * run, std::min(a.channels, (r + 1) * run), b);
    }
  });
}

template <typename Fn>
void for_groups(const GroupNormArgs& a, const Fn& fn) {
  for_ranges(a.batch * a.groups, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) fn(i / a.groups, i % a.groups);
  });
}

// The blocks of group g of sample n, as tasks, in order.
template <typename Fn>
void group_blocks(const GroupNormArgs& a, int64_t n, int64_t g, const Fn& fn) {
  const int64_t cg = a.channels / a.groups;
  for (int64_t b = 0; b < a.blocks; ++b) fn(n, g * cg, (g + 1) * cg, b);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm(const at::Tensor& x, int64_t num_groups, const Opt& weight,
                                                          const Opt& bias, double eps, bool silu) {
  constexpr const char* op = "group_norm";
  GroupNormArgs a = fill::inputs(x, num_groups, weight, bias, silu, c10::DeviceType::CPU, op);
  cpu_partition(a);
  a.eps = static_cast<float>(eps);
  fill::Buffers f = fill::forward_buffers(a, x);
  advise_huge_pages(f.out.data_ptr(), f.out.nbytes());
  auto stats = [&](int64_t n, int64_t c0, int64_t c1, int64_t b) { FASTDIFF_CPU_CALL(group_norm_stats, a, n, c0, c1, b); };
  auto apply = [&](int64_t n, int64_t c0, int64_t c1, int64_t b) { FASTDIFF_CPU_CALL(group_norm_apply, a, n, c0, c1, b); };
  auto finalize = [&](int64_t n, int64_t g) { FASTDIFF_CPU_CALL(group_norm_finalize, a, n, g); };
  if (group_local(a)) {
    for_groups(a, [&](int64_t n, int64_t g) {
      group_blocks(a, n, g, stats);
      finalize(n, g);
      group_blocks(a, n, g, apply);
    });
  } else {
    for_tasks(a, stats);
    for_groups(a, finalize);
    for_tasks(a, apply);
  }
  return {f.out, f.mean, f.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                                   const Opt& weight, const Opt& bias,
                                                                   const at::Tensor& mean, const at::Tensor& rstd,
                                                                   int64_t num_groups, bool silu) {
  constexpr const char* op = "group_norm_backward";
  GroupNormArgs a =
      fill::backward_inputs(grad_out, x, weight, bias, mean, rstd, num_groups, silu, c10::DeviceType::CPU, op);
  cpu_partition(a);
  fill::Buffers f = fill::backward_buffers(a, x, weight, bias);
  advise_huge_pages(f.grad_x.data_ptr(), f.grad_x.nbytes());
  auto coef = [&](int64_t n, int64_t g) { FASTDIFF_CPU_CALL(group_norm_grad_group, a, n, g); };
  if (group_local(a)) {
    // SiLU's derivative costs an exp per element: each task keeps k1 * dy of its group from the sums
    // pass for grad_x (the same values the recomputation would give). A float32 grad_x holds them in
    // place (the group's own elements, finished by grad_x: no extra buffer in the cache, and grad_x's
    // first write happens in the pass busy with exp); other dtypes use one buffer per thread.
    const int64_t cg = a.channels / a.groups, group_elems = cg * a.spatial;
    const bool in_place = a.dtype == DType::f32;
    for_ranges(a.batch * a.groups, [&](int64_t lo, int64_t hi) {
      // Kept by each thread between calls (at most kLocalGroup floats): a fresh buffer per call
      // would fault its pages in every time.
      thread_local std::vector<float> cache;
      const bool buffered = a.silu && !in_place;
      if (buffered && cache.size() < static_cast<size_t>(group_elems)) cache.resize(static_cast<size_t>(group_elems));
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t n = i / a.groups, g = i % a.groups;
        float* dy = !a.silu ? nullptr
                    : in_place ? static_cast<float*>(a.grad_x) + group_norm_index(a, n, g * cg, 0)
                               : cache.data();
        group_blocks(a, n, g, [&](int64_t n_, int64_t c0, int64_t c1, int64_t b) {
          FASTDIFF_CPU_CALL(group_norm_grad_sums, a, n_, c0, c1, b, dy);
        });
        coef(n, g);
        group_blocks(a, n, g, [&](int64_t n_, int64_t c0, int64_t c1, int64_t b) {
          FASTDIFF_CPU_CALL(group_norm_grad_x, a, n_, c0, c1, b, dy);
        });
      }
    });
  } else {
    for_tasks(a, [&](int64_t n, int64_t c0, int64_t c1, int64_t b) {
      FASTDIFF_CPU_CALL(group_norm_grad_sums, a, n, c0, c1, b, nullptr);
    });
    for_groups(a, coef);
    for_tasks(a, [&](int64_t n, int64_t c0, int64_t c1, int64_t b) {
      FASTDIFF_CPU_CALL(group_norm_grad_x, a, n, c0, c1, b, nullptr);
    });
  }
  // N * C additions: on the calling thread, as one more parallel region costs more (and waits on
  // every thread's wake-up on a loaded machine).
  if (a.grad_weight || a.grad_bias) FASTDIFF_CPU_CALL(group_norm_grad_params, a, 0, a.channels);
  return {f.grad_x, f.grad_weight, f.grad_bias};
}

#undef FASTDIFF_GN_CALL

}  // namespace
}  // namespace fastdiff::cpu

TORCH_LIBRARY_IMPL(fastdiff, CPU, m) {
  m.impl("group_norm", &fastdiff::cpu::group_norm);
  m.impl("group_norm_backward", &fastdiff::cpu::group_norm_backward);
}
