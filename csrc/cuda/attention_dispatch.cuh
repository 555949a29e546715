// Flash attention host side: which compiled width and forward path serve a call, the launch sequence
// through a Runner (DeviceRunner launches the CUDA kernels; tests/cuda_emu's runner runs the same
// kernels on the host emulator), and the explicit-instantiation macros of attention_{fwd,bwd}_d*.cu.
#pragma once

#include "cuda/attention_backward.cuh"
#include "cuda/attention_forward.cuh"
#include "cuda/attention_launchers.h"

namespace fastdiff::cuda::attn {

// =================================================================================================
// Host side: choice of width and path, launches through a Runner (DeviceRunner below launches CUDA
// kernels; the emulator's runner runs the same `run` functions on the host).
// =================================================================================================
enum class FwdPath { kAuto, kShort, kTiled };

// The compiled width that serves head dim d (0 when none does).
inline int compiled_width(int64_t d) {
  if (d < 8 || d > 256 || d % 8 != 0) return 0;
  constexpr int kWidths[] = {32, 40, 64, 72, 80, 96, 128, 160, 192, 256};
  for (int w : kWidths) {
    if (d <= w) return w;
  }
  return 0;
}

// Query rows per block of the short path: 64 (one slab per warp) unless the grid would be large,
// then up to 8 slabs per warp so the K/V staging is amortised over more queries.
inline int short_rows_per_cta(const Args& a) {
  const int64_t blocks64 = ceil_div64(a.nq, 64) * a.batch * a.heads;
  int64_t reps = blocks64 / 1024;
  reps = reps < 1 ? 1 : (reps > 8 ? 8 : reps);
  return static_cast<int>(64 * reps);
}

template <class Runner, typename T, int kD>
cudaError_t forward_width(const Args& args, Runner& runner, FwdPath path) {
  Args a = args;
  const bool short_fits = a.nk <= kShortMaxKeys && FwdShort<T, kD>::smem_bytes_for(a.nk) <= kSmemLimit;
  if (path == FwdPath::kShort || (path == FwdPath::kAuto && short_fits)) {
    if (a.rows_per_cta <= 0) a.rows_per_cta = short_rows_per_cta(a);
    using K = FwdShort<T, kD>;
    return runner.template launch<K>(a, K::grid(a), K::smem_bytes(a));
  }
  using K = FwdTiled<T, kD>;
  return runner.template launch<K>(a, K::grid(a), K::smem_bytes(a));
}

// dK/dV then dQ (delta already computed).
template <class Runner, typename T, int kD>
cudaError_t backward_width(const Args& a, Runner& runner) {
  if constexpr (Tiles<kD>::kKvSplit) {
    using KV = BwdDkDv<T, kD, 1>;
    using KK = BwdDkDv<T, kD, 2>;
    cudaError_t e = runner.template launch<KV>(a, KV::grid(a), KV::smem_bytes(a));
    if (e != cudaSuccess) return e;
    e = runner.template launch<KK>(a, KK::grid(a), KK::smem_bytes(a));
    if (e != cudaSuccess) return e;
  } else {
    using K = BwdDkDv<T, kD, 0>;
    const cudaError_t e = runner.template launch<K>(a, K::grid(a), K::smem_bytes(a));
    if (e != cudaSuccess) return e;
  }
  using K = BwdDq<T, kD>;
  return runner.template launch<K>(a, K::grid(a), K::smem_bytes(a));
}

// Calls fn(TypeTag<T>, WidthTag<kD>) for the dtype and compiled width of `a`.
template <typename T>
struct TypeTag {
  using type = T;
};
template <int W>
struct WidthTag {
  static constexpr int value = W;
};

template <typename Fn>
cudaError_t dispatch(DType dtype, int d, Fn&& fn) {
  auto by_width = [&](auto tag) -> cudaError_t {
    switch (compiled_width(d)) {
      case 32: return fn(tag, WidthTag<32>{});
      case 40: return fn(tag, WidthTag<40>{});
      case 64: return fn(tag, WidthTag<64>{});
      case 72: return fn(tag, WidthTag<72>{});
      case 80: return fn(tag, WidthTag<80>{});
      case 96: return fn(tag, WidthTag<96>{});
      case 128: return fn(tag, WidthTag<128>{});
      case 160: return fn(tag, WidthTag<160>{});
      case 192: return fn(tag, WidthTag<192>{});
      case 256: return fn(tag, WidthTag<256>{});
      default: return cudaErrorInvalidValue;
    }
  };
  switch (dtype) {
    case DType::f16: return by_width(TypeTag<half>{});
    case DType::bf16: return by_width(TypeTag<bf16>{});
    default: return cudaErrorInvalidValue;
  }
}

// Args from the public parameter structs (sizes already validated).
inline Args make_args(const AttentionParams& p) {
  Args a{};
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.key_mask = p.key_mask;
  a.bias = p.bias;
  for (int i = 0; i < 3; ++i) {
    a.sq[i] = p.q_strides[i];
    a.sk[i] = p.k_strides[i];
    a.sv[i] = p.v_strides[i];
  }
  for (int i = 0; i < 4; ++i) a.sbias[i] = p.bias_strides[i];
  a.batch = static_cast<int>(p.batch);
  a.heads = static_cast<int>(p.heads);
  a.nq = static_cast<int>(p.nq);
  a.nk = static_cast<int>(p.nk);
  a.d = static_cast<int>(p.head_dim);
  a.scale = p.scale;
  a.scale2 = static_cast<float>(static_cast<double>(p.scale) * 1.4426950408889634);
  return a;
}

inline bool sizes_ok(const AttentionParams& p) {
  if (p.batch < 1 || p.heads < 1 || p.nq < 1 || p.nk < 1) return false;
  if (compiled_width(p.head_dim) == 0) return false;
  // Block indices (tiles of 16 rows at the finest, times batch * heads) and token counts fit int.
  const int64_t bh = p.batch * p.heads;
  const int64_t tiles = ceil_div64(p.nq > p.nk ? p.nq : p.nk, 16);
  return p.nq < INT_MAX / 2 && p.nk < INT_MAX / 2 && bh < INT_MAX && tiles <= INT_MAX / bh &&
         p.batch * p.nq * p.heads <= static_cast<int64_t>(INT_MAX) * 8;
}

// path and rows_per_block (a multiple of 64; 0 = chosen from the grid size) let tests force
// a forward path and the short path's slabs per warp.
template <class Runner>
cudaError_t run_forward(const AttentionParams& p, void* out, float* lse, Runner& runner,
                        FwdPath path = FwdPath::kAuto, int rows_per_block = 0) {
  if (!sizes_ok(p) || rows_per_block < 0 || rows_per_block % 64 != 0) return cudaErrorInvalidValue;
  Args a = make_args(p);
  a.rows_per_cta = rows_per_block;
  a.out = out;
  a.lse = lse;
  return dispatch(p.dtype, a.d, [&](auto t, auto w) {
    return forward_width<Runner, typename decltype(t)::type, decltype(w)::value>(a, runner, path);
  });
}

template <class Runner>
cudaError_t run_backward(const AttentionBwdParams& p, float* delta, void* dq, void* dk, void* dv, Runner& runner) {
  if (!sizes_ok(p.fwd)) return cudaErrorInvalidValue;
  Args a = make_args(p.fwd);
  a.dout = p.grad_out;
  for (int i = 0; i < 3; ++i) a.sdo[i] = p.grad_out_strides[i];
  a.o = p.out;
  a.lse_in = p.lse;
  a.delta = delta;
  a.dq = dq;
  a.dk = dk;
  a.dv = dv;
  const cudaError_t e = p.fwd.dtype == DType::f16    ? runner.template launch<BwdDelta<half>>(a, BwdDelta<half>::grid(a), 0)
                        : p.fwd.dtype == DType::bf16 ? runner.template launch<BwdDelta<bf16>>(a, BwdDelta<bf16>::grid(a), 0)
                                                     : cudaErrorInvalidValue;
  if (e != cudaSuccess) return e;
  return dispatch(p.fwd.dtype, a.d, [&](auto t, auto w) {
    return backward_width<Runner, typename decltype(t)::type, decltype(w)::value>(a, runner);
  });
}

#if !defined(FASTDIFF_ATTN_EMULATE) && defined(__CUDACC__)
// minBlocksPerSM = 2 caps registers at 255 and lets ptxas use what a kernel needs: with only the
// thread count it settled on 128 or 168 registers for some widths and spilled. Shared memory
// holds most of these kernels to about 2 blocks per SM anyway.
template <class K>
__global__ void __launch_bounds__(K::kThreads, 2) attention_kernel(const Args a) {
  extern __shared__ __align__(16) char smem[];
  K::run(a, smem, static_cast<int>(blockIdx.x), static_cast<int>(threadIdx.x));
}

struct DeviceRunner {
  cudaStream_t stream;

