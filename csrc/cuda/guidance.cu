// CUDA guidance kernels: the CFG combine (elementwise) and the per-sample rescale factor (a
// deterministic two-stage reduction). Torch-free; launchers are declared in launchers.h.
#include <climits>

#include "cuda/common.cuh"
#include "cuda/launchers.h"

namespace fastdiff::cuda {
namespace {

// ---- guidance_combine ------------------------------------------------------------------------------
// Each step of the grid-stride loop handles N consecutive output elements i .. i+N-1. On the vector
// path either all N lie in one sample (n % N == 0) or nothing depends on the sample (no per-sample
// scale or factor), so one (s, f) pair serves the whole group.
template <typename T, int N, bool kVector>
__global__ void __launch_bounds__(kThreads) combine_kernel(GuidanceParams p, T* __restrict__ out, int64_t groups) {
  const int64_t n = p.per_sample, total = p.batch * n;
  const T* u = static_cast<const T*>(p.model_out);
  const T* c = u + total;
  const bool per_sample = p.scale_per_sample != nullptr || p.factor != nullptr;
  float s = p.scale, f = 1.0f;
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = g * N;
    if (per_sample) {
      const int64_t b = i / n;
      if (p.scale_per_sample) s = __ldg(p.scale_per_sample + b);
      if (p.factor) f = __ldg(p.factor + b);
    }
    float uu[N], cc[N], o[N];
    load<N, kVector>(u + i, uu);
    load<N, kVector>(c + i, cc);
#pragma unroll
    for (int j = 0; j < N; ++j) o[j] = f * (uu[j] + s * (cc[j] - uu[j]));
    store<N, kVector>(out + i, o);
  }
}

template <typename T>
cudaError_t combine_typed(const GuidanceParams& p, void* out, cudaStream_t stream) {
  constexpr int N = kPack<T>;
  const int64_t n = p.per_sample, total = p.batch * n;
  const bool uniform = p.scale_per_sample == nullptr && p.factor == nullptr;
  // The cond half starts total elements in: it is 16-byte aligned exactly when total % N == 0,
  // which n % N == 0 implies.
  const bool vector = aligned16(p.model_out) && aligned16(out) && (n % N == 0 || (uniform && total % N == 0));
  if (vector) {
    combine_kernel<T, N, true><<<grid_for(total / N), kThreads, 0, stream>>>(p, static_cast<T*>(out), total / N);
  } else {
    combine_kernel<T, 1, false><<<grid_for(total), kThreads, 0, stream>>>(p, static_cast<T*>(out), total);
  }
  return cudaGetLastError();
}

// ---- guidance_rescale_factor -----------------------------------------------------------------------
// Stage 1: one block per (sample, chunk of kChunk elements) sums (c - shift_c), its square,
// (g - shift_g) and its square, g = u + s (c - u). The shifts are the sample's first c and g: with
// them the one-pass variance E[x^2] - E[x]^2 does not cancel catastrophically when the mean is
// large against the spread. Each thread sums its 16 elements in float; the block tree in double.
// Stage 2: one block per sample sums that sample's chunk partials in a fixed order and writes the
// factor. The partition depends only on the sizes, so results are bitwise reproducible.
constexpr int64_t kChunk = 4096;
static_assert(kChunk % kThreads == 0, "every thread of a stage-1 block gets the same element count");

struct Moments {
  double c1, c2, g1, g2;
};

__device__ __forceinline__ Moments warp_sum(Moments m) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    m.c1 += __shfl_down_sync(0xffffffffu, m.c1, offset);
    m.c2 += __shfl_down_sync(0xffffffffu, m.c2, offset);
    m.g1 += __shfl_down_sync(0xffffffffu, m.g1, offset);
    m.g2 += __shfl_down_sync(0xffffffffu, m.g2, offset);
  }
  return m;
}

// The block's total, valid in thread 0. Every thread of the block must call it.
__device__ __forceinline__ Moments block_sum(Moments m) {
  constexpr int kWarps = kThreads / 32;
  __shared__ Moments warps[kWarps];
  m = warp_sum(m);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warps[warp] = m;
  __syncthreads();
  if (warp == 0) {
    m = lane < kWarps ? warps[lane] : Moments{0.0, 0.0, 0.0, 0.0};
    m = warp_sum(m);
  }
  return m;
}

