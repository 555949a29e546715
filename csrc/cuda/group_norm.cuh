// CUDA group_norm (+ SiLU) kernels, forward and backward (semantics: the group_norm block of
// csrc/ops.cpp; arguments and partition: csrc/group_norm_args.h). Torch-free.
//
// Every kernel is a struct with kThreads and run(args, smem, block, thread), launched through a Runner:
// cuda/group_norm.cu launches them on the device; compiled with FASTDIFF_GN_EMULATE (no nvcc) they run
// on the host emulator of tests/cuda_emu, where __syncthreads is the emulator's block barrier.
//
// Deterministic, no atomics: each CTA of the partial kernels owns the records of (sample, block,
// channels) and reduces its threads' sums by a fixed shared-memory tree; one CTA (statistics) or one
// thread (gradient sums) per group then combines the records in a fixed order, in double.
//   forward:  partials {m, s1, s2} -> mean, rstd per (n, g) -> out
//   backward: partials {sum dy, sum dy*xhat} -> channel_sums, group_coef -> grad_x; grad_weight, grad_bias
// Partial CTAs: NCHW, one per (n, c, block), 256 threads along the block's positions (coalesced);
// channels-last, one per (n, block, 32 channels), 32 threads along channels (coalesced) x 8 along positions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "group_norm_args.h"

#if defined(FASTDIFF_GN_EMULATE)
#define GN_DEV inline
#define GN_HOST_DEV inline
namespace fastdiff::cuda::emu {
void block_sync();  // tests/cuda_emu/emulator.cpp
}
#define GN_SYNC() ::fastdiff::cuda::emu::block_sync()
#else
#define GN_DEV __device__ __forceinline__
#define GN_HOST_DEV __host__ __device__ __forceinline__
#define GN_SYNC() __syncthreads()
#endif

namespace fastdiff::cuda::gn {

using half = __half;
using bf16 = __nv_bfloat16;

GN_DEV float to_f32(float v) { return v; }
GN_DEV float to_f32(half v) { return __half2float(v); }
GN_DEV float to_f32(bf16 v) { return __bfloat162float(v); }
template <typename T>
GN_DEV T from_f32(float v);
template <>
GN_DEV float from_f32<float>(float v) { return v; }
template <>
GN_DEV half from_f32<half>(float v) { return __float2half_rn(v); }
template <>
GN_DEV bf16 from_f32<bf16>(float v) { return __float2bfloat16_rn(v); }

GN_DEV float sigmoid(float y) { return 1.0f / (1.0f + expf(-y)); }

template <typename T>
GN_DEV float load(const void* p, int64_t i) {
  return to_f32(static_cast<const T*>(p)[i]);
}

GN_DEV int64_t index(const GroupNormArgs& a, int64_t n, int64_t c, int64_t s) {
  return a.channels_last ? (n * a.spatial + s) * a.channels + c : (n * a.channels + c) * a.spatial + s;
}

// (n, c) of the element at linear index i.
GN_DEV void locate(const GroupNormArgs& a, int64_t i, int64_t& n, int64_t& c) {
  if (a.channels_last) {
    c = i % a.channels, n = i / (a.spatial * a.channels);
  } else {
    c = (i / a.spatial) % a.channels, n = i / (a.spatial * a.channels);
  }
}

// Channel constants of element (n, c): mean, rstd of its group, weight, bias.
template <typename T>
struct Channel {
  float mean, rstd, w, b;
  GN_DEV Channel(const GroupNormArgs& a, int64_t n, int64_t c) {
    const int64_t g = n * a.groups + c / (a.channels / a.groups);
    mean = a.mean[g], rstd = a.rstd[g];
    w = a.weight ? load<T>(a.weight, c) : 1.0f;
    b = a.bias ? load<T>(a.bias, c) : 0.0f;
  }
};

// xhat and dy (the gradient at the affine output) of one element.
template <typename T>
GN_DEV void element_grad(const GroupNormArgs& a, const Channel<T>& k, int64_t i, float& xhat, float& dy) {
  xhat = (load<T>(a.x, i) - k.mean) * k.rstd;
  dy = load<T>(a.grad_out, i);
  if (a.silu) {
    const float y = xhat * k.w + k.b, s = sigmoid(y);
    dy *= s * (1.0f + y * (1.0f - s));
  }
}

constexpr int kThreads = 256;

// The partition of one partial CTA: kChan channels x kLanes position lanes.
template <bool kChannelsLast>
struct PartialShape {
  static constexpr int kChan = kChannelsLast ? 32 : 1;
  static constexpr int kLanes = kThreads / kChan;

