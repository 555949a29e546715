// CUDA kernels of the adaln family (semantics: csrc/ops.cpp; launchers: cuda/adaln.h).
//
// Rows. A row of x (length D) is normalised by one "row group" of threads that holds it in registers:
// K slots of V elements per thread (one 16-byte access per slot when D and every pointer allow, else
// V = 1), at most 16 elements per thread (4 with scalar accesses). Small rows (D <= 256; 128 with
// scalar accesses) go to a power-of-two sub-warp of up to 32 lanes (several rows per warp when D is tiny) and sum with
// shuffles; larger rows take a whole block of up to 512 threads and sum through shared memory. The
// statistics are two-pass in float32 over the registers (sum, then sum of squared deviations), so x is
// read from global memory once. Rows that do not fit (D > 8192 with vector accesses, D > 2048 with
// scalar ones) go to a streaming kernel (one block per row, the row re-read from global memory in
// each pass) that serves any D.
//
// Chunks. Every block works on `rows` consecutive tokens of one sample, so per-sample modulation
// (shift, scale, gate) is loaded once per row group and kept in registers for all its rows.
//
// Deterministic sums. The backward's sums over tokens (per-sample gradients) and over all rows (weight,
// bias) never use atomics: each row group adds its rows' contributions to its own float32 accumulators
// in shared memory (each thread only ever touches its own columns), the groups of a block are then
// added in group order into the block's slice of a workspace, laid out [sample][chunk][slot][D], and a
// second kernel adds the chunks in a fixed order. The chunking depends on the shape only, so two runs
// (on any GPU) give the same bits.
#include <algorithm>
#include <cstdint>

#include "cuda/adaln.h"
#include "cuda/adaln_device.cuh"

namespace fastdiff::cuda {
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

// ---------------------------------------------------------------------------------------------------
// Forward: adaln_modulate and gated_residual_adaln
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
// given scale and shift rows.
template <typename T, int V, int K>
__device__ __forceinline__ void load_affine(const AdalnForwardArgs& a, const T* __restrict__ scale_row,
                                            const T* __restrict__ shift_row, const Group& g, int dv,
                                            float (&aw)[K][V], float (&cs)[K][V]) {
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int j = slot_col<V>(g, k, dv);
    if (j >= 0) {
      float sc[V], sh[V], w[V], bb[V];
      load<T, V>(scale_row + j, sc);
      load<T, V>(shift_row + j, sh);
      load_param<T, V>(a.weight, j, 1.0f, w);
      load_param<T, V>(a.bias, j, 0.0f, bb);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float a1 = 1.0f + sc[i];
        aw[k][i] = a1 * w[i];
        cs[k][i] = a1 * bb[i] + sh[i];
      }
    } else {
      fill<V>(aw[k], 0.0f);
      fill<V>(cs[k], 0.0f);
    }
  }
}

// The bounds carry an explicit minimum of one block per SM: without it ptxas trades a few spills for
// occupancy (at 64 registers) in some instantiations.
template <typename T, int V, int K, bool kBlock>
__global__ void __launch_bounds__(kBlock ? kMaxRowThreads : kWarpModeThreads, 1)
    adaln_forward_kernel(const AdalnForwardArgs a, const Chunks ch, int group_size) {
  __shared__ float red[2][kMaxWarps][1];
  int phase = 0;
  const Group g = make_group<kBlock>(group_size);
  const RowRange rr = block_rows(ch);
  const int64_t d = a.dim;
  const int dv = static_cast<int>(d / V);
  const float inv_d = d ? 1.0f / static_cast<float>(d) : 0.0f;
  const bool fused = a.h != nullptr;
  const bool affine_per_token = a.scale_per_token || a.shift_per_token;
  const T* const scale = cptr<T>(a.scale);
  const T* const shift = cptr<T>(a.shift);
  const T* const gate = cptr<T>(a.gate);

  float aw[K][V], cs[K][V], gt[K][V];
  if (!affine_per_token) load_affine<T, V, K>(a, scale + rr.b * d, shift + rr.b * d, g, dv, aw, cs);
  if (fused && !a.gate_per_token) load_row<T, V, K>(gate + rr.b * d, g, dv, gt);

  for (int64_t n = rr.n0 + g.index; n < rr.n1; n += g.count) {
    const int64_t r = rr.b * ch.tokens + n, off = r * d;
    if (affine_per_token)
      load_affine<T, V, K>(a, scale + (a.scale_per_token ? off : rr.b * d), shift + (a.shift_per_token ? off : rr.b * d),
                           g, dv, aw, cs);
    float v[K][V];
    load_row<T, V, K>(cptr<T>(a.x) + off, g, dv, v);
    if (fused) {  // the row is x + gate * h as stored in T: the statistics (and the backward) use x_out
      if (a.gate_per_token) load_row<T, V, K>(gate + off, g, dv, gt);
      T* const xo = mptr<T>(a.x_out) + off;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int j = slot_col<V>(g, k, dv);
        if (j >= 0) {
          float hv[V];
          load<T, V>(cptr<T>(a.h) + off + j, hv);
#pragma unroll
          for (int i = 0; i < V; ++i) v[k][i] = to_f(from_f<T>(v[k][i] + gt[k][i] * hv[i]));
          store<T, V>(xo + j, v[k]);
        }
      }
    }

    float mean = 0.0f;
    if (!a.rms) {
      float s[1] = {0.0f};
#pragma unroll
      for (int k = 0; k < K; ++k)
#pragma unroll
        for (int i = 0; i < V; ++i) s[0] += v[k][i];  // columns past the row hold 0
      group_sum<kBlock, 1>(s, g, red, phase);
      mean = s[0] * inv_d;
    }
    float q[1] = {0.0f};
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (slot_col<V>(g, k, dv) >= 0) {
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const float dev = v[k][i] - mean;
          q[0] += dev * dev;
        }
      }
    }
    group_sum<kBlock, 1>(q, g, red, phase);
    const float rstd = 1.0f / sqrtf(q[0] * inv_d + a.eps);
    if (g.lane == 0) a.mean[r] = mean, a.rstd[r] = rstd;

    T* const out = mptr<T>(a.out) + off;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = slot_col<V>(g, k, dv);
      if (j >= 0) {
        float o[V];
#pragma unroll
        for (int i = 0; i < V; ++i) o[i] = (v[k][i] - mean) * rstd * aw[k][i] + cs[k][i];
        store<T, V>(out + j, o);
      }
    }
  }
}

