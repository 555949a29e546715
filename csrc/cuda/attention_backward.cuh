// Flash attention backward kernels: delta = rowsum(dO * O), then dK/dV and dQ, each without atomics.
// Conventions: attention_primitives.cuh.
#pragma once

#include "cuda/attention_primitives.cuh"

namespace fastdiff::cuda::attn {

// =================================================================================================
// Backward 1/3: delta[b, h, i] = sum_d dO[b, i, h, d] * O[b, i, h, d] (float32). 8 lanes per row,
// 16-byte loads; rows in (b, i, h) order, the memory order of O.
// =================================================================================================
template <typename T>
struct BwdDelta {
  static constexpr int kThreads = 256, kRowsPerBlock = kThreads / 8;
  static size_t smem_bytes(const Args&) { return 0; }
  static int64_t grid(const Args& a) {
    return ceil_div64(static_cast<int64_t>(a.batch) * a.nq * a.heads, kRowsPerBlock);
  }

  FD_DEV static void run(const Args& a, char*, int block, int tid) {
    const int64_t rows = static_cast<int64_t>(a.batch) * a.nq * a.heads;
    const int64_t r = static_cast<int64_t>(block) * kRowsPerBlock + tid / 8;
    const int sub = tid & 7;
    float acc = 0.f;
    int64_t b = 0;
    int i = 0, h = 0;
    if (r < rows) {
      h = static_cast<int>(r % a.heads);
      i = static_cast<int>((r / a.heads) % a.nq);
      b = r / (static_cast<int64_t>(a.heads) * a.nq);
      const T* dout = static_cast<const T*>(a.dout) + b * a.sdo[0] + i * a.sdo[1] + h * a.sdo[2];
      const T* o = static_cast<const T*>(a.o) + r * a.d;
      for (int c = sub * 8; c < a.d; c += 64) {
        const uint4 x = *reinterpret_cast<const uint4*>(dout + c);
        const uint4 y = *reinterpret_cast<const uint4*>(o + c);
        T xe[8], ye[8];
        memcpy(static_cast<void*>(xe), &x, 16);
        memcpy(static_cast<void*>(ye), &y, 16);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc += to_f32(xe[e]) * to_f32(ye[e]);
      }
    }
    acc += shfl_xor(acc, 4);
    acc += shfl_xor(acc, 2);
    acc += shfl_xor(acc, 1);
    if (r < rows && sub == 0) a.delta[(b * a.heads + h) * a.nq + i] = acc;
  }
};

// =================================================================================================
// Backward 2/3: dK and dV. One block per (64 keys, batch, head); 4 warps own 16 keys each and keep
// their dK, dV rows in registers while every query tile (kBr rows of Q and dO, with lse and delta)
// streams through shared memory. Works in the transposed orientation (keys on the MMA rows):
//   S^T = K Q^T, P^T = exp2(scale2 S^T + bias^T - lse2), dV += P^T dO,
//   dP^T = V dO^T, dS^T = P^T (dP^T - delta), dK += dS^T Q  (times scale at the end).
// kMode: 0 both; 1 dV only; 2 dK only (wide head dims run modes 1 and 2 as two launches: both
// accumulators would not fit the register file; S^T is then computed twice).
// =================================================================================================
template <typename T, int kD, int kMode>
struct BwdDkDv {
  static constexpr int kThreads = 128, kBc = 64, kBr = Tiles<kD>::kKvBr, kStages = Tiles<kD>::kKvStages;
  static constexpr int kS = kStride<kD>, kNT = kBr / 8;
  static constexpr bool kDoDv = kMode != 2, kDoDk = kMode != 1;
  static constexpr size_t kTileKV = size_t{kBc} * kS * sizeof(T), kTileQ = size_t{kBr} * kS * sizeof(T);
  static constexpr size_t kSmem = 2 * kTileKV + kStages * (2 * kTileQ + 2 * kBr * sizeof(float));
  static_assert(kSmem <= kSmemLimit, "dK/dV tile exceeds the shared-memory budget");

  static size_t smem_bytes(const Args&) { return kSmem; }
  static int64_t grid(const Args& a) { return ceil_div64(a.nk, kBc) * a.batch * a.heads; }

