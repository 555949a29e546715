// CUDA fused solver step (fastdiff::sampler_update). Torch-free; the launcher is declared in
// launchers.h. Semantics match csrc/cpu/kernels/sampler_update.cpp: float32 arithmetic in the same
// order, the coefficient row read on the device, zero-coefficient terms not read.
#include "cuda/common.cuh"
#include "cuda/launchers.h"
#include "sampler_row.h"

namespace fastdiff::cuda {
namespace {

// Each step of the grid-stride loop handles N consecutive elements i .. i+N-1 of the (B, n) problem.
// On the vector path every pointer, and every offset added to one (the cond half at B n, history
// slot k at k B n), is a multiple of 16 bytes, and either the group lies in one sample or the step
// does not depend on the sample.
template <typename TX, typename TM, int N, bool kVector>
__global__ void __launch_bounds__(kThreads) update_kernel(UpdateParams p, TX* __restrict__ out, int64_t groups) {
  // The step's scalars, read once per thread from the device row (a broadcast through the cache).
  const float ca = __ldg(p.coeffs + row::kA), cb = __ldg(p.coeffs + row::kB), cx = __ldg(p.coeffs + row::kCX);
  const float cd = __ldg(p.coeffs + row::kCD), cz = __ldg(p.coeffs + row::kCZ), slot_f = __ldg(p.coeffs + row::kSlot);
  const int64_t K = p.history_len;
  // Only a whole number in [0, K) names a slot (as in the reference); NaN, fractions and
  // out-of-range values write nothing.
  const int64_t slot =
      (slot_f >= 0.0f && slot_f < static_cast<float>(K) && slot_f == floorf(slot_f)) ? static_cast<int64_t>(slot_f) : -1;

  const int64_t n = p.per_sample, total = p.batch * n;
  const TX* x = static_cast<const TX*>(p.x);
  const TM* mu = static_cast<const TM*>(p.model_out);
  const TM* mc = mu + total;  // cond half, read only when guided
  const TX* z = (p.noise != nullptr && cz != 0.0f) ? static_cast<const TX*>(p.noise) : nullptr;
  TX* hist = static_cast<TX*>(p.history);
  const bool per_sample = p.guided && (p.scale_per_sample != nullptr || p.factor != nullptr);
  float s = p.scale, f = 1.0f;

  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = g * N;
    if (per_sample) {
      const int64_t b = i / n;
      if (p.scale_per_sample) s = __ldg(p.scale_per_sample + b);
      if (p.factor) f = __ldg(p.factor + b);
    }
    float xv[N], m[N], d[N], acc[N], t[N];
    load<N, kVector>(x + i, xv);
    if (p.guided) {
      float cc[N];
      load<N, kVector>(mu + i, m);
      load<N, kVector>(mc + i, cc);
#pragma unroll
      for (int j = 0; j < N; ++j) m[j] = f * (m[j] + s * (cc[j] - m[j]));
    } else {
      load<N, kVector>(mu + i, m);
    }
#pragma unroll
    for (int j = 0; j < N; ++j) {
      d[j] = ca * xv[j] + cb * m[j];
      acc[j] = cx * xv[j] + cd * d[j];
    }
    if (z != nullptr) {
      load<N, kVector>(z + i, t);
#pragma unroll
      for (int j = 0; j < N; ++j) acc[j] += cz * t[j];
    }
    // Slots whose coefficient is exactly zero are not read: they may hold anything (even NaN). The
    // history is loaded through the coherent path because this kernel also writes it.
    for (int64_t k = 0; k < K; ++k) {
      const float ch = __ldg(p.coeffs + row::kHistory + k);
      if (ch == 0.0f) continue;
      load<N, kVector, false>(hist + k * total + i, t);
#pragma unroll
      for (int j = 0; j < N; ++j) acc[j] += ch * t[j];
    }
    store<N, kVector>(out + i, acc);
    if (slot >= 0) store<N, kVector>(hist + slot * total + i, d);
  }
}

template <typename TX, typename TM>
cudaError_t update_typed(const UpdateParams& p, void* out, cudaStream_t stream) {
  constexpr int N = kPack2<TX, TM>;
  const int64_t n = p.per_sample, total = p.batch * n;
  const bool uniform = !p.guided || (p.scale_per_sample == nullptr && p.factor == nullptr);
  const bool aligned = aligned16(p.x) && aligned16(p.model_out) && aligned16(out) &&
                       (p.history == nullptr || aligned16(p.history)) && (p.noise == nullptr || aligned16(p.noise));
  const bool vector = aligned && (n % N == 0 || (uniform && total % N == 0));
  TX* o = static_cast<TX*>(out);
  if (vector) {
    update_kernel<TX, TM, N, true><<<grid_for(total / N), kThreads, 0, stream>>>(p, o, total / N);
  } else {
    update_kernel<TX, TM, 1, false><<<grid_for(total), kThreads, 0, stream>>>(p, o, total);
  }
  return cudaGetLastError();
}

}  // namespace

// Traffic per element, with sx = sizeof(x dtype), sm = sizeof(model_out dtype), R the history slots
// with a nonzero coefficient this step, Z = 1 when noise is read, W = 1 when a slot is written:
//   reads  sx (x) + (guided ? 2 : 1) sm (model_out) + R sx + Z sx,  writes sx (x_next) + W sx.
// A guided DPM-Solver++(2M) step in one dtype reads x, 2 model_out, 1 history and writes x_next and
// 1 history: 6 elements per element of x, so the floor is 6 B n sizeof(T) / copy bandwidth.
cudaError_t launch_sampler_update(const UpdateParams& p, void* out, cudaStream_t stream) {
  if (p.batch == 0 || p.per_sample == 0) return cudaSuccess;
  return dispatch_dtype(p.x_dtype, [&](auto xtag) {
    using TX = typename decltype(xtag)::type;
    return dispatch_dtype(p.m_dtype, [&](auto mtag) {
      using TM = typename decltype(mtag)::type;
      return update_typed<TX, TM>(p, out, stream);
    });
  });
}

}  // namespace fastdiff::cuda