// Any D: one block per row, the row re-read from global memory in each of three passes.
template <typename T>
__global__ void __launch_bounds__(kMaxRowThreads) adaln_forward_streaming_kernel(const AdalnForwardArgs a,
                                                                                 const Chunks ch) {
  __shared__ float red[2][kMaxWarps][1];
  int phase = 0;
  const RowRange rr = block_rows(ch);
  const int64_t d = a.dim;
  const float inv_d = d ? 1.0f / static_cast<float>(d) : 0.0f;
  const bool fused = a.h != nullptr;
  for (int64_t n = rr.n0; n < rr.n1; ++n) {
    const int64_t r = rr.b * ch.tokens + n;
    const int64_t gr = a.gate_per_token ? r : rr.b;
    // The fused row is x + gate * h as stored in T: the statistics (and the backward) use x_out.
    const auto value = [&](int64_t j) {
      float v = to_f(cptr<T>(a.x)[r * d + j]);
      if (fused) v = to_f(from_f<T>(v + to_f(cptr<T>(a.gate)[gr * d + j]) * to_f(cptr<T>(a.h)[r * d + j])));
      return v;
    };
    float mean = 0.0f;
    if (!a.rms) {
      float s[1] = {0.0f};
      for (int64_t j = threadIdx.x; j < d; j += blockDim.x) s[0] += value(j);
      block_sum<1>(s, red[phase++ & 1]);
      mean = s[0] * inv_d;
    }
    float q[1] = {0.0f};
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const float v = value(j);
      if (fused) mptr<T>(a.x_out)[r * d + j] = from_f<T>(v);
      q[0] += (v - mean) * (v - mean);
    }
    block_sum<1>(q, red[phase++ & 1]);
    const float rstd = 1.0f / sqrtf(q[0] * inv_d + a.eps);
    if (threadIdx.x == 0) a.mean[r] = mean, a.rstd[r] = rstd;
    const int64_t sr = a.scale_per_token ? r : rr.b, hr = a.shift_per_token ? r : rr.b;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const float a1 = 1.0f + to_f(cptr<T>(a.scale)[sr * d + j]);
      const float w = a.weight ? to_f(cptr<T>(a.weight)[j]) : 1.0f;
      const float bb = a.bias ? to_f(cptr<T>(a.bias)[j]) : 0.0f;
      const float c = a1 * bb + to_f(cptr<T>(a.shift)[hr * d + j]);
      mptr<T>(a.out)[r * d + j] = from_f<T>((value(j) - mean) * rstd * (a1 * w) + c);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Backward: adaln_modulate_backward and gated_residual_adaln_backward
// ---------------------------------------------------------------------------------------------------

// Where each kind of token sum goes in a block's partial slice (-1: not summed in this call).
struct SlotMap {
  int slot[kNumSlots];
  int count;
};

template <typename T, int V, int K, bool kBlock>
__global__ void __launch_bounds__(kBlock ? kMaxRowThreads : kWarpModeThreads, 1)
    adaln_backward_kernel(const AdalnBackwardArgs a, const Chunks ch, const SlotMap sm, int group_size,
                          float* __restrict__ workspace) {
  extern __shared__ float4 acc_smem4[];  // float4: aligned for the vector accesses
  float* const acc_smem = reinterpret_cast<float*>(acc_smem4);
  __shared__ float red[2][kMaxWarps][2];
  int phase = 0;
  const Group g = make_group<kBlock>(group_size);
  const RowRange rr = block_rows(ch);
  const int64_t d = a.dim;
  const int dv = static_cast<int>(d / V);
  const float inv_d = d ? 1.0f / static_cast<float>(d) : 0.0f;
  const bool fused = a.h != nullptr;
  const int s_shift = sm.slot[kShift], s_scale = sm.slot[kScale], s_weight = sm.slot[kWeight];
  const int s_bias = sm.slot[kBias], s_gate = sm.slot[kGate];
  // This group's accumulators: sm.count arrays of D floats; slot s of column j at acc[s * d + j].
  float* const acc = acc_smem + static_cast<int64_t>(g.index) * sm.count * d;

#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int j = slot_col<V>(g, k, dv);
    if (j >= 0) {
      float z[V];
      fill<V>(z, 0.0f);
      for (int s = 0; s < sm.count; ++s) store_f32<V>(acc + s * d + j, z);
    }
  }

  const T* const scale = cptr<T>(a.scale);
  const T* const gate = cptr<T>(a.gate);
  float a1[K][V], gt[K][V];  // 1 + scale and gate, loaded once when per sample
  const auto load_a1 = [&](const T* row) {
    load_row<T, V, K>(row, g, dv, a1);
#pragma unroll
    for (int k = 0; k < K; ++k)
#pragma unroll
      for (int i = 0; i < V; ++i) a1[k][i] += 1.0f;
  };
  if (!a.scale_per_token) load_a1(scale + rr.b * d);
  if (fused && !a.gate_per_token) load_row<T, V, K>(gate + rr.b * d, g, dv, gt);

  for (int64_t n = rr.n0 + g.index; n < rr.n1; n += g.count) {
    const int64_t r = rr.b * ch.tokens + n, off = r * d;
    if (a.scale_per_token) load_a1(scale + off);
    if (fused && a.gate_per_token) load_row<T, V, K>(gate + off, g, dv, gt);
    const float mean = a.mean[r], rstd = a.rstd[r];
    float xh[K][V], gv[K][V];
    load_row<T, V, K>(cptr<T>(a.x) + off, g, dv, xh);
    load_row<T, V, K>(cptr<T>(a.grad_out) + off, g, dv, gv);

    // xhat, and the row sums of gx = g * (1 + scale) * weight and of gx * xhat.
    float s[2] = {0.0f, 0.0f};
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = slot_col<V>(g, k, dv);
      if (j >= 0) {
        float w[V];
        load_param<T, V>(a.weight, j, 1.0f, w);
#pragma unroll
        for (int i = 0; i < V; ++i) {
          xh[k][i] = (xh[k][i] - mean) * rstd;
          const float gx = gv[k][i] * (a1[k][i] * w[i]);
          s[0] += gx;
          s[1] += gx * xh[k][i];
        }
      }
    }
    group_sum<kBlock, 2>(s, g, red, phase);
    const float m1 = a.rms ? 0.0f : s[0] * inv_d, m2 = s[1] * inv_d;

#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = slot_col<V>(g, k, dv);
      if (j < 0) continue;
      const int64_t e = off + j;
      float w[V], bb[V], dx[V], u[V];
      load_param<T, V>(a.weight, j, 1.0f, w);
      load_param<T, V>(a.bias, j, 0.0f, bb);
#pragma unroll
      for (int i = 0; i < V; ++i) dx[i] = rstd * (gv[k][i] * (a1[k][i] * w[i]) - m1 - xh[k][i] * m2);
      if (fused) {  // total = grad_x_out + dx flows to x, h and gate
        float t[V], hv[V];
        load<T, V>(cptr<T>(a.grad_x_out) + e, t);
        load<T, V>(cptr<T>(a.h) + e, hv);
#pragma unroll
        for (int i = 0; i < V; ++i) t[i] += dx[i];
        store<T, V>(mptr<T>(a.grad_x) + e, t);
#pragma unroll
        for (int i = 0; i < V; ++i) u[i] = t[i] * gt[k][i];
        store<T, V>(mptr<T>(a.grad_h) + e, u);
#pragma unroll
        for (int i = 0; i < V; ++i) u[i] = t[i] * hv[i];
        if (s_gate >= 0) {
          add_f32<V>(acc + s_gate * d + j, u);
        } else {
          store<T, V>(mptr<T>(a.grad_gate) + e, u);
        }
      } else {
        store<T, V>(mptr<T>(a.grad_x) + e, dx);
      }
      if (s_shift >= 0) {
        add_f32<V>(acc + s_shift * d + j, gv[k]);
      } else {
        store<T, V>(mptr<T>(a.grad_shift) + e, gv[k]);
      }
#pragma unroll
      for (int i = 0; i < V; ++i) u[i] = gv[k][i] * (xh[k][i] * w[i] + bb[i]);  // g * nrm
      if (s_scale >= 0) {
        add_f32<V>(acc + s_scale * d + j, u);
      } else {
        store<T, V>(mptr<T>(a.grad_scale) + e, u);
      }
      if (s_weight >= 0) {
#pragma unroll
        for (int i = 0; i < V; ++i) u[i] = gv[k][i] * a1[k][i] * xh[k][i];
        add_f32<V>(acc + s_weight * d + j, u);
      }
      if (s_bias >= 0) {
#pragma unroll
        for (int i = 0; i < V; ++i) u[i] = gv[k][i] * a1[k][i];
        add_f32<V>(acc + s_bias * d + j, u);
      }
    }
  }

  // The block's partial sums: its groups' accumulators added in group order.
  if (sm.count == 0) return;
  float* const slice = workspace + static_cast<int64_t>(blockIdx.x) * sm.count * d;
  if constexpr (kBlock) {
    // One group: each thread copies the columns it accumulated (no barrier needed).
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = slot_col<V>(g, k, dv);
      if (j >= 0) {
        for (int s = 0; s < sm.count; ++s) {
          float v[V];
          load_f32<V>(acc + s * d + j, v);
          store_f32<V>(slice + s * d + j, v);
        }
      }
    }
  } else {
    __syncthreads();
    const int64_t len = sm.count * d;
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
      float t = acc_smem[i];
      for (int grp = 1; grp < g.count; ++grp) t += acc_smem[grp * len + i];
      slice[i] = t;
    }
  }
}

