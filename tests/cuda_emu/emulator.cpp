// The host emulator of CUDA blocks and warp primitives; see emulator.h.
#include "emulator.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <ucontext.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
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
  // Collectives over a lane mask (__shfl_*_sync, __syncwarp): one rendezvous per distinct mask.
  struct MaskSync {
    unsigned arrived = 0;
    uint64_t gen = 0;
    int tag[32];
    uint64_t val[32];
  };
  std::map<unsigned, MaskSync> by_mask;
};

struct Copy {
  void* dst;
  const void* src;
  bool fill;
  int group;
};

constexpr size_t kStackBytes = 1 << 20;

// Fiber stacks, reused from block to block (a grid runs many blocks).
std::vector<std::unique_ptr<char[]>> g_stack_pool;

struct Block {
  int threads = 0;
  char* smem = nullptr;
  size_t smem_bytes = 0;
  const std::function<void(int)>* body = nullptr;
  std::vector<ucontext_t> ctx;
  std::vector<char*> stacks;
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
  if (g_stack_pool.size() <= static_cast<size_t>(t)) g_stack_pool.emplace_back(new char[kStackBytes]);
  b.stacks.push_back(g_stack_pool[t].get());
  getcontext(&b.ctx[t]);
  b.ctx[t].uc_stack.ss_sp = b.stacks.back();
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
      __sanitizer_start_switch_fiber(&save, b.stacks[t], kStackBytes);
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

// ---- plain __global__ kernels -------------------------------------------------------------------

namespace {

struct Grid {
  Dim3 grid, block, idx;
  char* smem = nullptr;
};
Grid g_grid;
Device g_device;
cudaError_t g_last_error = cudaSuccess;
std::map<const void*, int> g_max_dynamic_smem;  // cudaFuncAttributeMaxDynamicSharedMemorySize per kernel

// This lane arrives at s; returns once every lane of `mask` has.
void mask_arrive(Warp::MaskSync& s, unsigned mask) {
  const uint64_t gen = s.gen;
  s.arrived |= 1u << lane();
  if (s.arrived == mask) {
    s.arrived = 0;
    ++s.gen;
    ++blk().progress;
  } else {
    while (s.gen == gen) yield();
  }
}

// Waits until every lane of `mask` has arrived with the same tag; the values they published are then
// in s.val. Lanes outside the mask neither take part nor wait.
Warp::MaskSync& mask_rendezvous(unsigned mask, int tag, uint64_t bits) {
  Block& b = blk();
  const int l = lane();
  if (!(mask >> l & 1u)) die("warp %d: lane %d calls a collective with mask %08x that excludes it", b.cur / 32, l, mask);
  Warp::MaskSync& s = warp().by_mask[mask];
  s.tag[l] = tag;
  s.val[l] = bits;
  mask_arrive(s, mask);
  for (int k = 0; k < 32; ++k) {
    if ((mask >> k & 1u) && s.tag[k] != tag) {
      die("warp %d, mask %08x: lane %d made collective %d while lane %d made %d", b.cur / 32, mask, k, s.tag[k], l, tag);
    }
  }
  return s;
}

// The second half of a collective: no lane of `mask` publishes again before every lane has read.
void mask_release(unsigned mask) { mask_arrive(warp().by_mask[mask], mask); }

bool launch_ok(const void* kernel, Dim3 grid, Dim3 block, size_t dynamic_smem) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
      threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u ||
      grid.y > g_device.max_grid_y || grid.z > 65535) {
    g_last_error = cudaErrorInvalidConfiguration;
    return false;
  }
  const auto opt = g_max_dynamic_smem.find(kernel);
  const size_t limit = opt != g_max_dynamic_smem.end() ? static_cast<size_t>(opt->second) : 48 * 1024;
  if (dynamic_smem > limit) {
    g_last_error = cudaErrorInvalidValue;
    return false;
  }
  if (threads % 32 != 0) die("launch of a %llu-thread block: the emulator runs whole warps only", static_cast<unsigned long long>(threads));
  return true;
}

}  // namespace

Device& device() { return g_device; }

void launch_grid(const void* kernel, Dim3 grid, Dim3 block, size_t dynamic_smem, const std::function<void()>& thread) {
  if (!launch_ok(kernel, grid, block, dynamic_smem)) return;
  ++g_counters.launches;
  const int threads = static_cast<int>(block.x * block.y * block.z);
  constexpr size_t kGuard = 256;
  std::vector<unsigned char> buf(dynamic_smem + 2 * kGuard + 16);
  char* const smem = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(buf.data()) + kGuard + 15) / 16 * 16);
  g_grid = Grid{grid, block, Dim3{}, smem};
  const std::function<void(int)> body = [&](int) { thread(); };
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        ++g_counters.blocks;
        g_grid.idx = Dim3{x, y, z};
        std::memset(buf.data(), 0xFF, buf.size());  // shared memory starts poisoned (NaN in every format)
        run_block(threads, smem, dynamic_smem, body);
        for (size_t i = 0; i < buf.size(); ++i) {
          const unsigned char* p = buf.data() + i;
          const bool inside = p >= reinterpret_cast<unsigned char*>(smem) && p < reinterpret_cast<unsigned char*>(smem) + dynamic_smem;
          if (!inside && *p != 0xFF) die("block (%u, %u, %u) wrote outside its %zu bytes of dynamic shared memory", x, y, z, dynamic_smem);
        }
      }
    }
  }
  g_grid = Grid{};
}

Dim3 thread_idx() {
  const int t = blk().cur;
  const Dim3 bd = g_grid.block;
  return Dim3{t % bd.x, t / bd.x % bd.y, t / (bd.x * bd.y)};
}
Dim3 block_idx() { return g_grid.idx; }
Dim3 block_dim() { return g_grid.block; }
Dim3 grid_dim() { return g_grid.grid; }
char* dynamic_smem_base() { return g_grid.smem; }

uint64_t shfl_sync(unsigned mask, uint64_t bits, int kind, int arg, int width) {
  ++g_counters.shuffles;
  Warp::MaskSync& s = mask_rendezvous(mask, kShfl * 64 + kind * 32 + (width & 31), bits);
  const int l = lane(), seg = l & ~(width - 1);
  int src = kind == 0 ? l ^ arg : l + arg;
  if (src < seg || src >= seg + width) src = l;
  if (!(mask >> src & 1u)) die("warp %d: lane %d shuffles from lane %d, outside mask %08x", blk().cur / 32, l, src, mask);
  const uint64_t r = s.val[src];
  mask_release(mask);
  return r;
}

void warp_sync_mask(unsigned mask) {
  mask_rendezvous(mask, kWarpSync * 64, 0);
}

}  // namespace fastdiff::cuda::emu

// ---- the CUDA runtime calls the launchers make ---------------------------------------------------
cudaError_t cudaGetLastError() {
  const cudaError_t e = fastdiff::cuda::emu::g_last_error;
  fastdiff::cuda::emu::g_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  const auto& d = fastdiff::cuda::emu::g_device;
  if (device != 0) return cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = d.sm_count; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = d.smem_optin; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 * 1024; return cudaSuccess;
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value < 0 || value > fastdiff::cuda::emu::g_device.smem_optin) return cudaErrorInvalidValue;
  fastdiff::cuda::emu::g_max_dynamic_smem[func] = value;
  return cudaSuccess;
}

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    default: return "cudaError (other)";
  }
}