  static int64_t grid(const GroupNormArgs& a) {
    return kChannelsLast ? a.batch * a.blocks * ((a.channels + kChan - 1) / kChan) : a.batch * a.channels * a.blocks;
  }
};

// Sums v over the lanes of each channel (fixed tree); every thread of the channel gets the total.
// buf: kThreads floats of shared memory, free on entry and on return.
template <int kChan, int kLanes>
GN_DEV float lane_sum(float* buf, float v, int lane, int ch) {
  buf[lane * kChan + ch] = v;
  GN_SYNC();
  for (int stride = kLanes / 2; stride > 0; stride /= 2) {
    if (lane < stride) buf[lane * kChan + ch] += buf[(lane + stride) * kChan + ch];
    GN_SYNC();
  }
  const float total = buf[ch];
  GN_SYNC();
  return total;
}

// Partial records of one (sample, block, channels) CTA: statistics (kGrad false) or gradient sums.
template <typename T, bool kChannelsLast, bool kGrad>
struct PartialKernel {
  using Shape = PartialShape<kChannelsLast>;
  static constexpr int kThreads = gn::kThreads;
  static constexpr size_t kSmem = 2 * kThreads * sizeof(float);

  static GN_DEV void run(const GroupNormArgs& a, char* smem, int64_t block, int tid) {
    constexpr int kChan = Shape::kChan, kLanes = Shape::kLanes;
    float* buf0 = reinterpret_cast<float*>(smem);
    float* buf1 = buf0 + kThreads;
    const int ch = tid % kChan, lane = tid / kChan;
    int64_t n, c, b;
    if (kChannelsLast) {
      const int64_t ctiles = (a.channels + kChan - 1) / kChan;
      c = (block % ctiles) * kChan + ch, b = (block / ctiles) % a.blocks, n = block / (ctiles * a.blocks);
    } else {
      c = (block / a.blocks) % a.channels, b = block % a.blocks, n = block / (a.blocks * a.channels);
    }
    const bool valid = c < a.channels;  // channels-last: the last tile's spare channels only sum zeros
    const int64_t s0 = b * a.block_len;
    const int64_t s1 = s0 + a.block_len < a.spatial ? s0 + a.block_len : a.spatial;
    float r0 = 0.0f, r1 = 0.0f, r2 = 0.0f;
    if (kGrad) {
      float sa = 0.0f, sb = 0.0f;
      if (valid) {
        const Channel<T> k(a, n, c);
        for (int64_t s = s0 + lane; s < s1; s += kLanes) {
          float xhat, dy;
          element_grad<T>(a, k, index(a, n, c, s), xhat, dy);
          sa += dy, sb += dy * xhat;
        }
      }
      r0 = lane_sum<kChan, kLanes>(buf0, sa, lane, ch);
      r1 = lane_sum<kChan, kLanes>(buf1, sb, lane, ch);
    } else {
      const float centre = valid ? load<T>(a.x, index(a, n, c, s0)) : 0.0f;
      float acc = 0.0f;
      if (valid)
        for (int64_t s = s0 + lane; s < s1; s += kLanes) acc += load<T>(a.x, index(a, n, c, s)) - centre;
      const float mid = centre + lane_sum<kChan, kLanes>(buf0, acc, lane, ch) / static_cast<float>(s1 - s0);
      float q1 = 0.0f, q2 = 0.0f;
      if (valid)
        for (int64_t s = s0 + lane; s < s1; s += kLanes) {
          const float d = load<T>(a.x, index(a, n, c, s)) - mid;
          q1 += d, q2 += d * d;
        }
      r0 = mid;
      r1 = lane_sum<kChan, kLanes>(buf0, q1, lane, ch);
      r2 = lane_sum<kChan, kLanes>(buf1, q2, lane, ch);
    }
    if (valid && lane == 0) {
      float* r = a.partial + ((n * a.channels + c) * a.blocks + b) * kGroupNormPartial;
      r[0] = r0, r[1] = r1, r[2] = r2;
    }
  }
};

// Sums v over the CTA's threads in double (fixed tree); every thread gets the total.
GN_DEV double block_sum(double* buf, double v, int tid) {
  buf[tid] = v;
  GN_SYNC();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (tid < stride) buf[tid] += buf[tid + stride];
    GN_SYNC();
  }
  const double total = buf[0];
  GN_SYNC();
  return total;
}