// Any D: one block per row, two passes over global memory, accumulators in the block's workspace slice.
template <typename T>
__global__ void __launch_bounds__(kMaxRowThreads) adaln_backward_streaming_kernel(const AdalnBackwardArgs a,
                                                                                  const Chunks ch, const SlotMap sm,
                                                                                  float* __restrict__ workspace) {
  __shared__ float red[2][kMaxWarps][2];
  int phase = 0;
  const RowRange rr = block_rows(ch);
  const int64_t d = a.dim;
  const float inv_d = d ? 1.0f / static_cast<float>(d) : 0.0f;
  const bool fused = a.h != nullptr;
  float* acc = workspace + static_cast<int64_t>(blockIdx.x) * sm.count * d;
  for (int s = 0; s < sm.count; ++s)
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) acc[s * d + j] = 0.0f;
  const auto add = [&](int kind, int64_t j, float v) {
    acc[sm.slot[kind] * d + j] += v;
  };

  for (int64_t n = rr.n0; n < rr.n1; ++n) {
    const int64_t r = rr.b * ch.tokens + n;
    const int64_t sr = a.scale_per_token ? r : rr.b, gr = a.gate_per_token ? r : rr.b;
    const float mean = a.mean[r], rstd = a.rstd[r];
    const auto weight = [&](int64_t j) { return a.weight ? to_f(cptr<T>(a.weight)[j]) : 1.0f; };
    const auto a1 = [&](int64_t j) { return 1.0f + to_f(cptr<T>(a.scale)[sr * d + j]); };
    float s[2] = {0.0f, 0.0f};
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const float xh = (to_f(cptr<T>(a.x)[r * d + j]) - mean) * rstd;
      const float gx = to_f(cptr<T>(a.grad_out)[r * d + j]) * (a1(j) * weight(j));
      s[0] += gx;
      s[1] += gx * xh;
    }
    block_sum<2>(s, red[phase++ & 1]);
    const float m1 = a.rms ? 0.0f : s[0] * inv_d, m2 = s[1] * inv_d;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const int64_t off = r * d + j;
      const float xh = (to_f(cptr<T>(a.x)[off]) - mean) * rstd;
      const float gv = to_f(cptr<T>(a.grad_out)[off]), sc1 = a1(j), w = weight(j);
      const float bb = a.bias ? to_f(cptr<T>(a.bias)[j]) : 0.0f;
      const float dx = rstd * (gv * (sc1 * w) - m1 - xh * m2);
      if (fused) {
        const float t = to_f(cptr<T>(a.grad_x_out)[off]) + dx;
        mptr<T>(a.grad_x)[off] = from_f<T>(t);
        mptr<T>(a.grad_h)[off] = from_f<T>(t * to_f(cptr<T>(a.gate)[gr * d + j]));
        const float gg = t * to_f(cptr<T>(a.h)[off]);
        if (sm.slot[kGate] >= 0) {
          add(kGate, j, gg);
        } else {
          mptr<T>(a.grad_gate)[off] = from_f<T>(gg);
        }
      } else {
        mptr<T>(a.grad_x)[off] = from_f<T>(dx);
      }
      if (sm.slot[kShift] >= 0) {
        add(kShift, j, gv);
      } else {
        mptr<T>(a.grad_shift)[off] = from_f<T>(gv);
      }
      const float gs = gv * (xh * w + bb);
      if (sm.slot[kScale] >= 0) {
        add(kScale, j, gs);
      } else {
        mptr<T>(a.grad_scale)[off] = from_f<T>(gs);
      }
      if (sm.slot[kWeight] >= 0) add(kWeight, j, gv * sc1 * xh);
      if (sm.slot[kBias] >= 0) add(kBias, j, gv * sc1);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// The second pass of every token sum: out = sum of the partial slices, in a fixed order
