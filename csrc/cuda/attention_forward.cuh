// Flash attention forward kernels: the tiled path (K/V tiles streamed through shared memory) and the
// short-K/V path (all of K and V staged once). Conventions: attention_primitives.cuh.
#pragma once

#include "cuda/attention_primitives.cuh"

namespace fastdiff::cuda::attn {

// =================================================================================================
// Forward, tiled: one block per (64 query rows, batch, head); 4 warps own 16 rows each; K/V tiles
// of kBc keys stream through shared memory, double-buffered with cp.async where kStages == 2 (the
// next tile's copy overlaps this tile's math).
// =================================================================================================
template <typename T, int kD>
struct FwdTiled {
  static constexpr int kThreads = 128, kBr = 64, kBc = Tiles<kD>::kFwdBc, kStages = Tiles<kD>::kFwdStages;
  static constexpr int kS = kStride<kD>, kNT = kBc / 8;
  static constexpr size_t kTileQ = size_t{kBr} * kS * sizeof(T), kTileKV = size_t{kBc} * kS * sizeof(T);
  static constexpr size_t kSmem = kTileQ + kStages * (2 * kTileKV + kBc * sizeof(float));
  static_assert(kSmem <= kSmemLimit, "forward tile exceeds the shared-memory budget");

  static size_t smem_bytes(const Args&) { return kSmem; }
  static int64_t grid(const Args& a) { return ceil_div64(a.nq, kBr) * a.batch * a.heads; }

  FD_DEV static void run(const Args& a, char* smem, int block, int tid) {
    const int n_qt = ceil_div(a.nq, kBr);
    const int qt = block % n_qt, bh = block / n_qt, b = bh / a.heads, h = bh % a.heads;
    const int warp = tid >> 5, lane = tid & 31;
    T* sQ = reinterpret_cast<T*>(smem);
    T* sK = reinterpret_cast<T*>(smem + kTileQ);
    T* sV = sK + kStages * kBc * kS;
    float* sKb = reinterpret_cast<float*>(sV + kStages * kBc * kS);
    const T* q = static_cast<const T*>(a.q) + b * a.sq[0] + h * a.sq[2];
    const T* k = static_cast<const T*>(a.k) + b * a.sk[0] + h * a.sk[2];
    const T* v = static_cast<const T*>(a.v) + b * a.sv[0] + h * a.sv[2];
    const T* bias = bias_head<T>(a, b, h);
    const int q0 = qt * kBr, qrow = q0 + warp * 16;
    const int n_kt = ceil_div(a.nk, kBc);

    auto issue = [&](int j, int stage) {
      const int k0 = j * kBc;
      async_rows<kD, kThreads>(sK + stage * kBc * kS, k + k0 * a.sk[1], a.sk[1], kBc, a.nk - k0, a.d, tid);
      async_rows<kD, kThreads>(sV + stage * kBc * kS, v + k0 * a.sv[1], a.sv[1], kBc, a.nk - k0, a.d, tid);
      key_bias_row<kThreads>(sKb + stage * kBc, a, b, k0, kBc, tid);
    };
    async_rows<kD, kThreads>(sQ, q + q0 * a.sq[1], a.sq[1], kBr, a.nq - q0, a.d, tid);
    issue(0, 0);
    cp_async_commit();

    float acc[kD / 8][4];
    zero(acc);
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    for (int j = 0; j < n_kt; ++j) {
      const int stage = kStages == 2 ? (j & 1) : 0;
      if constexpr (kStages == 2) {
        if (j + 1 < n_kt) issue(j + 1, stage ^ 1);
        cp_async_commit();  // possibly empty: keeps "all but the newest group" = tile j
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      block_sync();  // tile j (and the key biases written with plain stores) visible to all
      if (qrow < a.nq) {
        const int k0 = j * kBc, steps = (imin(kBc, a.nk - k0) + 15) / 16;
        float s[kNT][4];
        zero(s);
        mma_abt<T, kD, kNT>(s, sQ + warp * 16 * kS, sK + stage * kBc * kS, steps, lane);
        logits_rows<T, kNT>(s, steps, a, sKb + stage * kBc, bias, qrow, k0, lane);
        online_softmax<kD, kNT>(s, steps, m, l, acc);
        mma_pb<T, kD, kNT>(acc, s, sV + stage * kBc * kS, steps, lane);
      }
      block_sync();  // every warp is done with this stage before it is refilled
      if constexpr (kStages == 1) {
        if (j + 1 < n_kt) {
          issue(j + 1, 0);
          cp_async_commit();
        }
      }
    }
    if (qrow < a.nq) finish_forward<T, kD>(a, acc, m, l, sQ + warp * 16 * kS, b, h, qrow, lane);
  }
};

// =================================================================================================
// Forward, short K/V (cross-attention on a few hundred text tokens): the whole K and V of one
// (batch, head) are staged in shared memory once, then each warp walks its 16-row query slabs
// of the block's rows_per_cta rows with no block-wide barrier: one pass over the query tiles.
// Keys are taken in groups of 16 (kBc per step), so Nk = 77 multiplies 80 keys, not 128.
// =================================================================================================
template <typename T, int kD>
struct FwdShort {
  static constexpr int kThreads = 128, kWarps = 4, kBc = Tiles<kD>::kFwdBc;
  static constexpr int kS = kStride<kD>, kNT = kBc / 8;

