// The host emulator of the attention kernels' warp primitives; see emulator.h.
#include "emulator.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <ucontext.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define FD_EMU_ASAN 1
#endif

namespace fastdiff::cuda::emu {
namespace {

[[noreturn]] void die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "emulator: ");
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, "\n");
  va_end(ap);
  std::abort();
}

enum Op : int { kLdmatrix = 1, kMma, kShfl, kWarpSync };

struct Warp {
  int arrived = 0;
  uint64_t gen = 0;
  int op[32];
  const void* ptr[32];
  uint32_t a[32][4];
  uint32_t b[32][2];
  float f[32];
};

struct Copy {
  void* dst;
  const void* src;
  bool fill;
  int group;
};

constexpr size_t kStackBytes = 1 << 20;

struct Block {
  int threads = 0;
  char* smem = nullptr;
  size_t smem_bytes = 0;
  const std::function<void(int)>* body = nullptr;
  std::vector<ucontext_t> ctx;
  std::vector<std::unique_ptr<char[]>> stacks;
  std::vector<char> done;
  ucontext_t main_ctx;
  int cur = -1;
  std::vector<Warp> warps;
  int block_arrived = 0;
  uint64_t block_gen = 0;
  uint64_t progress = 0;
  std::vector<std::vector<Copy>> pending;
  std::vector<int> committed;
#if defined(FD_EMU_ASAN)
  const void* main_bottom = nullptr;  // the scheduler's stack, learnt when a fiber first starts
  size_t main_size = 0;
#endif
};

Block* g_block = nullptr;
Counters g_counters;

Block& blk() {
  if (g_block == nullptr) die("a primitive was called outside run_block");
  return *g_block;
}

// Switches from the current fiber back to the scheduler.
void yield() {
  Block& b = blk();
#if defined(FD_EMU_ASAN)
  void* save = nullptr;
  __sanitizer_start_switch_fiber(&save, b.main_bottom, b.main_size);
  swapcontext(&b.ctx[b.cur], &b.main_ctx);
  __sanitizer_finish_switch_fiber(save, nullptr, nullptr);
#else
  swapcontext(&b.ctx[b.cur], &b.main_ctx);
#endif
}

void fiber_entry() {
  Block& b = blk();
#if defined(FD_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &b.main_bottom, &b.main_size);
#endif
  const int tid = b.cur;
  (*b.body)(tid);
  if (!b.pending[tid].empty()) die("thread %d exits with %zu cp.async copies never waited for", tid, b.pending[tid].size());
  b.done[tid] = 1;
  ++b.progress;
#if defined(FD_EMU_ASAN)
  __sanitizer_start_switch_fiber(nullptr, b.main_bottom, b.main_size);  // this fiber is done
#endif
}

void warp_barrier() {
  Block& b = blk();
  Warp& w = b.warps[b.cur / 32];
  const uint64_t gen = w.gen;
  if (++w.arrived == 32) {
    w.arrived = 0;
    ++w.gen;
    ++b.progress;
  } else {
    while (w.gen == gen) yield();
  }
}

int lane() { return blk().cur & 31; }
Warp& warp() { return blk().warps[blk().cur / 32]; }

// Publishes this lane's op tag, waits for the warp, and checks that every lane made the same call.
void gather(int op) {
  Warp& w = warp();
  w.op[lane()] = op;
  warp_barrier();
  for (int l = 0; l < 32; ++l) {
    if (w.op[l] != op) die("warp %d: lane %d called op %d while lane %d called op %d", blk().cur / 32, l, w.op[l], lane(), op);
  }
}

void check_smem(const void* p, size_t bytes, const char* what) {
  const Block& b = blk();
  const char* c = static_cast<const char*>(p);
  if (c < b.smem || c + bytes > b.smem + b.smem_bytes) {
    die("%s: address %p is outside shared memory [%p, %p) (thread %d)", what, p, static_cast<const void*>(b.smem),
        static_cast<const void*>(b.smem + b.smem_bytes), b.cur);
  }
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) die("%s: shared address %p not 16-byte aligned (thread %d)", what, p, b.cur);
}

float elem(bool bf16, uint32_t reg, int hi) {
  const auto bits = static_cast<uint16_t>(hi ? reg >> 16 : reg & 0xffffu);
  if (bf16) {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  __half_raw r;
  r.x = bits;
  return __half2float(__half(r));
}

void make_fiber(Block& b, int t) {
  b.stacks.emplace_back(new char[kStackBytes]);
  getcontext(&b.ctx[t]);
  b.ctx[t].uc_stack.ss_sp = b.stacks.back().get();
  b.ctx[t].uc_stack.ss_size = kStackBytes;
  b.ctx[t].uc_link = &b.main_ctx;
  makecontext(&b.ctx[t], fiber_entry, 0);
}

}  // namespace

Counters& counters() { return g_counters; }

