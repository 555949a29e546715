// Flash attention for fastdiff: forward (short-K/V and tiled paths) and a deterministic backward
// (delta, dK/dV, dQ kernels), on fp16/bf16 tensor cores through mma.sync. Torch-free; the contract
// is the attention_fwd / attention_bwd schema in csrc/ops.cpp, the entry points are in
// attention_launchers.h. This file: the kernels' arguments, warp primitives, tiles and warp-level
// products; the kernels are in attention_forward.cuh and attention_backward.cuh, the host side
// (width and path choice, launches) in attention_dispatch.cuh.
//
// Everything below is written in terms of a handful of warp primitives (ldmatrix, mma, cp.async,
// shuffles, barriers). Compiled by nvcc they are inline PTX. Compiled with FASTDIFF_ATTN_EMULATE
// (a plain C++ build, tests/cuda_emu/) they call a host emulator that runs every CUDA thread of a
// block as a fiber and implements each primitive from its PTX specification, so the index and
// fragment arithmetic of these kernels runs, and is checked against a float64 reference, on a
// machine without a GPU.
//
// ---- Tensor-core fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 / m16n8k8", f16/bf16) ----
// lane = threadIdx % 32, g = lane / 4 (group), t = lane % 4 (thread in group). A 32-bit register
// holds two 16-bit elements, the lower column (or row, for B) in the low half.
//   m16n8k16, A (16 x 16, row major), 4 registers:
//     a0 = A[g][2t, 2t+1]   a1 = A[g+8][2t, 2t+1]   a2 = A[g][2t+8, 2t+9]   a3 = A[g+8][2t+8, 2t+9]
//   m16n8k16, B (16 x 8, "col": indexed B[k][n]), 2 registers:
//     b0 = B[2t, 2t+1][g]   b1 = B[2t+8, 2t+9][g]
//   C / D (16 x 8, float32), 4 registers:
//     c0, c1 = C[g][2t], C[g][2t+1]   c2, c3 = C[g+8][2t], C[g+8][2t+1]
//   m16n8k8 (the tail of a head dim that is 8 mod 16): A (16 x 8) a0 = A[g][2t, 2t+1],
//     a1 = A[g+8][2t, 2t+1]; B (8 x 8) b0 = B[2t, 2t+1][g]; C as above.
// Two adjacent C tiles (columns n..n+7 and n+8..n+15) therefore hold exactly the A fragment of the
// 16 x 16 block they form: a0 = pack(c0, c1) of the first, a1 = pack(c2, c3) of the first, a2, a3
// the same of the second. That is how P = softmax(S) (and dS) feed the second product without a
// round trip through shared memory.
//
// ---- ldmatrix (m8n8, b16) --------------------------------------------------------------------
// .x1/.x2/.x4 load 1/2/4 matrices of 8 x 8 16-bit elements; lanes 8i .. 8i+7 give the addresses of
// the 8 rows (16 contiguous bytes each) of matrix i. Register i of lane l receives row l/4,
// elements 2(l%4), 2(l%4)+1 of matrix i; with .trans it receives column l/4, elements at rows
// 2(l%4), 2(l%4)+1 (that is, the same position of the transposed matrix). So, for a row-major
// 16 x 16 block at shared address X with row stride S:
//   A fragment  = ldmatrix.x4 with lane l -> X + (l % 16) * S + (l / 16) * 8
//                 (matrices: rows 0-7 / 8-15 of columns 0-7, then of columns 8-15)
//   B fragments of two n-tiles, when the block holds B^T (rows = n, columns = k: a K tile for
//   Q K^T) = ldmatrix.x4 with lane l -> X + ((l % 8) + (l / 16) * 8) * S + ((l / 8) % 2) * 8,
//                 registers {b0, b1} of n-tile 0 then {b0, b1} of n-tile 1
//   B fragments of two n-tiles, when the block holds B (rows = k, columns = n: a V tile for P V)
//               = ldmatrix.x4.trans with lane l -> X + (l % 16) * S + (l / 16) * 8
//
// ---- Head dims ---------------------------------------------------------------------------------
// D is a multiple of 8. In products that reduce over D (Q K^T, dO V^T) D/16 steps of m16n8k16 run,
// and, when D = 8 mod 16 (40, 72, ...), one m16n8k8 for the last 8 columns: no multiply touches a
// padding column. Products whose output columns are D (P V, dS K, P^T dO, dS^T Q) have n-tiles of
// 8, so D/8 tiles cover D exactly. Kernels are compiled for widths 32, 40, 64, 72, 80, 96, 128,
// 160, 192, 256 (kD); a head dim d runs the smallest width >= d, and the columns d .. kD-1 are
// zero-filled in shared memory and never stored: 40, 64, 72, 80, 96, 128, 160 (and 32, 192, 256)
// run with no padding, the other multiples of 8 with some.
//
// ---- Shared-memory tiles ---------------------------------------------------------------------
// Row-major, row stride kD + 8 elements when kD/8 is even and kD otherwise: an odd number of
// 16-byte units per row, so the 8 row addresses of one ldmatrix matrix fall in 8 distinct bank
// groups (no conflicts). Rows past the end of a sequence and columns past d are zero-filled by
// cp.async (src-size 0), so every product stays finite; whether a key counts is decided by an
// additive key bias (0 or -inf) that also folds in the key_mask.
//
// ---- Softmax ----------------------------------------------------------------------------------
// Logits are kept in base-2 units: s2 = scale*log2(e) * q.k + log2(e) * bias, probabilities are
// exp2(s2 - m). Row statistics (running max m, running sum l) are float32; each thread keeps its
// partial l (the rescale factor is shared by the 4 threads of a row) and the 4 are summed at the
// end. A row whose max is still -inf measures from 0 so every p is exactly 0 (no NaN); a row with
// l == 0 at the end (fully masked) writes zeros and lse = +inf, and the backward's
// exp2(s2 - lse2) is then 0 for every key, so all its gradients are 0.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda/attention_launchers.h"

