// The adaln kernels' row machinery (see the overview in adaln.cu): launch constants, row groups
// (a block or a power-of-two sub-warp per row), the chunk of tokens a block works on, and each
// thread's columns of a row.
#pragma once

#include <cstdint>

#include "cuda/adaln.h"
#include "cuda/adaln_device.cuh"

namespace fastdiff::cuda {
// adaln.cu's anonymous namespace: the adaln_*.cuh headers are included by adaln.cu alone (and by
// its host-emulator test), so the kernels keep internal linkage.
namespace {

using namespace adaln_detail;

constexpr int kMaxRowThreads = 512;       // threads per row (block mode); also the launch bound
constexpr int kMaxWarps = kMaxRowThreads / 32;
constexpr int kWarpModeThreads = 128;     // block size when rows go to sub-warps
constexpr int kMaxElems = 16;             // row elements per thread, block mode, vector accesses
constexpr int kMaxElemsScalar = 4;        // idem, scalar accesses (each slot costs its own addresses)
constexpr int kMaxElemsWarp = 8;          // row elements per lane, sub-warp mode (rows up to 256 long)
constexpr int kDefaultSmem = 48 * 1024;   // shared memory per block beyond this needs an opt-in
constexpr int kSmemReserve = 1024;        // room for a kernel's static shared memory (256 bytes here)

// Slots of the backward's partial sums (those a call needs are numbered densely, in this order).
enum Slot : int { kShift = 0, kScale, kWeight, kBias, kGate, kNumSlots };

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
constexpr int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
inline int pow2_ceil(int64_t v) {
  int p = 1;
  while (p < v) p <<= 1;
  return p;
}

// ---------------------------------------------------------------------------------------------------
// Row groups and chunks
// ---------------------------------------------------------------------------------------------------

// Which rows a block works on: tokens [n0, n1) of sample b.
struct Chunks {
  int64_t tokens;  // N
  int64_t rows;    // tokens per chunk
  int64_t count;   // chunks per sample
};

struct RowRange {
  int64_t b, n0, n1;
};

__device__ __forceinline__ RowRange block_rows(const Chunks& c) {
  RowRange r;
  r.b = blockIdx.x / c.count;
  r.n0 = (blockIdx.x % c.count) * c.rows;
  r.n1 = r.n0 + c.rows < c.tokens ? r.n0 + c.rows : c.tokens;
  return r;
}

// The threads that share one row: the whole block (kBlock), or an aligned power-of-two sub-warp.
struct Group {
  int lane;       // thread within the group
  int size;       // threads per row
  int index;      // group within the block
  int count;      // groups per block
  unsigned mask;  // the group's lanes within its warp
};

template <bool kBlock>
__device__ __forceinline__ Group make_group(int size) {
  Group g;
  if constexpr (kBlock) {
    g.lane = threadIdx.x, g.size = blockDim.x, g.index = 0, g.count = 1, g.mask = kFullMask;
  } else {
    g.lane = threadIdx.x & (size - 1), g.size = size;
    g.index = threadIdx.x / size, g.count = blockDim.x / size;
    const int first = (threadIdx.x & 31) & ~(size - 1);
    g.mask = size == 32 ? kFullMask : ((1u << size) - 1u) << first;
  }
  return g;
}

// Sum over the row group; the same bits on every thread of the group.
template <bool kBlock, int NV>
__device__ __forceinline__ void group_sum(float (&v)[NV], const Group& g, float (*bufs)[kMaxWarps][NV], int& phase) {
  if constexpr (kBlock) {
    block_sum<NV>(v, bufs[phase & 1]);
    ++phase;
  } else {
    subwarp_sum<NV>(v, g.size, g.mask);
  }
}

template <typename T>
__device__ __forceinline__ const T* cptr(const void* p) {
  return static_cast<const T*>(p);
}
template <typename T>
__device__ __forceinline__ T* mptr(void* p) {
  return static_cast<T*>(p);
}

// Threads per block of the gated_residual kernels.
constexpr int kResidualThreads = 256;

// ---------------------------------------------------------------------------------------------------
// A thread's columns of a row
// ---------------------------------------------------------------------------------------------------

// Column (element index) of slot k of this thread, or -1 past the end of the row. 32-bit: D < 2^30.
template <int V>
__device__ __forceinline__ int slot_col(const Group& g, int k, int dv) {
  const int vi = g.lane + k * g.size;
  return vi < dv ? vi * V : -1;
}

template <int V>
__device__ __forceinline__ void fill(float (&v)[V], float x) {
#pragma unroll
  for (int i = 0; i < V; ++i) v[i] = x;
}

// This thread's columns of one row (zeros past the end of the row).
template <typename T, int V, int K>
__device__ __forceinline__ void load_row(const T* __restrict__ row, const Group& g, int dv, float (&out)[K][V]) {
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int j = slot_col<V>(g, k, dv);
    if (j >= 0) {
      load<T, V>(row + j, out[k]);
    } else {
      fill<V>(out[k], 0.0f);
    }
  }
}

// weight / bias at column j, or 1 / 0 when absent.
template <typename T, int V>
__device__ __forceinline__ void load_param(const void* p, int j, float absent, float (&out)[V]) {
  if (p) {
    load<T, V>(cptr<T>(p) + j, out);
  } else {
    fill<V>(out, absent);
  }
}

// aw = (1 + scale) * weight and cs = (1 + scale) * bias + shift over this thread's columns, for the

}  // namespace
}  // namespace fastdiff::cuda
