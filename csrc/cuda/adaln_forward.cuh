// Forward kernels of the adaln family: adaln_modulate and gated_residual_adaln (register rows and
// streaming), gated_residual. Launched from adaln.cu.
#pragma once

#include "cuda/adaln_rows.cuh"

namespace fastdiff::cuda {
// adaln.cu's anonymous namespace: the adaln_*.cuh headers are included by adaln.cu alone (and by
// its host-emulator test), so the kernels keep internal linkage.
namespace {

using namespace adaln_detail;

// ---------------------------------------------------------------------------------------------------
// Forward: adaln_modulate and gated_residual_adaln
// ---------------------------------------------------------------------------------------------------

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
// gated_residual: 2-D tiles, threadIdx.x over column vectors, threadIdx.y over the tokens of a chunk
// ---------------------------------------------------------------------------------------------------

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

}  // namespace
}  // namespace fastdiff::cuda