#if defined(FASTDIFF_ATTN_EMULATE)
#define FD_DEV inline
namespace fastdiff::cuda::emu {
// Defined by the emulator (tests/cuda_emu/emulator.cpp): PTX semantics on the host.
void ldmatrix(uint32_t* regs, int num, bool trans, const void* row_addr);
void mma(bool bf16, int k, float* acc, const uint32_t* a, const uint32_t* b);
float shfl_xor(float v, int lane_mask);
void cp_async16(void* dst, const void* src, bool fill);
void cp_async_commit();
void cp_async_wait(int newest_pending);
void block_sync();
void warp_sync();
}  // namespace fastdiff::cuda::emu
#else
#define FD_DEV __device__ __forceinline__
#endif

namespace fastdiff::cuda::attn {

using half = __half;
using bf16 = __nv_bfloat16;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Everything a kernel reads, by value (kernel parameter space).
struct Args {
  const void* q;
  const void* k;
  const void* v;
  const uint8_t* key_mask;  // (B, Nk) or null
  const void* bias;         // or null
  int64_t sq[3], sk[3], sv[3];  // (b, n, h) strides
  int64_t sbias[4];             // (b, h, q, k) strides
  int batch, heads, nq, nk, d;
  float scale, scale2;  // scale2 = scale * log2(e)
  // forward
  void* out;  // (B, Nq, H, d) contiguous
  float* lse;  // (B, H, Nq)
  int rows_per_cta;  // short-K/V forward: query rows per block (a multiple of 64)
  // backward
  const void* dout;
  int64_t sdo[3];
  const void* o;        // forward output, contiguous
  const float* lse_in;  // forward lse
  float* delta;         // (B, H, Nq) scratch
  void* dq;
  void* dk;
  void* dv;
};

// =================================================================================================
// Primitives
// =================================================================================================
FD_DEV void ldsm_x4(uint32_t (&r)[4], const void* p) {
#if defined(FASTDIFF_ATTN_EMULATE)
  emu::ldmatrix(r, 4, false, p);
#else
  const auto a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
#endif
}

FD_DEV void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
#if defined(FASTDIFF_ATTN_EMULATE)
  emu::ldmatrix(r, 4, true, p);
#else
  const auto a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
#endif
}

FD_DEV void ldsm_x2(uint32_t (&r)[2], const void* p) {
#if defined(FASTDIFF_ATTN_EMULATE)
  emu::ldmatrix(r, 2, false, p);
#else
  const auto a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
#endif
}

FD_DEV void ldsm_x2_t(uint32_t (&r)[2], const void* p) {
#if defined(FASTDIFF_ATTN_EMULATE)
  emu::ldmatrix(r, 2, true, p);
#else
  const auto a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
#endif
}