// ---------------------------------------------------------------------------------------------------

struct SumTarget {
  void* out;         // (B, D) per sample, or (D,) over all samples
  int slot;
  int over_samples;  // 1: one (D,) sum over every sample's chunks
};

struct SumArgs {
  const float* partial;  // [batch * chunks][slots][D]
  int64_t batch, chunks, dim;
  int slots;
  SumTarget target[kNumSlots];
};

constexpr int kSumCols = 32, kSumLanes = 8;

// Block (32, 8): 32 columns; lane y adds terms y, y + 8, ... in order, then lane 0 adds the 8 lane
// totals in order. grid (column tiles, samples, targets).
template <typename T>
__global__ void __launch_bounds__(kSumCols* kSumLanes) sum_partials_kernel(const SumArgs a) {
  __shared__ float lanes[kSumLanes][kSumCols + 1];
  SumTarget t;  // a switch, not a[blockIdx.z]: indexing the parameter array would copy it to local memory
  switch (blockIdx.z) {
    case 0: t = a.target[0]; break;
    case 1: t = a.target[1]; break;
    case 2: t = a.target[2]; break;
    case 3: t = a.target[3]; break;
    default: t = a.target[4]; break;
  }
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kSumCols + threadIdx.x;
  const int64_t samples = t.over_samples ? 1 : a.batch;
  for (int64_t b = blockIdx.y; b < samples; b += gridDim.y) {
    const int64_t t0 = t.over_samples ? 0 : b * a.chunks;
    const int64_t t1 = t.over_samples ? a.batch * a.chunks : t0 + a.chunks;
    float s = 0.0f;
    if (j < a.dim)
      for (int64_t i = t0 + threadIdx.y; i < t1; i += kSumLanes) s += a.partial[(i * a.slots + t.slot) * a.dim + j];
    lanes[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && j < a.dim) {
      float total = lanes[0][threadIdx.x];
#pragma unroll
      for (int y = 1; y < kSumLanes; ++y) total += lanes[y][threadIdx.x];
      mptr<T>(t.out)[b * a.dim + j] = from_f<T>(total);
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------------------
// gated_residual: 2-D tiles, threadIdx.x over column vectors, threadIdx.y over the tokens of a chunk
// ---------------------------------------------------------------------------------------------------

constexpr int kResidualThreads = 256;

template <typename T, int V>
__global__ void __launch_bounds__(kResidualThreads) gated_residual_kernel(const GatedResidualArgs a, const Chunks ch) {
  const RowRange rr = block_rows(ch);
  const int64_t d = a.dim;
  const int64_t vi = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (vi >= d / V) return;
  const int64_t j = vi * V;
  float gt[V];
  if (!a.gate_per_token) load<T, V>(cptr<T>(a.gate) + rr.b * d + j, gt);
  for (int64_t n = rr.n0 + threadIdx.y; n < rr.n1; n += blockDim.y) {
    const int64_t off = (rr.b * ch.tokens + n) * d + j;
    float x[V], h[V];
    if (a.gate_per_token) load<T, V>(cptr<T>(a.gate) + off, gt);
    load<T, V>(cptr<T>(a.x) + off, x);
    load<T, V>(cptr<T>(a.h) + off, h);
#pragma unroll
    for (int i = 0; i < V; ++i) x[i] += gt[i] * h[i];
    store<T, V>(mptr<T>(a.out) + off, x);
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kResidualThreads)
    gated_residual_backward_kernel(const GatedResidualArgs a, const Chunks ch, float* __restrict__ workspace) {
  __shared__ float4 lanes4[kResidualThreads * V / 4 + 1];
  float* lanes = reinterpret_cast<float*>(lanes4);
  const RowRange rr = block_rows(ch);
  const int64_t d = a.dim;
  const int64_t vi = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const bool valid = vi < d / V;
  const int64_t j = vi * V;
  float gt[V], acc[V];
#pragma unroll
  for (int i = 0; i < V; ++i) acc[i] = 0.0f;
  if (valid && !a.gate_per_token) load<T, V>(cptr<T>(a.gate) + rr.b * d + j, gt);
  if (valid) {
    for (int64_t n = rr.n0 + threadIdx.y; n < rr.n1; n += blockDim.y) {
      const int64_t off = (rr.b * ch.tokens + n) * d + j;
      float g[V], h[V], o[V];
      if (a.gate_per_token) load<T, V>(cptr<T>(a.gate) + off, gt);
      load<T, V>(cptr<T>(a.grad_out) + off, g);
      load<T, V>(cptr<T>(a.h) + off, h);
#pragma unroll
      for (int i = 0; i < V; ++i) o[i] = g[i] * gt[i];
      store<T, V>(mptr<T>(a.grad_h) + off, o);
#pragma unroll
      for (int i = 0; i < V; ++i) o[i] = g[i] * h[i];
      if (a.gate_per_token) {
        store<T, V>(mptr<T>(a.grad_gate) + off, o);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] += o[i];
      }
    }
  }
  if (a.gate_per_token) return;  // uniform over the block
  // The block's partial sum of each column: its token lanes added in lane order.
  store_f32<V>(lanes + (threadIdx.y * blockDim.x + threadIdx.x) * V, acc);
  __syncthreads();
  if (threadIdx.y == 0 && valid) {
    for (int y = 1; y < static_cast<int>(blockDim.y); ++y) {
      float o[V];
      load_f32<V>(lanes + (y * blockDim.x + threadIdx.x) * V, o);
#pragma unroll
      for (int i = 0; i < V; ++i) acc[i] += o[i];
    }
    store_f32<V>(workspace + static_cast<int64_t>(blockIdx.x) * d + j, acc);
  }
}

// ---------------------------------------------------------------------------------------------------
// Host side: plans and dispatch
// ---------------------------------------------------------------------------------------------------

struct RowPlan {
  int vec;          // elements per access (1: scalar)
  int k;            // accesses (slots) per thread
  int group;        // threads per row
  bool block_rows;  // a block per row (else a sub-warp)
  bool streaming;   // the row does not fit in registers
};

RowPlan plan_rows(int64_t d, int elem_bytes, bool vec_ok) {
  RowPlan p{};
  p.vec = vec_ok ? 16 / elem_bytes : 1;
  const int64_t dv = d / p.vec;
  const int max_elems_warp = p.vec == 1 ? kMaxElemsScalar : kMaxElemsWarp;
  if (dv <= 32 * (max_elems_warp / p.vec)) {  // sub-warp mode
    if (dv <= 32) {
      p.k = 1, p.group = pow2_ceil(std::max<int64_t>(dv, 1));
    } else {
      p.k = pow2_ceil(ceil_div(dv, 32)), p.group = 32;
    }
    return p;
  }
  p.block_rows = true;
  for (int k = 1; k * p.vec <= (p.vec == 1 ? kMaxElemsScalar : kMaxElems); k *= 2) {
    if (ceil_div(dv, k) <= kMaxRowThreads) {
      p.k = k, p.group = static_cast<int>(round_up(ceil_div(dv, k), 32));
      return p;
    }
  }
  p.streaming = true, p.vec = 1, p.k = 1, p.group = kMaxRowThreads;
  return p;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename... P>
bool all_aligned16(const P*... ptrs) {
  return ((ptrs == nullptr || aligned16(ptrs)) && ...);
}

inline int elem_bytes(DType t) { return t == DType::f32 ? 4 : 2; }

// Tokens per chunk of adaln's backward: a function of the shape only. At least 16
// tokens, so that the partial sums (slots * D floats per block) stay small next to the rows a block
// reads; at most ~1024 chunks over the whole batch.
int64_t backward_rows_per_chunk(int64_t batch, int64_t tokens) {
  const int64_t rows = std::max<int64_t>(16, ceil_div(batch * tokens, 1024));
  return std::max<int64_t>(1, std::min(rows, tokens));
}

Chunks make_chunks(int64_t tokens, int64_t rows) {
  Chunks c;
  c.tokens = tokens, c.rows = std::max<int64_t>(rows, 1);
  c.count = ceil_div(tokens, c.rows);
  return c;
}

cudaError_t device_attrs(int* sms, int* smem_optin) {
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess && sms) e = cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev);
  if (e == cudaSuccess && smem_optin) e = cudaDeviceGetAttribute(smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  return e;
}

constexpr int64_t kMaxGridX = 2147483647;

// Calls Launch<T, V, K, kBlock>::run(plan, args...) for the plan's configuration. Configurations
// beyond the per-thread element limits are never planned and never instantiated.
template <typename T, int V, int K, bool kBlock, template <typename, int, int, bool> class Launch, typename... Args>
cudaError_t run_config(const RowPlan& p, Args&... args) {
  if constexpr (V * K <= (V == 1 ? kMaxElemsScalar : kBlock ? kMaxElems : kMaxElemsWarp)) {
    return Launch<T, V, K, kBlock>::run(p, args...);
  } else {
    return cudaErrorInvalidConfiguration;
  }
}

template <typename T, int V, template <typename, int, int, bool> class Launch, typename... Args>
cudaError_t dispatch_k(const RowPlan& p, Args&... args) {
  switch (p.k * 2 + p.block_rows) {
    case 2: return run_config<T, V, 1, false, Launch>(p, args...);
    case 4: return run_config<T, V, 2, false, Launch>(p, args...);
    case 8: return run_config<T, V, 4, false, Launch>(p, args...);
    case 3: return run_config<T, V, 1, true, Launch>(p, args...);
    case 5: return run_config<T, V, 2, true, Launch>(p, args...);
    case 9: return run_config<T, V, 4, true, Launch>(p, args...);
  }
  return cudaErrorInvalidConfiguration;
}

template <template <typename, int, int, bool> class Launch, typename... Args>
cudaError_t dispatch_rows(DType dt, const RowPlan& p, Args&... args) {
  switch (dt) {
    case DType::f32:
      return p.vec == 1 ? dispatch_k<float, 1, Launch>(p, args...) : dispatch_k<float, 4, Launch>(p, args...);
    case DType::f16:
      return p.vec == 1 ? dispatch_k<__half, 1, Launch>(p, args...) : dispatch_k<__half, 8, Launch>(p, args...);
    case DType::bf16:
      return p.vec == 1 ? dispatch_k<__nv_bfloat16, 1, Launch>(p, args...)
                        : dispatch_k<__nv_bfloat16, 8, Launch>(p, args...);
  }
  return cudaErrorInvalidValue;
}

template <template <typename> class Launch, typename... Args>
cudaError_t dispatch_dtype(DType dt, Args&&... args) {
  switch (dt) {
    case DType::f32: return Launch<float>::run(args...);
    case DType::f16: return Launch<__half>::run(args...);
    case DType::bf16: return Launch<__nv_bfloat16>::run(args...);
  }
  return cudaErrorInvalidValue;
}

// Launch geometry of a row kernel: block size and groups per block for `rows` tokens per chunk.
struct Geometry {
  int threads;
  int groups;
};

Geometry row_geometry(const RowPlan& p, int64_t rows) {
  if (p.block_rows || p.streaming) return {p.group, 1};
  // Sub-warps: up to kWarpModeThreads threads, no more groups than a chunk has rows (whole warps).
  const int64_t want = round_up(std::max<int64_t>(rows, 1) * p.group, 32);
  const int threads = static_cast<int>(std::min<int64_t>(kWarpModeThreads, want));
  return {threads, threads / p.group};
}

struct ForwardLaunch {
  const AdalnForwardArgs* a;
  Chunks ch;
  Geometry geo;
  cudaStream_t stream;
};

template <typename T, int V, int K, bool kBlock>
struct LaunchForward {
  static cudaError_t run(const RowPlan& p, ForwardLaunch& l) {
    adaln_forward_kernel<T, V, K, kBlock><<<static_cast<unsigned>(l.a->batch * l.ch.count), l.geo.threads, 0, l.stream>>>(*l.a, l.ch, p.group);
    return cudaGetLastError();
  }
};

template <typename T>
struct LaunchForwardStreaming {
  static cudaError_t run(ForwardLaunch& l) {
    adaln_forward_streaming_kernel<T><<<static_cast<unsigned>(l.a->batch * l.ch.count), kMaxRowThreads, 0, l.stream>>>(
        *l.a, l.ch);
    return cudaGetLastError();
  }
};

struct BackwardLaunch {
  const AdalnBackwardArgs* a;
  Chunks ch;
  SlotMap sm;
  Geometry geo;
  size_t smem;
  float* workspace;
  cudaStream_t stream;
};

template <typename T, int V, int K, bool kBlock>
struct LaunchBackward {
  static cudaError_t run(const RowPlan& p, BackwardLaunch& l) {
    const auto kernel = adaln_backward_kernel<T, V, K, kBlock>;
    if (l.smem + kSmemReserve > static_cast<size_t>(kDefaultSmem)) {
      const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(l.smem));
      if (e != cudaSuccess) return e;
    }
    kernel<<<static_cast<unsigned>(l.a->batch * l.ch.count), l.geo.threads, l.smem, l.stream>>>(*l.a, l.ch, l.sm,
                                                                                                p.group, l.workspace);
    return cudaGetLastError();
  }
};

template <typename T>
struct LaunchBackwardStreaming {
  static cudaError_t run(BackwardLaunch& l) {
    adaln_backward_streaming_kernel<T><<<static_cast<unsigned>(l.a->batch * l.ch.count), kMaxRowThreads, 0, l.stream>>>(
        *l.a, l.ch, l.sm, l.workspace);
    return cudaGetLastError();
  }
};

template <typename T>
struct LaunchSum {
  static cudaError_t run(const SumArgs& s, int targets, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned>(ceil_div(s.dim, kSumCols)),
                    static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(s.batch, 1), FASTDIFF_MAX_GRID_Y)),
                    static_cast<unsigned>(targets));
    sum_partials_kernel<T><<<grid, dim3(kSumCols, kSumLanes), 0, stream>>>(s);
    return cudaGetLastError();
  }
};