  template <class K>
  cudaError_t launch(const Args& a, int64_t grid, size_t smem) {
    if (grid < 1 || grid > INT_MAX) return cudaErrorInvalidConfiguration;
    if (smem > 48 * 1024) {
      // Past the default 48 KB a kernel must opt in (per device; cheap to repeat).
      const cudaError_t e =
          cudaFuncSetAttribute(attention_kernel<K>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
      if (e != cudaSuccess) return e;
    }
    attention_kernel<K><<<static_cast<unsigned>(grid), K::kThreads, smem, stream>>>(a);
    return cudaGetLastError();
  }
};

// Explicit instantiations, spread over attention_{fwd,bwd}_d*.cu so the kernels build in parallel:
// EXTERN is `extern` in the launcher files (declaration) and empty in the instantiating ones.
#define FASTDIFF_ATTN_FORWARD_WIDTH(EXTERN, W)                                                                  \
  EXTERN template cudaError_t forward_width<DeviceRunner, half, W>(const Args&, DeviceRunner&, FwdPath);         \
  EXTERN template cudaError_t forward_width<DeviceRunner, bf16, W>(const Args&, DeviceRunner&, FwdPath);
#define FASTDIFF_ATTN_BACKWARD_WIDTH(EXTERN, W)                                                 \
  EXTERN template cudaError_t backward_width<DeviceRunner, half, W>(const Args&, DeviceRunner&); \
  EXTERN template cudaError_t backward_width<DeviceRunner, bf16, W>(const Args&, DeviceRunner&);
#define FASTDIFF_ATTN_ALL_WIDTHS(X, EXTERN) \
  X(EXTERN, 32) X(EXTERN, 40) X(EXTERN, 64) X(EXTERN, 72) X(EXTERN, 80) X(EXTERN, 96) X(EXTERN, 128) X(EXTERN, 160) \
  X(EXTERN, 192) X(EXTERN, 256)
#endif

}  // namespace fastdiff::cuda::attn