// c += A (16 x 16) * B (16 x 8), float32 accumulation.
template <typename T>
FD_DEV void mma_k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(FASTDIFF_ATTN_EMULATE)
  const uint32_t b[2] = {b0, b1};
  emu::mma(std::is_same_v<T, bf16>, 16, c, a, b);
#else
  if constexpr (std::is_same_v<T, half>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
}

// c += A (16 x 8) * B (8 x 8): the last 8 columns of a head dim that is 8 mod 16.
template <typename T>
FD_DEV void mma_k8(float (&c)[4], const uint32_t (&a)[2], uint32_t b0) {
#if defined(FASTDIFF_ATTN_EMULATE)
  const uint32_t b[1] = {b0};
  emu::mma(std::is_same_v<T, bf16>, 8, c, a, b);
#else
  if constexpr (std::is_same_v<T, half>) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(b0));
  } else {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(b0));
  }
#endif
}

FD_DEV float shfl_xor(float v, int lane_mask) {
#if defined(FASTDIFF_ATTN_EMULATE)
  return emu::shfl_xor(v, lane_mask);
#else
  return __shfl_xor_sync(0xffffffffu, v, lane_mask);
#endif
}

// 16 bytes global -> shared, asynchronously; fill = false writes 16 zero bytes and reads nothing.
FD_DEV void cp_async16(void* dst, const void* src, bool fill) {
#if defined(FASTDIFF_ATTN_EMULATE)
  emu::cp_async16(dst, src, fill);
#else
  const auto d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  const int n = fill ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(__cvta_generic_to_global(src)), "r"(n)
               : "memory");
#endif
}