bool shape_ok(int64_t batch, int64_t tokens, int64_t dim) {
  return batch >= 0 && tokens >= 0 && dim >= 0 && dim <= (int64_t{1} << 30);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Launchers
// ---------------------------------------------------------------------------------------------------

cudaError_t adaln_forward(const AdalnForwardArgs& a, cudaStream_t stream) {
  if (!shape_ok(a.batch, a.tokens, a.dim)) return cudaErrorInvalidValue;
  const int64_t rows = a.batch * a.tokens;
  if (rows == 0) return cudaSuccess;
  const bool vec_ok = a.dim % (16 / elem_bytes(a.dtype)) == 0 &&
                      all_aligned16(a.x, a.gate, a.h, a.shift, a.scale, a.weight, a.bias, a.x_out, a.out);
  const RowPlan p = plan_rows(a.dim, elem_bytes(a.dtype), vec_ok);
  // Tokens per chunk: enough blocks for two waves of the GPU; more tokens per chunk reuse the
  // per-sample modulation longer. The forward's results do not depend on this choice.
  int sms = 0;
  if (const cudaError_t e = device_attrs(&sms, nullptr); e != cudaSuccess) return e;
  const int block = p.block_rows || p.streaming ? p.group : kWarpModeThreads;
  const int64_t groups = p.block_rows || p.streaming ? 1 : kWarpModeThreads / p.group;
  const int64_t target_blocks = int64_t{2} * sms * std::max(1, 2048 / block);
  const int64_t per_chunk = std::min(a.tokens, std::max<int64_t>(groups, ceil_div(rows, target_blocks)));
  ForwardLaunch l{&a, make_chunks(a.tokens, per_chunk), row_geometry(p, per_chunk), stream};
  if (a.batch * l.ch.count > kMaxGridX) return cudaErrorInvalidConfiguration;
  if (p.streaming) return dispatch_dtype<LaunchForwardStreaming>(a.dtype, l);
  return dispatch_rows<LaunchForward>(a.dtype, p, l);
}

namespace {

SlotMap backward_slots(const AdalnBackwardArgs& a) {
  SlotMap sm{};
  const bool used[kNumSlots] = {!a.shift_per_token, !a.scale_per_token, a.weight != nullptr, a.bias != nullptr,
                                a.h != nullptr && !a.gate_per_token};
  for (int s = 0; s < kNumSlots; ++s) sm.slot[s] = used[s] ? sm.count++ : -1;
  return sm;
}

Chunks backward_chunks(int64_t batch, int64_t tokens) {
  return make_chunks(tokens, backward_rows_per_chunk(batch, tokens));
}

}  // namespace

size_t adaln_backward_workspace_bytes(const AdalnBackwardArgs& a) {
  if (!shape_ok(a.batch, a.tokens, a.dim)) return 0;
  const Chunks ch = backward_chunks(a.batch, a.tokens);
  return static_cast<size_t>(a.batch * ch.count * backward_slots(a).count * a.dim) * sizeof(float);
}

cudaError_t adaln_backward(const AdalnBackwardArgs& a, void* workspace, cudaStream_t stream) {
  if (!shape_ok(a.batch, a.tokens, a.dim)) return cudaErrorInvalidValue;
  if (a.dim == 0) return cudaSuccess;  // every output is empty
  const SlotMap sm = backward_slots(a);
  const Chunks ch = backward_chunks(a.batch, a.tokens);
  if (a.batch * ch.count > kMaxGridX) return cudaErrorInvalidConfiguration;
  float* ws = static_cast<float*>(workspace);
  if (sm.count > 0 && a.batch * ch.count > 0 && ws == nullptr) return cudaErrorInvalidValue;

  if (a.batch * a.tokens > 0) {
    const bool vec_ok =
        a.dim % (16 / elem_bytes(a.dtype)) == 0 &&
        all_aligned16(a.grad_out, a.x, a.scale, a.weight, a.bias, a.grad_x_out, a.gate, a.h, a.grad_x, a.grad_h,
                      a.grad_gate, a.grad_shift, a.grad_scale);
    RowPlan p = plan_rows(a.dim, elem_bytes(a.dtype), vec_ok);
    const Geometry geo = row_geometry(p, ch.rows);
    int smem_optin = 0;
    if (const cudaError_t e = device_attrs(nullptr, &smem_optin); e != cudaSuccess) return e;
    const size_t smem = static_cast<size_t>(geo.groups) * sm.count * a.dim * sizeof(float);
    if (smem + kSmemReserve > static_cast<size_t>(smem_optin)) p.streaming = true;  // accumulators in the workspace
    BackwardLaunch l{&a, ch, sm, geo, smem, ws, stream};
    const cudaError_t e =
        p.streaming ? dispatch_dtype<LaunchBackwardStreaming>(a.dtype, l) : dispatch_rows<LaunchBackward>(a.dtype, p, l);
    if (e != cudaSuccess) return e;
  }
  if (sm.count == 0) return cudaSuccess;

  SumArgs s{};
  s.partial = ws, s.batch = a.batch, s.chunks = a.batch * a.tokens > 0 ? ch.count : 0, s.dim = a.dim;
  s.slots = sm.count;
  void* const outs[kNumSlots] = {a.grad_shift, a.grad_scale, a.grad_weight, a.grad_bias, a.grad_gate};
  int targets = 0;
  for (int k = 0; k < kNumSlots; ++k) {
    if (sm.slot[k] < 0) continue;
    s.target[targets++] = SumTarget{outs[k], sm.slot[k], k == kWeight || k == kBias};
  }
  return dispatch_dtype<LaunchSum>(a.dtype, s, targets, stream);
}

namespace {

// gated_residual geometry: threadIdx.x over up to 256 column vectors, threadIdx.y over tokens.
struct ResidualPlan {
  int vec;
  dim3 block;
  unsigned col_tiles;
};

ResidualPlan plan_residual(const GatedResidualArgs& a) {
  ResidualPlan p{};
  const bool vec_ok = a.dim % (16 / elem_bytes(a.dtype)) == 0 &&
                      all_aligned16(a.x, a.gate, a.h, a.out, a.grad_out, a.grad_gate, a.grad_h);
  p.vec = vec_ok ? 16 / elem_bytes(a.dtype) : 1;
  const int64_t dv = a.dim / p.vec;
  // Short rows: a power of two dividing the warp; else whole warps, at most 256 threads across.
  const int tx = static_cast<int>(dv <= 32 ? pow2_ceil(std::max<int64_t>(dv, 1))
                                           : std::min<int64_t>(kResidualThreads, round_up(dv, 32)));
  p.block = dim3(tx, kResidualThreads / tx);
  p.col_tiles = static_cast<unsigned>(ceil_div(dv, tx));
  return p;
}

// Tokens per chunk of gated_residual's backward: a function of the shape (and of the block's token
// lanes) only, so that its per-sample sums are reproducible; at least 4 tokens per partial.
int64_t residual_backward_rows(const GatedResidualArgs& a, const ResidualPlan& p) {
  const int64_t rows = std::max<int64_t>({4, p.block.y, ceil_div(a.batch * a.tokens, 2048)});
  return std::max<int64_t>(1, std::min(rows, a.tokens));
}

template <typename T>
struct LaunchResidual {
  static cudaError_t run(const GatedResidualArgs& a, const ResidualPlan& p, const Chunks& ch, bool backward,
                         float* ws, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned>(a.batch * ch.count), p.col_tiles);
    constexpr int kVec = 16 / sizeof(T);
    if (!backward) {
      if (p.vec == 1) {
        gated_residual_kernel<T, 1><<<grid, p.block, 0, stream>>>(a, ch);
      } else {
        gated_residual_kernel<T, kVec><<<grid, p.block, 0, stream>>>(a, ch);
      }
    } else if (p.vec == 1) {
      gated_residual_backward_kernel<T, 1><<<grid, p.block, 0, stream>>>(a, ch, ws);
    } else {
      gated_residual_backward_kernel<T, kVec><<<grid, p.block, 0, stream>>>(a, ch, ws);
    }
    return cudaGetLastError();
  }
};

bool residual_grid_ok(const GatedResidualArgs& a, const ResidualPlan& p, const Chunks& ch) {
  return a.batch * ch.count <= kMaxGridX && p.col_tiles <= FASTDIFF_MAX_GRID_Y;
}

}  // namespace