  FD_DEV static void run(const Args& a, char* smem, int block, int tid) {
    const int n_kt = ceil_div(a.nk, kBc);
    const int kt = block % n_kt, bh = block / n_kt, b = bh / a.heads, h = bh % a.heads;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t2 = 2 * (lane & 3);
    T* sK = reinterpret_cast<T*>(smem);
    T* sV = sK + kBc * kS;
    T* sQ = sV + kBc * kS;
    T* sdO = sQ + kStages * kBr * kS;
    float* sL = reinterpret_cast<float*>(sdO + kStages * kBr * kS);  // lse * log2(e) per query
    float* sDl = sL + kStages * kBr;                                  // delta per query
    const T* q = static_cast<const T*>(a.q) + b * a.sq[0] + h * a.sq[2];
    const T* k = static_cast<const T*>(a.k) + b * a.sk[0] + h * a.sk[2];
    const T* v = static_cast<const T*>(a.v) + b * a.sv[0] + h * a.sv[2];
    const T* dout = static_cast<const T*>(a.dout) + b * a.sdo[0] + h * a.sdo[2];
    const T* bias = bias_head<T>(a, b, h);
    const int64_t stat = static_cast<int64_t>(bh) * a.nq;
    const int k0 = kt * kBc, krow = k0 + warp * 16;
    const int n_qt = ceil_div(a.nq, kBr);

    auto issue = [&](int i, int stage) {
      const int q0 = i * kBr;
      async_rows<kD, kThreads>(sQ + stage * kBr * kS, q + q0 * a.sq[1], a.sq[1], kBr, a.nq - q0, a.d, tid);
      async_rows<kD, kThreads>(sdO + stage * kBr * kS, dout + q0 * a.sdo[1], a.sdo[1], kBr, a.nq - q0, a.d, tid);
      for (int x = tid; x < kBr; x += kThreads) {
        const bool in = q0 + x < a.nq;
        // lse = +inf past Nq: those queries' probabilities are exactly 0.
        sL[stage * kBr + x] = in ? a.lse_in[stat + q0 + x] * kLog2e : INFINITY;
        sDl[stage * kBr + x] = in ? a.delta[stat + q0 + x] : 0.f;
      }
    };
    async_rows<kD, kThreads>(sK, k + k0 * a.sk[1], a.sk[1], kBc, a.nk - k0, a.d, tid);
    if constexpr (kDoDk) async_rows<kD, kThreads>(sV, v + k0 * a.sv[1], a.sv[1], kBc, a.nk - k0, a.d, tid);
    issue(0, 0);
    cp_async_commit();

    const float kb0 = key_bias(a, b, krow + g), kb1 = key_bias(a, b, krow + g + 8);
    float dk[kDoDk ? kD / 8 : 1][4], dv[kDoDv ? kD / 8 : 1][4];
    zero(dk);
    zero(dv);
    for (int i = 0; i < n_qt; ++i) {
      const int stage = kStages == 2 ? (i & 1) : 0;
      if constexpr (kStages == 2) {
        if (i + 1 < n_qt) issue(i + 1, stage ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      block_sync();
      if (krow < a.nk) {
        const int q0 = i * kBr, steps = (imin(kBr, a.nq - q0) + 15) / 16;
        const T* tQ = sQ + stage * kBr * kS;
        const T* tdO = sdO + stage * kBr * kS;
        const float* tL = sL + stage * kBr;
        const float* tDl = sDl + stage * kBr;
        float p[kNT][4];
        zero(p);
        mma_abt<T, kD, kNT>(p, sK + warp * 16 * kS, tQ, steps, lane);
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          if (nt / 2 < steps) {
            const int col = nt * 8 + t2;  // local query of elements 0 and 2; +1 for 1 and 3
            float x0 = p[nt][0] * a.scale2 + kb0, x1 = p[nt][1] * a.scale2 + kb0;
            float x2 = p[nt][2] * a.scale2 + kb1, x3 = p[nt][3] * a.scale2 + kb1;
            if (bias != nullptr) {
              x0 += bias2(bias, a, q0 + col, krow + g);
              x1 += bias2(bias, a, q0 + col + 1, krow + g);
              x2 += bias2(bias, a, q0 + col, krow + g + 8);
              x3 += bias2(bias, a, q0 + col + 1, krow + g + 8);
            }
            const float l0 = tL[col], l1 = tL[col + 1];
            p[nt][0] = fast_exp2(x0 - l0);
            p[nt][1] = fast_exp2(x1 - l1);
            p[nt][2] = fast_exp2(x2 - l0);
            p[nt][3] = fast_exp2(x3 - l1);
          }
        }
        if constexpr (kDoDv) mma_pb<T, kD, kNT>(dv, p, tdO, steps, lane);
        if constexpr (kDoDk) {
          float ds[kNT][4];
          zero(ds);
          mma_abt<T, kD, kNT>(ds, sV + warp * 16 * kS, tdO, steps, lane);
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt) {
            if (nt / 2 < steps) {
              const int col = nt * 8 + t2;
              const float d0 = tDl[col], d1 = tDl[col + 1];
              ds[nt][0] = p[nt][0] * (ds[nt][0] - d0);
              ds[nt][1] = p[nt][1] * (ds[nt][1] - d1);
              ds[nt][2] = p[nt][2] * (ds[nt][2] - d0);
              ds[nt][3] = p[nt][3] * (ds[nt][3] - d1);
            }
          }
          mma_pb<T, kD, kNT>(dk, ds, tQ, steps, lane);
        }
      }
      block_sync();
      if constexpr (kStages == 1) {
        if (i + 1 < n_qt) {
          issue(i + 1, 0);
          cp_async_commit();
        }
      }
    }
    if (krow < a.nk) {
      // The warp's own K and V rows (read by no other warp) stage its results.
      const int64_t row_stride = static_cast<int64_t>(a.heads) * a.d;
      const int64_t base = (static_cast<int64_t>(b) * a.nk + krow) * row_stride + static_cast<int64_t>(h) * a.d;
      if constexpr (kDoDk) {
        stage_rows<T, kD>(sK + warp * 16 * kS, dk, a.scale, a.scale, lane);
        warp_sync();
        store_rows<T, kD>(static_cast<T*>(a.dk) + base, row_stride, a.nk - krow, a.d, sK + warp * 16 * kS, lane);
      }
      if constexpr (kDoDv) {
        stage_rows<T, kD>(sV + warp * 16 * kS, dv, 1.f, 1.f, lane);
        warp_sync();
        store_rows<T, kD>(static_cast<T*>(a.dv) + base, row_stride, a.nk - krow, a.d, sV + warp * 16 * kS, lane);
      }
    }
  }
};

// =================================================================================================
// Backward 3/3: dQ. One block per (64 queries, batch, head); 4 warps own 16 queries each and keep
// their dQ rows in registers while K/V tiles stream through shared memory:
//   S = Q K^T, P = exp2(scale2 S + bias - lse2), dP = dO V^T, dS = P (dP - delta), dQ += dS K.
// =================================================================================================
template <typename T, int kD>
struct BwdDq {
  static constexpr int kThreads = 128, kBr = 64, kBc = Tiles<kD>::kQBc, kStages = Tiles<kD>::kQStages;
  static constexpr int kS = kStride<kD>, kNT = kBc / 8;
  static constexpr size_t kTileQ = size_t{kBr} * kS * sizeof(T), kTileKV = size_t{kBc} * kS * sizeof(T);
  static constexpr size_t kSmem = 2 * kTileQ + kStages * (2 * kTileKV + kBc * sizeof(float));
  static_assert(kSmem <= kSmemLimit, "dQ tile exceeds the shared-memory budget");