FD_DEV void cp_async_commit() {
#if defined(FASTDIFF_ATTN_EMULATE)
  emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
FD_DEV void cp_async_wait() {
#if defined(FASTDIFF_ATTN_EMULATE)
  emu::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

FD_DEV void block_sync() {
#if defined(FASTDIFF_ATTN_EMULATE)
  emu::block_sync();
#else
  __syncthreads();
#endif
}

FD_DEV void warp_sync() {
#if defined(FASTDIFF_ATTN_EMULATE)
  emu::warp_sync();
#else
  __syncwarp();
#endif
}

// exp2 on the special-function unit (ex2.approx: relative error ~2^-22; exp2(-inf) = +0).
FD_DEV float fast_exp2(float x) {
#if defined(FASTDIFF_ATTN_EMULATE)
  return exp2f(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
#endif
}

FD_DEV float to_f32(half x) { return __half2float(x); }
FD_DEV float to_f32(bf16 x) { return __bfloat162float(x); }

// Two floats rounded to nearest into one register, `lo` in the low half.
template <typename T>
FD_DEV uint32_t pack2(float lo, float hi) {
  uint32_t r;
  if constexpr (std::is_same_v<T, half>) {
    const __half2 v = __floats2half2_rn(lo, hi);
    memcpy(&r, &v, 4);
  } else {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    memcpy(&r, &v, 4);
  }
  return r;
}

FD_DEV int ceil_div(int a, int b) { return (a + b - 1) / b; }
FD_DEV int imin(int a, int b) { return a < b ? a : b; }
inline int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

// =================================================================================================
// Tiles and the warp-level products
// =================================================================================================
template <int kD>
constexpr int kStride = (kD / 8) % 2 == 1 ? kD : kD + 8;  // shared-memory row stride, elements

// Tile shapes per compiled width. Registers per thread are about: forward kD/2 (output
// accumulator) + kBc/2 (scores); dK/dV kD (two accumulators) + kBr (scores and dP); dQ kD/2 + kBc.
// Shared memory stays under 98 KB (sm_86/89 allow 99 KB per block; A100/H100 more).
template <int kD>
struct Tiles {
  static constexpr int kFwdBc = kD <= 128 ? 64 : 32;  // keys per step, forward
  static constexpr int kFwdStages = kD <= 192 ? 2 : 1;
  static constexpr int kKvBr = kD <= 72 ? 64 : (kD <= 192 ? 32 : 16);  // queries per step, dK/dV
  static constexpr int kKvStages = kD <= 160 ? 2 : 1;
  static constexpr bool kKvSplit = kD > 160;  // dV and dK in two launches (register budget)
  static constexpr int kQBc = kD <= 96 ? 64 : (kD <= 192 ? 32 : 16);  // keys per step, dQ
  static constexpr int kQStages = kD <= 160 ? 2 : 1;
};

constexpr size_t kSmemLimit = 98 * 1024;
constexpr int kShortMaxKeys = 320;  // the short-K/V forward takes Nk up to this (when it fits)

// Copies rows [0, rows) of a (rows x kD) tile into shared memory (row stride kStride<kD>),
// `nthreads` threads cooperating (thread index `tid`), 16 bytes per cp.async. Rows >= valid_rows
// and columns >= d are zero-filled.
template <int kD, int kThreads, typename T>
FD_DEV void async_rows(T* dst, const T* src, int64_t src_row_stride, int rows, int valid_rows, int d, int tid) {
  constexpr int kChunks = kD / 8, kS = kStride<kD>;
  for (int i = tid; i < rows * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i - r * kChunks;
    const bool ok = r < valid_rows && c * 8 < d;
    cp_async16(dst + r * kS + c * 8, ok ? src + r * src_row_stride + c * 8 : src, ok);
  }
}

// acc[16 x 8*kNT] += A[16 x kD] * B^T, A = 16 rows at sA, B = 8*kNT rows at sB (both row-major
// in shared memory): scores Q K^T, dP = dO V^T, and their transposes K Q^T, V dO^T. Only the
// first `steps` 16-row groups of B are multiplied (the rest of acc is left alone).
template <typename T, int kD, int kNT>
FD_DEV void mma_abt(float (&acc)[kNT][4], const T* sA, const T* sB, int steps, int lane) {
  constexpr int kS = kStride<kD>;
  const T* a_ptr = sA + (lane & 15) * kS + (lane >> 4) * 8;
  const T* b_ptr = sB + ((lane & 7) + ((lane >> 4) << 3)) * kS + ((lane >> 3) & 1) * 8;
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
    uint32_t a[4];
    ldsm_x4(a, a_ptr + kk * 16);
#pragma unroll
    for (int n = 0; n < kNT / 2; ++n) {
      if (n < steps) {
        uint32_t b[4];
        ldsm_x4(b, b_ptr + n * 16 * kS + kk * 16);
        mma_k16<T>(acc[2 * n], a, b[0], b[1]);
        mma_k16<T>(acc[2 * n + 1], a, b[2], b[3]);
      }
    }
  }
  if constexpr (kD % 16 != 0) {
    // Last 8 columns: A rows 0-7 / 8-15 and B rows n*16 + 0-7 / 8-15 as single 8 x 8 matrices
    // (lanes 0-15 give the row addresses of .x2).
    const int r = lane & 15;
    uint32_t a[2];
    ldsm_x2(a, sA + r * kS + (kD - 8));
#pragma unroll
    for (int n = 0; n < kNT / 2; ++n) {
      if (n < steps) {
        uint32_t b[2];
        ldsm_x2(b, sB + (n * 16 + r) * kS + (kD - 8));
        mma_k8<T>(acc[2 * n], a, b[0]);
        mma_k8<T>(acc[2 * n + 1], a, b[1]);
      }
    }
  }
}

// acc[16 x kD] += round(P)[16 x 16*steps] * B[16*steps x kD], P given as C fragments (kNT/2
// 16-column groups), B row-major in shared memory at sB: O += P V, dV += P^T dO, dK += dS^T Q,
// dQ += dS K.
template <typename T, int kD, int kNT>
FD_DEV void mma_pb(float (&acc)[kD / 8][4], const float (&p)[kNT][4], const T* sB, int steps, int lane) {
  constexpr int kS = kStride<kD>;
  const T* b_ptr = sB + (lane & 15) * kS + (lane >> 4) * 8;
#pragma unroll
  for (int n = 0; n < kNT / 2; ++n) {
    if (n < steps) {
      const uint32_t a[4] = {pack2<T>(p[2 * n][0], p[2 * n][1]), pack2<T>(p[2 * n][2], p[2 * n][3]),
                             pack2<T>(p[2 * n + 1][0], p[2 * n + 1][1]), pack2<T>(p[2 * n + 1][2], p[2 * n + 1][3])};
#pragma unroll
      for (int dp = 0; dp < kD / 16; ++dp) {
        uint32_t b[4];
        ldsm_x4_t(b, b_ptr + n * 16 * kS + dp * 16);
        mma_k16<T>(acc[2 * dp], a, b[0], b[1]);
        mma_k16<T>(acc[2 * dp + 1], a, b[2], b[3]);
      }
      if constexpr (kD % 16 != 0) {
        uint32_t b[2];
        ldsm_x2_t(b, sB + (n * 16 + (lane & 15)) * kS + (kD - 8));
        mma_k16<T>(acc[kD / 8 - 1], a, b[0], b[1]);
      }
    }
  }
}

template <int kN>
FD_DEV void zero(float (&x)[kN][4]) {
#pragma unroll
  for (int i = 0; i < kN; ++i) x[i][0] = x[i][1] = x[i][2] = x[i][3] = 0.f;
}

// 0 for a key that is attended, -inf for one past Nk or excluded by key_mask.
FD_DEV float key_bias(const Args& a, int b, int key) {
  return key < a.nk && (a.key_mask == nullptr || a.key_mask[static_cast<int64_t>(b) * a.nk + key] != 0) ? 0.f
                                                                                                      : -INFINITY;
}

// log2(e) * bias[qi, kj] for the head at bias_bh (0 outside the matrix).
template <typename T>
FD_DEV float bias2(const T* bias_bh, const Args& a, int qi, int kj) {
  return qi < a.nq && kj < a.nk ? to_f32(bias_bh[qi * a.sbias[2] + kj * a.sbias[3]]) * kLog2e : 0.f;
}

template <typename T>
FD_DEV const T* bias_head(const Args& a, int b, int h) {
  return a.bias == nullptr ? nullptr : static_cast<const T*>(a.bias) + b * a.sbias[0] + h * a.sbias[1];
}

// Scores of one warp (rows = queries q_g = qrow + g and qrow + g + 8, columns = keys key0 + local
// column) -> base-2 logits: scale2 * s + key bias (kb, indexed by local column) + log2(e) * bias.
template <typename T, int kNT>
FD_DEV void logits_rows(float (&s)[kNT][4], int steps, const Args& a, const float* kb, const T* bias_bh, int qrow,
                        int key0, int lane) {
  const int g = lane >> 2, t2 = 2 * (lane & 3);
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
    if (nt / 2 < steps) {
      const int col = nt * 8 + t2;
      const float kb0 = kb[col], kb1 = kb[col + 1];
      s[nt][0] = s[nt][0] * a.scale2 + kb0;
      s[nt][1] = s[nt][1] * a.scale2 + kb1;
      s[nt][2] = s[nt][2] * a.scale2 + kb0;
      s[nt][3] = s[nt][3] * a.scale2 + kb1;
      if (bias_bh != nullptr) {
        s[nt][0] += bias2(bias_bh, a, qrow + g, key0 + col);
        s[nt][1] += bias2(bias_bh, a, qrow + g, key0 + col + 1);
        s[nt][2] += bias2(bias_bh, a, qrow + g + 8, key0 + col);
        s[nt][3] += bias2(bias_bh, a, qrow + g + 8, key0 + col + 1);
      }
    }
  }
}

// Rescales 16 query rows of one warp by the online softmax: s (base-2 logits) becomes p; m and l
// (rows g, g+8) are updated and acc is rescaled.
template <int kD, int kNT>
FD_DEV void online_softmax(float (&s)[kNT][4], int steps, float (&m)[2], float (&l)[2], float (&acc)[kD / 8][4]) {
  float mx0 = m[0], mx1 = m[1];
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
    if (nt / 2 < steps) {
      mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
      mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
    }
  }
  // A row lives in the 4 lanes of a group (lanes 4g .. 4g+3).
  mx0 = fmaxf(mx0, shfl_xor(mx0, 1));
  mx0 = fmaxf(mx0, shfl_xor(mx0, 2));
  mx1 = fmaxf(mx1, shfl_xor(mx1, 1));
  mx1 = fmaxf(mx1, shfl_xor(mx1, 2));
  const float use0 = mx0 == -INFINITY ? 0.f : mx0, use1 = mx1 == -INFINITY ? 0.f : mx1;
  const float alpha0 = fast_exp2(m[0] - use0), alpha1 = fast_exp2(m[1] - use1);
  m[0] = mx0;
  m[1] = mx1;
  float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
    if (nt / 2 < steps) {
      s[nt][0] = fast_exp2(s[nt][0] - use0);
      s[nt][1] = fast_exp2(s[nt][1] - use0);
      s[nt][2] = fast_exp2(s[nt][2] - use1);
      s[nt][3] = fast_exp2(s[nt][3] - use1);
      sum0 += s[nt][0] + s[nt][1];
      sum1 += s[nt][2] + s[nt][3];
    }
  }
  l[0] = l[0] * alpha0 + sum0;
  l[1] = l[1] * alpha1 + sum1;