cudaError_t gated_residual_forward(const GatedResidualArgs& a, cudaStream_t stream) {
  if (!shape_ok(a.batch, a.tokens, a.dim)) return cudaErrorInvalidValue;
  if (a.batch * a.tokens * a.dim == 0) return cudaSuccess;
  GatedResidualArgs f = a;
  f.grad_out = nullptr, f.grad_gate = nullptr, f.grad_h = nullptr;
  const ResidualPlan p = plan_residual(f);
  // Tokens per chunk: about two waves of blocks (the forward's results do not depend on it).
  int sms = 0;
  if (const cudaError_t e = device_attrs(&sms, nullptr); e != cudaSuccess) return e;
  const int64_t want_chunks = std::max<int64_t>(1, int64_t{16} * sms / p.col_tiles);
  const int64_t rows = std::max<int64_t>(p.block.y, ceil_div(a.batch * a.tokens, want_chunks));
  const Chunks ch = make_chunks(a.tokens, std::min(rows, a.tokens));
  if (!residual_grid_ok(f, p, ch)) return cudaErrorInvalidConfiguration;
  return dispatch_dtype<LaunchResidual>(a.dtype, f, p, ch, false, static_cast<float*>(nullptr), stream);
}

size_t gated_residual_backward_workspace_bytes(const GatedResidualArgs& a) {
  if (!shape_ok(a.batch, a.tokens, a.dim) || a.gate_per_token) return 0;
  const Chunks ch = make_chunks(a.tokens, residual_backward_rows(a, plan_residual(a)));
  return static_cast<size_t>(a.batch * ch.count * a.dim) * sizeof(float);
}