template <typename T, int N, bool kVector>
__global__ void __launch_bounds__(kThreads) moments_kernel(GuidanceParams p, int64_t chunks, Moments* __restrict__ partial) {
  const int64_t block = blockIdx.x, b = block / chunks, chunk = block - b * chunks;
  const int64_t n = p.per_sample;
  const T* u = static_cast<const T*>(p.model_out) + b * n;
  const T* c = u + p.batch * n;
  const float s = p.scale_per_sample ? __ldg(p.scale_per_sample + b) : p.scale;
  const float u0 = to_float(u[0]), sc = to_float(c[0]);
  const float sg = u0 + s * (sc - u0);
  const int64_t begin = chunk * kChunk, end = begin + kChunk < n ? begin + kChunk : n;

  float c1 = 0.0f, c2 = 0.0f, g1 = 0.0f, g2 = 0.0f;
  constexpr int kSteps = static_cast<int>(kChunk / (kThreads * N));
  // A fixed trip count with a bounds test per step lets the compiler issue all loads up front.
#pragma unroll
  for (int r = 0; r < kSteps; ++r) {
    const int64_t j = begin + (static_cast<int64_t>(r) * kThreads + threadIdx.x) * N;
    if (j < end) {  // on the vector path end - begin is a multiple of N: a group is all in or all out
      float uu[N], cc[N];
      load<N, kVector>(u + j, uu);
      load<N, kVector>(c + j, cc);
#pragma unroll
      for (int e = 0; e < N; ++e) {
        const float dc = cc[e] - sc, dg = (uu[e] + s * (cc[e] - uu[e])) - sg;
        c1 += dc;
        c2 += dc * dc;
        g1 += dg;
        g2 += dg * dg;
      }
    }
  }
  const Moments total = block_sum(Moments{c1, c2, g1, g2});
  if (threadIdx.x == 0) partial[block] = total;
}

__global__ void __launch_bounds__(kThreads) rescale_finish_kernel(const Moments* __restrict__ partial, int64_t chunks, int64_t n,
                                                                  double rescale, float* __restrict__ out) {
  const int64_t b = blockIdx.x;
  Moments t{0.0, 0.0, 0.0, 0.0};
  for (int64_t i = threadIdx.x; i < chunks; i += kThreads) {
    const Moments q = partial[b * chunks + i];
    t.c1 += q.c1, t.c2 += q.c2, t.g1 += q.g1, t.g2 += q.g2;
  }
  t = block_sum(t);
  if (threadIdx.x == 0) {
    const double inv = n ? 1.0 / static_cast<double>(n) : 0.0;
    const double var_c = fmax(0.0, t.c2 * inv - (t.c1 * inv) * (t.c1 * inv));
    const double var_g = fmax(0.0, t.g2 * inv - (t.g1 * inv) * (t.g1 * inv));
    const double ratio = var_g > 0.0 ? sqrt(var_c / var_g) : 1.0;
    out[b] = static_cast<float>(1.0 - rescale + rescale * ratio);
  }
}

int64_t rescale_chunks(int64_t per_sample) { return (per_sample + kChunk - 1) / kChunk; }

template <typename T>
cudaError_t rescale_typed(const GuidanceParams& p, double rescale, void* workspace, float* out, cudaStream_t stream) {
  constexpr int N = kPack<T>;
  const int64_t chunks = rescale_chunks(p.per_sample);
  if (p.batch > INT_MAX || p.batch * chunks > INT_MAX) return cudaErrorInvalidConfiguration;
  Moments* partial = static_cast<Moments*>(workspace);
  if (chunks > 0) {
    const unsigned blocks = static_cast<unsigned>(p.batch * chunks);
    if (aligned16(p.model_out) && p.per_sample % N == 0) {
      moments_kernel<T, N, true><<<blocks, kThreads, 0, stream>>>(p, chunks, partial);
    } else {
      moments_kernel<T, 1, false><<<blocks, kThreads, 0, stream>>>(p, chunks, partial);
    }
    FASTDIFF_CUDA_TRY(cudaGetLastError());
  }
  // With n == 0 no chunk exists and every factor comes out as 1 (both stds are 0).
  rescale_finish_kernel<<<static_cast<unsigned>(p.batch), kThreads, 0, stream>>>(partial, chunks, p.per_sample, rescale, out);
  return cudaGetLastError();
}

}  // namespace

// Traffic: reads 2 B n elements (u and c), writes B n: 3 B n element-bytes, the copy-bandwidth floor
// is 3 B n sizeof(T) / bandwidth.
cudaError_t launch_guidance_combine(const GuidanceParams& p, void* out, cudaStream_t stream) {
  if (p.batch == 0 || p.per_sample == 0) return cudaSuccess;
  return dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return combine_typed<T>(p, out, stream);
  });
}

size_t guidance_rescale_workspace_bytes(int64_t batch, int64_t per_sample) {
  return static_cast<size_t>(batch * rescale_chunks(per_sample)) * sizeof(Moments);
}

// Traffic: reads 2 B n elements once (stage 1), plus 32 bytes per 4096-element chunk of partials
// written and read back (under 1% for 16-bit data); writes B floats.
cudaError_t launch_guidance_rescale_factor(const GuidanceParams& p, double rescale, void* workspace, float* out,
                                           cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  return dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return rescale_typed<T>(p, rescale, workspace, out, stream);
  });
}

}  // namespace fastdiff::cuda