#pragma unroll
  for (int dt = 0; dt < kD / 8; ++dt) {
    acc[dt][0] *= alpha0;
    acc[dt][1] *= alpha0;
    acc[dt][2] *= alpha1;
    acc[dt][3] *= alpha1;
  }
}

// Writes a warp's 16 x kD accumulator, rows scaled by f0 (row g) and f1 (row g+8), rounded to T,
// into its 16 staging rows of shared memory.
template <typename T, int kD>
FD_DEV void stage_rows(T* s, const float (&acc)[kD / 8][4], float f0, float f1, int lane) {
  constexpr int kS = kStride<kD>;
  const int g = lane >> 2, t2 = 2 * (lane & 3);
#pragma unroll
  for (int dt = 0; dt < kD / 8; ++dt) {
    const uint32_t lo = pack2<T>(acc[dt][0] * f0, acc[dt][1] * f0);
    const uint32_t hi = pack2<T>(acc[dt][2] * f1, acc[dt][3] * f1);
    *reinterpret_cast<uint32_t*>(s + g * kS + dt * 8 + t2) = lo;  // 4-byte aligned: t2 and kS are even
    *reinterpret_cast<uint32_t*>(s + (g + 8) * kS + dt * 8 + t2) = hi;
  }
}

// Copies a warp's 16 staged rows to global rows dst + r * row_stride (r < valid_rows, columns < d)
// as 16-byte vectors.
template <typename T, int kD>
FD_DEV void store_rows(T* dst, int64_t row_stride, int valid_rows, int d, const T* s, int lane) {
  constexpr int kChunks = kD / 8, kS = kStride<kD>;
  for (int i = lane; i < 16 * kChunks; i += 32) {
    const int r = i / kChunks, c = i - r * kChunks;
    if (r < valid_rows && c * 8 < d) {
      *reinterpret_cast<uint4*>(dst + r * row_stride + c * 8) = *reinterpret_cast<const uint4*>(s + r * kS + c * 8);
    }
  }
}