cudaError_t gated_residual_backward(const GatedResidualArgs& a, void* workspace, cudaStream_t stream) {
  if (!shape_ok(a.batch, a.tokens, a.dim)) return cudaErrorInvalidValue;
  if (a.dim == 0) return cudaSuccess;
  GatedResidualArgs bw = a;
  bw.x = nullptr, bw.out = nullptr;
  const ResidualPlan p = plan_residual(bw);
  const Chunks ch = make_chunks(a.tokens, residual_backward_rows(a, p));
  if (!residual_grid_ok(bw, p, ch)) return cudaErrorInvalidConfiguration;
  float* const ws = static_cast<float*>(workspace);
  const bool sums = !a.gate_per_token;
  if (sums && a.batch * a.tokens > 0 && ws == nullptr) return cudaErrorInvalidValue;
  if (a.batch * a.tokens > 0) {
    const cudaError_t e = dispatch_dtype<LaunchResidual>(a.dtype, bw, p, ch, true, ws, stream);
    if (e != cudaSuccess) return e;
  }
  if (!sums) return cudaSuccess;
  SumArgs s{};
  s.partial = ws, s.batch = a.batch, s.chunks = a.batch * a.tokens > 0 ? ch.count : 0, s.dim = a.dim, s.slots = 1;
  s.target[0] = SumTarget{a.grad_gate, 0, 0};
  return dispatch_dtype<LaunchSum>(a.dtype, s, 1, stream);
}

}  // namespace fastdiff::cuda