  static size_t smem_bytes(const Args&) { return kSmem; }
  static int64_t grid(const Args& a) { return ceil_div64(a.nq, kBr) * a.batch * a.heads; }

  FD_DEV static void run(const Args& a, char* smem, int block, int tid) {
    const int n_qt = ceil_div(a.nq, kBr);
    const int qt = block % n_qt, bh = block / n_qt, b = bh / a.heads, h = bh % a.heads;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2;
    T* sQ = reinterpret_cast<T*>(smem);
    T* sdO = sQ + kBr * kS;
    T* sK = sdO + kBr * kS;
    T* sV = sK + kStages * kBc * kS;
    float* sKb = reinterpret_cast<float*>(sV + kStages * kBc * kS);
    const T* q = static_cast<const T*>(a.q) + b * a.sq[0] + h * a.sq[2];
    const T* k = static_cast<const T*>(a.k) + b * a.sk[0] + h * a.sk[2];
    const T* v = static_cast<const T*>(a.v) + b * a.sv[0] + h * a.sv[2];
    const T* dout = static_cast<const T*>(a.dout) + b * a.sdo[0] + h * a.sdo[2];
    const T* bias = bias_head<T>(a, b, h);
    const int64_t stat = static_cast<int64_t>(bh) * a.nq;
    const int q0 = qt * kBr, qrow = q0 + warp * 16;
    const int n_kt = ceil_div(a.nk, kBc);

    auto issue = [&](int j, int stage) {
      const int k0 = j * kBc;
      async_rows<kD, kThreads>(sK + stage * kBc * kS, k + k0 * a.sk[1], a.sk[1], kBc, a.nk - k0, a.d, tid);
      async_rows<kD, kThreads>(sV + stage * kBc * kS, v + k0 * a.sv[1], a.sv[1], kBc, a.nk - k0, a.d, tid);
      key_bias_row<kThreads>(sKb + stage * kBc, a, b, k0, kBc, tid);
    };
    async_rows<kD, kThreads>(sQ, q + q0 * a.sq[1], a.sq[1], kBr, a.nq - q0, a.d, tid);
    async_rows<kD, kThreads>(sdO, dout + q0 * a.sdo[1], a.sdo[1], kBr, a.nq - q0, a.d, tid);
    issue(0, 0);
    cp_async_commit();

    // Row statistics of this thread's two query rows (lse = +inf past Nq: p = 0 there).
    const int r0 = qrow + g, r1 = qrow + g + 8;
    const float lse0 = r0 < a.nq ? a.lse_in[stat + r0] * kLog2e : INFINITY;
    const float lse1 = r1 < a.nq ? a.lse_in[stat + r1] * kLog2e : INFINITY;
    const float del0 = r0 < a.nq ? a.delta[stat + r0] : 0.f;
    const float del1 = r1 < a.nq ? a.delta[stat + r1] : 0.f;
    float dq[kD / 8][4];
    zero(dq);
    for (int j = 0; j < n_kt; ++j) {
      const int stage = kStages == 2 ? (j & 1) : 0;
      if constexpr (kStages == 2) {
        if (j + 1 < n_kt) issue(j + 1, stage ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      block_sync();
      if (qrow < a.nq) {
        const int k0 = j * kBc, steps = (imin(kBc, a.nk - k0) + 15) / 16;
        const T* tK = sK + stage * kBc * kS;
        float p[kNT][4];
        zero(p);
        mma_abt<T, kD, kNT>(p, sQ + warp * 16 * kS, tK, steps, lane);
        logits_rows<T, kNT>(p, steps, a, sKb + stage * kBc, bias, qrow, k0, lane);
        float ds[kNT][4];
        zero(ds);
        mma_abt<T, kD, kNT>(ds, sdO + warp * 16 * kS, sV + stage * kBc * kS, steps, lane);
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          if (nt / 2 < steps) {
            ds[nt][0] = fast_exp2(p[nt][0] - lse0) * (ds[nt][0] - del0);
            ds[nt][1] = fast_exp2(p[nt][1] - lse0) * (ds[nt][1] - del0);
            ds[nt][2] = fast_exp2(p[nt][2] - lse1) * (ds[nt][2] - del1);
            ds[nt][3] = fast_exp2(p[nt][3] - lse1) * (ds[nt][3] - del1);
          }
        }
        mma_pb<T, kD, kNT>(dq, ds, tK, steps, lane);
      }
      block_sync();
      if constexpr (kStages == 1) {
        if (j + 1 < n_kt) {
          issue(j + 1, 0);
          cp_async_commit();
        }
      }
    }
    if (qrow < a.nq) {
      T* stage_rows_ptr = sQ + warp * 16 * kS;  // the warp's own Q rows
      stage_rows<T, kD>(stage_rows_ptr, dq, a.scale, a.scale, lane);
      warp_sync();
      const int64_t row_stride = static_cast<int64_t>(a.heads) * a.d;
      T* dst = static_cast<T*>(a.dq) + (static_cast<int64_t>(b) * a.nq + qrow) * row_stride + static_cast<int64_t>(h) * a.d;
      store_rows<T, kD>(dst, row_stride, a.nq - qrow, a.d, stage_rows_ptr, lane);
    }
  }
};

}  // namespace fastdiff::cuda::attn