// mean, rstd of group (n, g) = block, from its records: one CTA per group.
struct FinalizeKernel {
  static constexpr int kThreads = gn::kThreads;
  static constexpr size_t kSmem = kThreads * sizeof(double);

  static GN_DEV void record(const GroupNormArgs& a, int64_t n, int64_t j, double& len, double& bmean, double& bm2) {
    const int64_t b = j % a.blocks;  // j = c * blocks + b: sample n's records in order
    const float* r = a.partial + (n * a.channels * a.blocks + j) * kGroupNormPartial;
    const int64_t rest = a.spatial - b * a.block_len;
    len = static_cast<double>(rest < a.block_len ? rest : a.block_len);
    bmean = r[0] + r[1] / len;
    bm2 = r[2] - static_cast<double>(r[1]) * r[1] / len;
  }

  static GN_DEV void run(const GroupNormArgs& a, char* smem, int64_t block, int tid) {
    double* buf = reinterpret_cast<double*>(smem);
    const int64_t n = block / a.groups, g = block % a.groups, cg = a.channels / a.groups;
    // The group's records are contiguous: channels g*cg .. (g+1)*cg - 1, each with its blocks.
    const int64_t j0 = g * cg * a.blocks, j1 = (g + 1) * cg * a.blocks;
    const double count = static_cast<double>(cg * a.spatial);
    double len, bmean, bm2, t = 0.0;
    for (int64_t j = j0 + tid; j < j1; j += kThreads) {
      record(a, n, j, len, bmean, bm2);
      t += len * bmean;
    }
    const double mu = count > 0 ? block_sum(buf, t, tid) / count : 0.0;
    t = 0.0;
    for (int64_t j = j0 + tid; j < j1; j += kThreads) {
      record(a, n, j, len, bmean, bm2);
      t += bm2 + len * (bmean - mu) * (bmean - mu);
    }
    const double m2 = block_sum(buf, t, tid);
    if (tid == 0) {
      const double var = count > 0 && m2 > 0 ? m2 / count : 0.0;
      a.mean[block] = static_cast<float>(mu);
      a.rstd[block] = static_cast<float>(1.0 / sqrt(var + static_cast<double>(a.eps)));
    }
  }
};

// Elementwise kernels: a grid-stride loop over every element in memory order.
template <typename T, bool kGrad>
struct ElementKernel {
  static constexpr int kThreads = gn::kThreads;
  static constexpr size_t kSmem = 0;
  static constexpr int64_t kMaxGrid = 1 << 16;

  static GN_HOST_DEV int64_t grid(const GroupNormArgs& a) {
    const int64_t total = a.batch * a.channels * a.spatial, g = (total + kThreads - 1) / kThreads;
    return g < kMaxGrid ? g : kMaxGrid;
  }

  static GN_DEV void run(const GroupNormArgs& a, char*, int64_t block, int tid) {
    const int64_t total = a.batch * a.channels * a.spatial, step = grid(a) * kThreads;
    for (int64_t i = block * kThreads + tid; i < total; i += step) {
      int64_t n, c;
      locate(a, i, n, c);
      const Channel<T> k(a, n, c);
      if (kGrad) {
        const float* coef = a.group_coef + (n * a.groups + c / (a.channels / a.groups)) * 2;
        float xhat, dy;
        element_grad<T>(a, k, i, xhat, dy);
        static_cast<T*>(a.grad_x)[i] = from_f32<T>(k.rstd * (dy * k.w - coef[0] - xhat * coef[1]));
      } else {
        const float y = (load<T>(a.x, i) - k.mean) * (k.rstd * k.w) + k.b;
        static_cast<T*>(a.out)[i] = from_f32<T>(a.silu ? y * sigmoid(y) : y);
      }
    }
  }
};

// channel_sums and group_coef: one thread per group (n, g), its channels and blocks in order.
template <typename T>
struct GroupGradKernel {
  static constexpr int kThreads = gn::kThreads;
  static constexpr size_t kSmem = 0;
  static int64_t grid(const GroupNormArgs& a) { return (a.batch * a.groups + kThreads - 1) / kThreads; }

