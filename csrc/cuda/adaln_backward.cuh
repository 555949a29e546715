// Backward kernels of the adaln family: adaln_modulate_backward and gated_residual_adaln_backward
// (register rows and streaming), the second pass of every token sum, gated_residual_backward.
// Launched from adaln.cu.
#pragma once

#include "cuda/adaln_rows.cuh"

namespace fastdiff::cuda {
// adaln.cu's anonymous namespace: the adaln_*.cuh headers are included by adaln.cu alone (and by
// its host-emulator test), so the kernels keep internal linkage.
namespace {

using namespace adaln_detail;

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
// gated_residual_backward: the forward's tiles (adaln_forward.cuh); per-sample gate sums as above
// ---------------------------------------------------------------------------------------------------

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

}  // namespace
}  // namespace fastdiff::cuda