void run_block(int threads, char* smem, size_t smem_bytes, const std::function<void(int)>& body) {
  if (threads <= 0 || threads % 32 != 0) die("block of %d threads", threads);
  Block b;
  b.threads = threads;
  b.smem = smem;
  b.smem_bytes = smem_bytes;
  b.body = &body;
  b.ctx.resize(threads);
  b.done.assign(threads, 0);
  b.warps.resize(threads / 32);
  b.pending.resize(threads);
  b.committed.assign(threads, 0);
  for (int t = 0; t < threads; ++t) make_fiber(b, t);
  g_block = &b;
  int idle_rounds = 0;
  for (;;) {
    bool all_done = true;
    const uint64_t before = b.progress;
    for (int t = 0; t < threads; ++t) {
      if (b.done[t]) continue;
      all_done = false;
      b.cur = t;
#if defined(FD_EMU_ASAN)
      void* save = nullptr;
      __sanitizer_start_switch_fiber(&save, b.stacks[t].get(), kStackBytes);
      swapcontext(&b.main_ctx, &b.ctx[t]);
      __sanitizer_finish_switch_fiber(save, nullptr, nullptr);
#else
      swapcontext(&b.main_ctx, &b.ctx[t]);
#endif
    }
    if (all_done) break;
    if (b.progress == before) {
      if (++idle_rounds >= 2) die("deadlock: every live thread waits at a barrier that cannot complete");
    } else {
      idle_rounds = 0;
    }
  }
  g_block = nullptr;
}

void ldmatrix(uint32_t* regs, int num, bool trans, const void* row_addr) {
  ++g_counters.ldmatrix;
  Warp& w = warp();
  const int l = lane();
  w.ptr[l] = row_addr;
  gather(kLdmatrix * 64 + num * 2 + (trans ? 1 : 0));
  for (int i = 0; i < 8 * num; ++i) check_smem(w.ptr[i], 16, "ldmatrix");
  const int g = l >> 2, t = l & 3;
  for (int i = 0; i < num; ++i) {
    uint16_t lo, hi;
    if (!trans) {
      const auto* row = static_cast<const uint16_t*>(w.ptr[8 * i + g]);
      lo = row[2 * t];
      hi = row[2 * t + 1];
    } else {
      lo = static_cast<const uint16_t*>(w.ptr[8 * i + 2 * t])[g];
      hi = static_cast<const uint16_t*>(w.ptr[8 * i + 2 * t + 1])[g];
    }
    regs[i] = static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
  }
  warp_barrier();  // every lane has read the slots before any lane reuses them
}

void mma(bool bf16, int k, float* acc, const uint32_t* a, const uint32_t* b) {
  ++g_counters.mma;
  Warp& w = warp();
  const int l = lane();
  const int na = k == 16 ? 4 : 2, nb = k == 16 ? 2 : 1;
  for (int i = 0; i < na; ++i) w.a[l][i] = a[i];
  for (int i = 0; i < nb; ++i) w.b[l][i] = b[i];
  gather(kMma * 64 + k * 2 + (bf16 ? 1 : 0));
  double A[16][16] = {}, B[16][8] = {};
  for (int L = 0; L < 32; ++L) {
    const int g = L >> 2, t = L & 3;
    for (int e = 0; e < 2; ++e) {
      A[g][2 * t + e] = elem(bf16, w.a[L][0], e);
      A[g + 8][2 * t + e] = elem(bf16, w.a[L][1], e);
      B[2 * t + e][g] = elem(bf16, w.b[L][0], e);
      if (k == 16) {
        A[g][2 * t + 8 + e] = elem(bf16, w.a[L][2], e);
        A[g + 8][2 * t + 8 + e] = elem(bf16, w.a[L][3], e);
        B[2 * t + 8 + e][g] = elem(bf16, w.b[L][1], e);
      }
    }
  }
  const int g = l >> 2, t = l & 3;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
    double s = acc[i];
    for (int kk = 0; kk < k; ++kk) s += A[row][kk] * B[kk][col];
    acc[i] = static_cast<float>(s);
  }
  warp_barrier();
}

float shfl_xor(float v, int lane_mask) {
  Warp& w = warp();
  const int l = lane();
  w.f[l] = v;
  gather(kShfl * 64 + lane_mask);
  const float r = w.f[l ^ lane_mask];
  warp_barrier();
  return r;
}

void warp_sync() {
  gather(kWarpSync * 64);
  warp_barrier();
}

void block_sync() {
  ++g_counters.block_barriers;
  Block& b = blk();
  const uint64_t gen = b.block_gen;
  if (++b.block_arrived == b.threads) {
    b.block_arrived = 0;
    ++b.block_gen;
    ++b.progress;
  } else {
    while (b.block_gen == gen) yield();
  }
}

void cp_async16(void* dst, const void* src, bool fill) {
  ++g_counters.cp_async;
  check_smem(dst, 16, "cp.async");
  if (fill && reinterpret_cast<uintptr_t>(src) % 16 != 0) die("cp.async: global address %p not 16-byte aligned", src);
  Block& b = blk();
  b.pending[b.cur].push_back(Copy{dst, src, fill, b.committed[b.cur]});
}

void cp_async_commit() {
  Block& b = blk();
  ++b.committed[b.cur];
}

void cp_async_wait(int newest_pending) {
  Block& b = blk();
  const int limit = b.committed[b.cur] - newest_pending;  // groups below this index must be complete
  auto& q = b.pending[b.cur];
  std::vector<Copy> keep;
  for (const Copy& c : q) {
    if (c.group < limit) {
      if (c.fill) {
        std::memcpy(c.dst, c.src, 16);
      } else {
        std::memset(c.dst, 0, 16);
      }
    } else {
      keep.push_back(c);
    }
  }
  q.swap(keep);
}

}  // namespace fastdiff::cuda::emu