  static GN_DEV void run(const GroupNormArgs& a, char*, int64_t block, int tid) {
    const int64_t i = block * kThreads + tid;
    if (i >= a.batch * a.groups) return;
    const int64_t n = i / a.groups, g = i % a.groups, cg = a.channels / a.groups;
    double wa = 0.0, wb = 0.0;
    for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
      double sa = 0.0, sb = 0.0;
      for (int64_t b = 0; b < a.blocks; ++b) {
        const float* r = a.partial + ((n * a.channels + c) * a.blocks + b) * kGroupNormPartial;
        sa += r[0], sb += r[1];
      }
      a.channel_sums[(n * a.channels + c) * 2] = static_cast<float>(sa);
      a.channel_sums[(n * a.channels + c) * 2 + 1] = static_cast<float>(sb);
      const double w = a.weight ? load<T>(a.weight, c) : 1.0;
      wa += w * sa, wb += w * sb;
    }
    const double count = static_cast<double>(cg * a.spatial);
    a.group_coef[i * 2] = count > 0 ? static_cast<float>(wa / count) : 0.0f;
    a.group_coef[i * 2 + 1] = count > 0 ? static_cast<float>(wb / count) : 0.0f;
  }
};

// grad_weight, grad_bias: one thread per channel, the samples in order.
template <typename T>
struct ParamGradKernel {
  static constexpr int kThreads = gn::kThreads;
  static constexpr size_t kSmem = 0;
  static int64_t grid(const GroupNormArgs& a) { return (a.channels + kThreads - 1) / kThreads; }

  static GN_DEV void run(const GroupNormArgs& a, char*, int64_t block, int tid) {
    const int64_t c = block * kThreads + tid;
    if (c >= a.channels) return;
    double sa = 0.0, sb = 0.0;
    for (int64_t n = 0; n < a.batch; ++n) {
      sa += a.channel_sums[(n * a.channels + c) * 2];
      sb += a.channel_sums[(n * a.channels + c) * 2 + 1];
    }
    if (a.grad_weight) static_cast<T*>(a.grad_weight)[c] = from_f32<T>(static_cast<float>(sb));
    if (a.grad_bias) static_cast<T*>(a.grad_bias)[c] = from_f32<T>(static_cast<float>(sa));
  }
};

// ---- launch sequences, generic over the Runner (device or emulator) ------------------------------
// runner.template launch<K>(args, grid, smem_bytes) -> cudaError_t.
template <typename T, bool kChannelsLast, typename Runner>
cudaError_t forward_typed(const GroupNormArgs& a, Runner& runner) {
  using P = PartialKernel<T, kChannelsLast, false>;
  cudaError_t e = runner.template launch<P>(a, PartialShape<kChannelsLast>::grid(a), P::kSmem);
  if (e == cudaSuccess) e = runner.template launch<FinalizeKernel>(a, a.batch * a.groups, FinalizeKernel::kSmem);
  if (e == cudaSuccess) e = runner.template launch<ElementKernel<T, false>>(a, ElementKernel<T, false>::grid(a), 0);
  return e;
}

template <typename T, bool kChannelsLast, typename Runner>
cudaError_t backward_typed(const GroupNormArgs& a, Runner& runner) {
  using P = PartialKernel<T, kChannelsLast, true>;
  cudaError_t e = runner.template launch<P>(a, PartialShape<kChannelsLast>::grid(a), P::kSmem);
  if (e == cudaSuccess) e = runner.template launch<GroupGradKernel<T>>(a, GroupGradKernel<T>::grid(a), 0);
  if (e == cudaSuccess) e = runner.template launch<ElementKernel<T, true>>(a, ElementKernel<T, true>::grid(a), 0);
  if (e == cudaSuccess && (a.grad_weight || a.grad_bias))
    e = runner.template launch<ParamGradKernel<T>>(a, ParamGradKernel<T>::grid(a), 0);
  return e;
}

template <bool kBackward, typename Runner>
cudaError_t dispatch(const GroupNormArgs& a, Runner& runner) {
  if (a.batch * a.groups == 0) return cudaSuccess;
  auto go = [&](auto tag, auto cl) -> cudaError_t {
    using T = decltype(tag);
    constexpr bool kCl = decltype(cl)::value;
    return kBackward ? backward_typed<T, kCl>(a, runner) : forward_typed<T, kCl>(a, runner);
  };
  auto by_layout = [&](auto tag) -> cudaError_t {
    return a.channels_last ? go(tag, std::true_type{}) : go(tag, std::false_type{});
  };
  switch (a.dtype) {
    case DType::f32: return by_layout(float{});
    case DType::f16: return by_layout(half{});
    case DType::bf16: return by_layout(bf16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastdiff::cuda::gn