  static size_t smem_bytes_for(int64_t nk) {
    const int64_t nk16 = ceil_div64(nk, 16) * 16;
    return static_cast<size_t>(2 * nk16 * kS * sizeof(T) + kWarps * 16 * kS * sizeof(T) + nk16 * sizeof(float));
  }
  static size_t smem_bytes(const Args& a) { return smem_bytes_for(a.nk); }
  static int64_t grid(const Args& a) { return ceil_div64(a.nq, a.rows_per_cta) * a.batch * a.heads; }

  FD_DEV static void run(const Args& a, char* smem, int block, int tid) {
    const int n_groups = ceil_div(a.nq, a.rows_per_cta);
    const int grp = block % n_groups, bh = block / n_groups, b = bh / a.heads, h = bh % a.heads;
    const int warp = tid >> 5, lane = tid & 31;
    const int nk16 = ceil_div(a.nk, 16) * 16;
    T* sK = reinterpret_cast<T*>(smem);
    T* sV = sK + nk16 * kS;
    T* sQw = sV + nk16 * kS + warp * 16 * kS;  // this warp's query slab (then its output staging)
    float* sKb = reinterpret_cast<float*>(sV + nk16 * kS + kWarps * 16 * kS);
    const T* q = static_cast<const T*>(a.q) + b * a.sq[0] + h * a.sq[2];
    const T* k = static_cast<const T*>(a.k) + b * a.sk[0] + h * a.sk[2];
    const T* v = static_cast<const T*>(a.v) + b * a.sv[0] + h * a.sv[2];
    const T* bias = bias_head<T>(a, b, h);

    async_rows<kD, kThreads>(sK, k, a.sk[1], nk16, a.nk, a.d, tid);
    async_rows<kD, kThreads>(sV, v, a.sv[1], nk16, a.nk, a.d, tid);
    key_bias_row<kThreads>(sKb, a, b, 0, nk16, tid);
    cp_async_commit();
    cp_async_wait<0>();
    block_sync();

    const int row_end = imin(a.nq, (grp + 1) * a.rows_per_cta);
    for (int qrow = grp * a.rows_per_cta + warp * 16; qrow < row_end; qrow += kWarps * 16) {
      async_rows<kD, 32>(sQw, q + qrow * a.sq[1], a.sq[1], 16, a.nq - qrow, a.d, lane);
      cp_async_commit();
      cp_async_wait<0>();
      warp_sync();
      float acc[kD / 8][4];
      zero(acc);
      float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
      for (int k0 = 0; k0 < nk16; k0 += kBc) {
        const int steps = imin(kBc, nk16 - k0) / 16;
        float s[kNT][4];
        zero(s);
        mma_abt<T, kD, kNT>(s, sQw, sK + k0 * kS, steps, lane);
        logits_rows<T, kNT>(s, steps, a, sKb + k0, bias, qrow, k0, lane);
        online_softmax<kD, kNT>(s, steps, m, l, acc);
        mma_pb<T, kD, kNT>(acc, s, sV + k0 * kS, steps, lane);
      }
      finish_forward<T, kD>(a, acc, m, l, sQw, b, h, qrow, lane);
      warp_sync();  // the staged output is stored before the next slab overwrites it
    }
  }
};

}  // namespace fastdiff::cuda::attn