// Fills n key biases (0 / -inf) for keys key0 .. key0+n-1.
template <int kThreads>
FD_DEV void key_bias_row(float* dst, const Args& a, int b, int key0, int n, int tid) {
  for (int i = tid; i < n; i += kThreads) dst[i] = key_bias(a, b, key0 + i);
}

// The end of a forward row slab: normalise, stage through `stage` (the warp's 16 rows of shared
// memory, free by now), store 16 output rows from query `qrow`, and write the natural-log lse.
template <typename T, int kD>
FD_DEV void finish_forward(const Args& a, float (&acc)[kD / 8][4], const float (&m)[2], float (&l)[2], T* stage, int b,
                           int h, int qrow, int lane) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += shfl_xor(l[r], 1);
    l[r] += shfl_xor(l[r], 2);
  }
  const float inv0 = l[0] > 0.f ? 1.f / l[0] : 0.f, inv1 = l[1] > 0.f ? 1.f / l[1] : 0.f;
  warp_sync();  // every lane is done reading the staging rows (as the A operand of Q K^T)
  stage_rows<T, kD>(stage, acc, inv0, inv1, lane);
  warp_sync();
  const int64_t row_stride = static_cast<int64_t>(a.heads) * a.d;
  T* out = static_cast<T*>(a.out) + (static_cast<int64_t>(b) * a.nq + qrow) * row_stride + static_cast<int64_t>(h) * a.d;
  store_rows<T, kD>(out, row_stride, a.nq - qrow, a.d, stage, lane);
  if ((lane & 3) == 0) {
    const int g = lane >> 2;
    float* lse = a.lse + (static_cast<int64_t>(b) * a.heads + h) * a.nq;
    if (qrow + g < a.nq) lse[qrow + g] = l[0] > 0.f ? (m[0] + log2f(l[0])) * kLn2 : INFINITY;
    if (qrow + g + 8 < a.nq) lse[qrow + g + 8] = l[1] > 0.f ? (m[1] + log2f(l[1])) * kLn2 : INFINITY;
  }
}

}  // namespace fastdiff::cuda::attn
