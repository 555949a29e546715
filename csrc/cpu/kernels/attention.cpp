// CPU attention kernels (torch-free; compiled once per ISA, see attention.h for the data layout).
//
// Flash-style on float32 copies: per (b, h), a block of kAttnKeyBlock keys at a time, tiles of
// kAttnRows query rows. Scores of a tile are a small matrix product vectorised over keys (k packed
// transposed, 8 keys per vector, 6 rows x 16 keys of accumulators); the online softmax rescales the
// running output once per key block; P v accumulates 6 rows x 16 columns per pass over the block's
// keys. Head dims that diffusion models use are compiled as constants (the loops over d unroll);
// any other runs the same code with a run-time dp.
//
// Backward (FlashAttention-2 order): per (b, h) and chunk of key blocks, every query tile
// recomputes P = exp2(S - lse2), then dV += P^T dO, dS = P (dO v^T - delta), dK += dS^T q and the
// chunk's own dQ partial += dS k. A key block belongs to one task, and dQ partials are summed in
// chunk order by attention_bwd_dq, so the bits do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/kernels/attention.h"
#include "cpu/kernels/convert.h"
#include "cpu/kernels/vec8.h"

#define FD_UNROLL _Pragma("GCC unroll 16")

namespace fastdiff::cpu::FASTDIFF_ISA {
namespace {

constexpr int64_t kBk = kAttnKeyBlock;
constexpr int kR = static_cast<int>(kAttnRows);
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2 = 0.693147180559945309f;
constexpr float kInf = std::numeric_limits<float>::infinity();

// 2^x: x = k + r with k = round(x), |r| <= 1/2; 2^r by a degree-5 polynomial fitted for least
// relative error (2.3e-7 evaluated in float32), 2^k built in the exponent bits and multiplied in
// (so a NaN in x stays NaN). Exactly 0 below -125 (-inf included: masked keys weigh nothing),
// where 2^k would leave the normal range; x is clamped at 127 above.
FD_INLINE vf vexp2(vf x) {
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  const vf xc = vmin(splat(127.0f), vmax(splat(-125.0f), x));
  const vf t = xc + magic;
  const vf r = xc - (t - magic);
  const vi k = reinterpret_cast<vi>(t) - reinterpret_cast<vi>(magic);
  vf p = splat(1.32764666e-3f);
  p = p * r + 9.67554189e-3f;
  p = p * r + 5.55071346e-2f;
  p = p * r + 2.40221202e-1f;
  p = p * r + 6.93146944e-1f;
  p = p * r + 1.00000012f;
  const vf two_k = reinterpret_cast<vf>((k + 127) << 23);
  return zero_below(p * two_k, x, -125.0f);
}

FD_INLINE float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < kW; ++i) m = std::max(m, v[i]);
  return m;
}
FD_INLINE float hsum(vf v) {
  float s = 0;
  for (int i = 0; i < kW; ++i) s += v[i];
  return s;
}

// ---- tiles --------------------------------------------------------------------------------------
// S[r][j] = sum_d A[r][d] * Bt[d][j] for r < kR, j < n (a multiple of 16); A rows of dp floats,
// Bt rows of ldb floats, S rows of kBk floats. kR x 2 accumulators: each loaded vector of Bt serves
// kR rows, each broadcast element of A 16 keys.
template <int DP>
FD_INLINE void dot_tile(const float* A, int64_t dp_rt, const float* Bt, int64_t ldb, int64_t n, float* S) {
  const int64_t dp = DP ? DP : dp_rt;
  for (int64_t j = 0; j < n; j += 2 * kW) {
    vf acc[kR][2] = {};
    FD_UNROLL for (int64_t d = 0; d < dp; ++d) {
      const vf b0 = loadv(Bt + d * ldb + j), b1 = loadv(Bt + d * ldb + j + kW);
      FD_UNROLL for (int r = 0; r < kR; ++r) {
        const vf s = splat(A[r * dp + d]);
        acc[r][0] += s * b0;
        acc[r][1] += s * b1;
      }
    }
    FD_UNROLL for (int r = 0; r < kR; ++r) {
      storev(S + r * kBk + j, acc[r][0]);
      storev(S + r * kBk + j + kW, acc[r][1]);
    }
  }
}

// O[r][:] = alpha[r] * O[r][:] + sum_{j < n} P[r][j] * B[j][:] for r < kR (alpha null: 1); O and B
// rows of dp floats, P rows of kBk floats. NV vectors (8 columns each) of all kR rows per pass.
template <int NV>
FD_INLINE void rows_pass(const float* P, const float* B, int64_t dp, int64_t n, float* O, const float* alpha,
                         int64_t c) {
  vf acc[kR][NV];
  static_assert(kR <= kW, "one vector holds a tile's per-row factors");
  FD_UNROLL for (int r = 0; r < kR; ++r) {
    const vf a = splat(alpha ? alpha[r] : 1.0f);
    FD_UNROLL for (int u = 0; u < NV; ++u) acc[r][u] = loadv(O + r * dp + c + u * kW) * a;
  }
  for (int64_t j = 0; j < n; ++j) {
    vf b[NV];
    FD_UNROLL for (int u = 0; u < NV; ++u) b[u] = loadv(B + j * dp + c + u * kW);
    FD_UNROLL for (int r = 0; r < kR; ++r) {
      const vf s = splat(P[r * kBk + j]);
      FD_UNROLL for (int u = 0; u < NV; ++u) acc[r][u] += s * b[u];
    }
  }
  FD_UNROLL for (int r = 0; r < kR; ++r) {
    FD_UNROLL for (int u = 0; u < NV; ++u) storev(O + r * dp + c + u * kW, acc[r][u]);
  }
}

template <int DP>
FD_INLINE void acc_rows(const float* P, const float* B, int64_t dp_rt, int64_t n, float* O, const float* alpha) {
  const int64_t dp = DP ? DP : dp_rt;
  int64_t c = 0;
  for (; c + 2 * kW <= dp; c += 2 * kW) rows_pass<2>(P, B, dp, n, O, alpha, c);
  if (c < dp) rows_pass<1>(P, B, dp, n, O, alpha, c);
}

// G[j][:] += sum_{r < kR} P[r][j] * A[r][:] for j < n: the transposed products of the backward
// (dV += P^T dO, dK += dS^T q). A's NV vectors of the kR rows stay in registers over the keys.
template <int NV>
FD_INLINE void cols_pass(const float* P, const float* A, int64_t dp, int64_t n, float* G, int64_t c) {
  vf a[kR][NV];
  FD_UNROLL for (int r = 0; r < kR; ++r) {
    FD_UNROLL for (int u = 0; u < NV; ++u) a[r][u] = loadv(A + r * dp + c + u * kW);
  }
  for (int64_t j = 0; j < n; ++j) {
    vf g[NV];
    FD_UNROLL for (int u = 0; u < NV; ++u) g[u] = loadv(G + j * dp + c + u * kW);
    FD_UNROLL for (int r = 0; r < kR; ++r) {
      const vf s = splat(P[r * kBk + j]);
      FD_UNROLL for (int u = 0; u < NV; ++u) g[u] += s * a[r][u];
    }
    FD_UNROLL for (int u = 0; u < NV; ++u) storev(G + j * dp + c + u * kW, g[u]);
  }
}

template <int DP>
FD_INLINE void acc_cols(const float* P, const float* A, int64_t dp_rt, int64_t n, float* G) {
  const int64_t dp = DP ? DP : dp_rt;
  int64_t c = 0;
  for (; c + 2 * kW <= dp; c += 2 * kW) cols_pass<2>(P, A, dp, n, G, c);
  if (c < dp) cols_pass<1>(P, A, dp, n, G, c);
}

// ---- scores: masks, bias, probabilities ---------------------------------------------------------
// S[r][j] += kadd[j] for every row of the tile (n a multiple of 8).
FD_INLINE void add_key_mask(float* S, const float* kadd, int64_t n) {
  for (int64_t j = 0; j < n; j += kW) {
    const vf m = loadv(kadd + j);
    FD_UNROLL for (int r = 0; r < kR; ++r) storev(S + r * kBk + j, loadv(S + r * kBk + j) + m);
  }
}

// S[r][j] += log2(e) * bias[b, h, i0 + r, j0 + j] for r < rows, j < n (element-wise through strides:
// a bias is rare in these models and broadcast in any direction).
void add_bias(const AttentionArgs& a, int64_t b, int64_t h, int64_t i0, int64_t rows, int64_t j0, int64_t n,
              float* S) {
  const int64_t* st = a.bias_strides;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = b * st[0] + h * st[1] + (i0 + r) * st[2] + j0 * st[3];
    for (int64_t j = 0; j < n; ++j) S[r * kBk + j] += kLog2e * load_float(a.bias, a.dtype, base + j * st[3]);
  }
}

// kadd: the additive mask of keys j0 .. j0 + n (0 or -inf; padding keys -inf).
void add_masks(const AttentionArgs& a, const float* kadd, int64_t b, int64_t h, int64_t i0, int64_t rows, int64_t j0,
               int64_t n, float* S) {
  if (a.key_mask != nullptr || j0 + n > a.nk) add_key_mask(S, kadd, n);
  if (a.bias != nullptr && rows > 0) add_bias(a, b, h, i0, rows, j0, std::min(n, a.nk - j0), S);
}

FD_INLINE float row_max(const float* s, int64_t n) {
  vf m = splat(-kInf);
  for (int64_t j = 0; j < n; j += kW) m = vmax(m, loadv(s + j));
  return hmax(m);
}

// s[j] = 2^(s[j] - sub) for j < n; returns their sum.
FD_INLINE float exp_row(float* s, int64_t n, float sub) {
  vf sum{};
  const vf vs = splat(sub);
  for (int64_t j = 0; j < n; j += kW) {
    const vf p = vexp2(loadv(s + j) - vs);
    storev(s + j, p);
    sum += p;
  }
  return hsum(sum);
}

// ---- conversions between the tensors and the float rows -------------------------------------------
// dst[d] = mul * src[d * stride] for d < D, 0 for D <= d < dp.
template <typename T>
void load_row_t(const T* src, int64_t stride, int64_t D, int64_t dp, float mul, float* dst) {
  if (stride == 1) {  // the usual case, written apart so that it vectorises
    for (int64_t d = 0; d < D; ++d) dst[d] = mul * to_float(src[d]);
  } else {
    for (int64_t d = 0; d < D; ++d) dst[d] = mul * to_float(src[d * stride]);
  }
  for (int64_t d = D; d < dp; ++d) dst[d] = 0.0f;
}

void load_row(const void* base, DType t, int64_t offset, int64_t stride, int64_t D, int64_t dp, float mul, float* dst) {
  switch (t) {
    case DType::f32: return load_row_t(static_cast<const float*>(base) + offset, stride, D, dp, mul, dst);
    case DType::f16: return load_row_t(static_cast<const half*>(base) + offset, stride, D, dp, mul, dst);
    case DType::bf16: return load_row_t(static_cast<const bf16*>(base) + offset, stride, D, dp, mul, dst);
  }
}

template <typename T>
void store_row_t(T* dst, int64_t D, float mul, const float* src) {
  for (int64_t d = 0; d < D; ++d) dst[d] = from_float<T>(mul * src[d]);
}

// The contiguous (.., D) row at element `offset` of base = mul * src[0 .. D).
void store_row(void* base, DType t, int64_t offset, int64_t D, float mul, const float* src) {
  switch (t) {
    case DType::f32: return store_row_t(static_cast<float*>(base) + offset, D, mul, src);
    case DType::f16: return store_row_t(static_cast<half*>(base) + offset, D, mul, src);
    case DType::bf16: return store_row_t(static_cast<bf16*>(base) + offset, D, mul, src);
  }
}

FD_INLINE int64_t row_offset(const int64_t* st, int64_t b, int64_t n, int64_t h) {
  return b * st[0] + n * st[1] + h * st[2];
}

// A per-thread float buffer of at least n elements, kept between calls (no page faults per call).
// Slot 0 is a task's, slot 1 the packing helpers' (called inside tasks).
template <int Slot = 0>
float* scratch(int64_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < static_cast<size_t>(n)) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

// Per-thread packed rows of one (b, h), kept while the same call's next task is on the same (b, h)
// (tasks of a (b, h) are consecutive, and at::parallel_for hands each thread a consecutive range):
// every task packs what it reads, so a call needs one parallel region, not a packing pass first.
struct Packed {
  uint64_t call = 0;
  int64_t bh = -1;
  std::vector<float> buf;
  // Whether (call, bh) must be packed now; grows the buffer to n floats if so.
  bool miss(const AttentionArgs& a, int64_t bh_, int64_t n) {
    if (call == a.call && bh == bh_) return false;
    if (buf.size() < static_cast<size_t>(n)) buf.resize(static_cast<size_t>(n));
    call = a.call;
    bh = bh_;
    return true;
  }
};

// Keys [j0, j0 + ld) of (b, h) (ld a multiple of 16; keys >= Nk are zeros), each output optional:
// kn (ld, dp), vn (ld, dp), kadd (ld) additive mask, and kt, vt transposed per block of kBk keys,
// (ld / kBk rounded up, dp, kBk): block j0 / kBk starts at j0 * dp and its dp rows are kBk floats
// apart, where one (dp, ld) matrix had rows a power-of-two number of KiB apart for long sequences,
// and dot_tile's rows fell into the same few L1 sets (D = 64 ran 1.4x slower).
void pack_keys(const AttentionArgs& a, int64_t b, int64_t h, int64_t j0, int64_t ld, float* kt, float* kn, float* vn,
               float* vt, float* kadd) {
  const int64_t dp = a.dp, D = a.head_dim;
  float* kr = scratch<1>(2 * dp);
  float* vr = kr + dp;
  for (int64_t jj = 0; jj < ld; ++jj) {
    const int64_t j = j0 + jj;
    const bool real = j < a.nk;
    if (real) {
      load_row(a.k, a.dtype, row_offset(a.k_strides, b, j, h), a.k_strides[3], D, dp, 1.0f, kr);
      load_row(a.v, a.dtype, row_offset(a.v_strides, b, j, h), a.v_strides[3], D, dp, 1.0f, vr);
    } else {
      std::fill(kr, kr + 2 * dp, 0.0f);
    }
    kadd[jj] = real && (a.key_mask == nullptr || a.key_mask[b * a.nk + j] != 0) ? 0.0f : -kInf;
    float* ktj = kt + (jj / kBk) * dp * kBk + jj % kBk;
    for (int64_t d = 0; d < dp; ++d) ktj[d * kBk] = kr[d];
    if (kn) std::copy(kr, kr + dp, kn + jj * dp);
    if (vn) std::copy(vr, vr + dp, vn + jj * dp);
    if (vt) {
      float* vtj = vt + (jj / kBk) * dp * kBk + jj % kBk;
      for (int64_t d = 0; d < dp; ++d) vtj[d * kBk] = vr[d];
    }
  }
}

// The backward's query side of (b, h), rows [0, nq_pad): qc = q * scale * log2(e), dof = grad_out
// (nq_pad, dp); lse2 = lse * log2(e) and delta = rowsum(grad_out * out) (nq_pad); padding rows get
// zeros and lse2 = +inf, so their P = 2^-inf = 0 contributes nothing.
void pack_queries(const AttentionArgs& a, int64_t b, int64_t h, float* qc, float* dof, float* lse2, float* delta) {
  const int64_t dp = a.dp, D = a.head_dim, bh = b * a.heads + h;
  float* o = scratch<1>(dp);
  for (int64_t i = 0; i < a.nq_pad; ++i) {
    float *q = qc + i * dp, *g = dof + i * dp;
    if (i >= a.nq) {
      std::fill(q, q + dp, 0.0f);
      std::fill(g, g + dp, 0.0f);
      lse2[i] = kInf;
      delta[i] = 0.0f;
      continue;
    }
    load_row(a.q, a.dtype, row_offset(a.q_strides, b, i, h), a.q_strides[3], D, dp, a.scale * kLog2e, q);
    load_row(a.grad_out, a.dtype, row_offset(a.grad_out_strides, b, i, h), a.grad_out_strides[3], D, dp, 1.0f, g);
    load_row(a.out_in, a.dtype, ((b * a.nq + i) * a.heads + h) * D, 1, D, dp, 1.0f, o);
    float sum = 0.0f;
    for (int64_t d = 0; d < D; ++d) sum += g[d] * o[d];
    lse2[i] = a.lse_in[bh * a.nq + i] * kLog2e;
    delta[i] = sum;
  }
}

// ---- forward --------------------------------------------------------------------------------------
template <int DP>
void fwd_rows(const AttentionArgs& a, int64_t bh, int64_t i0, int64_t i1) {
  const int64_t dp = DP ? DP : a.dp, D = a.head_dim, b = bh / a.heads, h = bh % a.heads;
  const int64_t rows = i1 - i0, rows_pad = (rows + kR - 1) / kR * kR;
  float* Q = scratch(2 * rows_pad * dp + 2 * rows_pad + kR * kBk + kW);
  float *O = Q + rows_pad * dp, *m = O + rows_pad * dp, *l = m + rows_pad, *S = l + rows_pad, *alpha = S + kR * kBk;
  const float qmul = a.scale * kLog2e;
  for (int64_t r = 0; r < rows_pad; ++r) {
    if (r < rows) {
      load_row(a.q, a.dtype, row_offset(a.q_strides, b, i0 + r, h), a.q_strides[3], D, dp, qmul, Q + r * dp);
    } else {
      std::fill(Q + r * dp, Q + (r + 1) * dp, 0.0f);
    }
  }
  std::fill(O, O + rows_pad * dp, 0.0f);
  std::fill(m, m + rows_pad, -kInf);
  std::fill(l, l + rows_pad, 0.0f);
  thread_local Packed keys;
  const int64_t ld = a.nk_pad;
  const int64_t ldb = (ld + kBk - 1) / kBk * kBk;  // kt's blocks
  if (keys.miss(a, bh, dp * ldb + dp * ld + ld)) {
    float* p = keys.buf.data();
    pack_keys(a, b, h, 0, ld, p, nullptr, p + dp * ldb, nullptr, p + dp * ldb + dp * ld);
  }
  const float *kt = keys.buf.data(), *vn = kt + dp * ldb, *kadd = vn + dp * ld;
  for (int64_t j0 = 0; j0 < ld; j0 += kBk) {
    const int64_t n = std::min(kBk, ld - j0);
    for (int64_t r0 = 0; r0 < rows_pad; r0 += kR) {
      dot_tile<DP>(Q + r0 * dp, dp, kt + j0 * dp, kBk, n, S);
      add_masks(a, kadd + j0, b, h, i0 + r0, std::min<int64_t>(kR, rows - r0), j0, n, S);
      vf shift{}, m_use{};  // per row: m_old - m_use, and m_use (lanes >= kR unused)
      for (int r = 0; r < kR; ++r) {
        const float m_old = m[r0 + r], m_new = std::max(m_old, row_max(S + r * kBk, n));
        // While every key so far is excluded (m = -inf), subtract 0: the probabilities are 2^-inf = 0.
        m_use[r] = m_new == -kInf ? 0.0f : m_new;
        shift[r] = m_old - m_use[r];
        m[r0 + r] = m_new;
      }
      storev(alpha, vexp2(shift));  // the rows' rescaling factors, one vector exp for all of them
      for (int r = 0; r < kR; ++r) l[r0 + r] = l[r0 + r] * alpha[r] + exp_row(S + r * kBk, n, m_use[r]);
      acc_rows<DP>(S, vn + j0 * dp, dp, n, O + r0 * dp, alpha);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = i0 + r, offset = ((b * a.nq + i) * a.heads + h) * D;
    if (m[r] == -kInf) {  // no attended key: zeros, and lse = +inf so the backward's P is exactly 0
      std::fill(O + r * dp, O + (r + 1) * dp, 0.0f);
      store_row(a.out, a.dtype, offset, D, 1.0f, O + r * dp);
      a.lse[bh * a.nq + i] = kInf;
    } else {
      store_row(a.out, a.dtype, offset, D, 1.0f / l[r], O + r * dp);
      a.lse[bh * a.nq + i] = (m[r] + std::log2(l[r])) * kLn2;
    }
  }
}

// ---- backward -------------------------------------------------------------------------------------
template <int DP>
void bwd_chunk(const AttentionArgs& a, int64_t bh, int64_t c) {
  const int64_t dp = DP ? DP : a.dp, D = a.head_dim, b = bh / a.heads, h = bh % a.heads, nq_pad = a.nq_pad;
  thread_local Packed queries;
  if (queries.miss(a, bh, 2 * nq_pad * dp + 2 * nq_pad)) {
    float* p = queries.buf.data();
    pack_queries(a, b, h, p, p + nq_pad * dp, p + 2 * nq_pad * dp, p + 2 * nq_pad * dp + nq_pad);
  }
  const float *qc = queries.buf.data(), *dof = qc + nq_pad * dp, *lse2 = dof + nq_pad * dp, *delta = lse2 + nq_pad;
  // This chunk's keys, packed here: k transposed (scores), k (grad_q), v transposed (dP).
  const int64_t k0 = c * a.chunk_blocks * kBk, ld = std::min(a.nk_pad, k0 + a.chunk_blocks * kBk) - k0;
  const int64_t ldb = (ld + kBk - 1) / kBk * kBk;  // kt's and vt's blocks
  float* kt = scratch(2 * dp * ldb + dp * ld + ld + 2 * kR * kBk + 2 * kBk * dp + (a.chunks == 1 ? nq_pad * dp : 0));
  float *kn = kt + dp * ldb, *vt = kn + dp * ld, *kadd = vt + dp * ldb;
  float *S = kadd + ld, *dS = S + kR * kBk, *dV = dS + kR * kBk, *dK = dV + kBk * dp;
  pack_keys(a, b, h, k0, ld, kt, kn, nullptr, vt, kadd);
  // One chunk: grad_q is finished here; several: this chunk's partial, summed by attention_bwd_dq.
  float* dq = a.chunks == 1 ? dK + kBk * dp : a.dq_part + (bh * a.chunks + c) * nq_pad * dp;
  std::fill(dq, dq + nq_pad * dp, 0.0f);
  for (int64_t j0 = 0; j0 < ld; j0 += kBk) {
    const int64_t n = std::min(kBk, ld - j0);
    std::fill(dV, dV + 2 * kBk * dp, 0.0f);  // dV and dK
    for (int64_t r0 = 0; r0 < nq_pad; r0 += kR) {
      dot_tile<DP>(qc + r0 * dp, dp, kt + j0 * dp, kBk, n, S);
      add_masks(a, kadd + j0, b, h, r0, std::min<int64_t>(kR, a.nq - r0), k0 + j0, n, S);
      dot_tile<DP>(dof + r0 * dp, dp, vt + j0 * dp, kBk, n, dS);  // dP = dO v^T
      for (int r = 0; r < kR; ++r) {
        const vf l2 = splat(lse2[r0 + r]), dl = splat(delta[r0 + r]);
        for (int64_t j = 0; j < n; j += kW) {
          const vf p = vexp2(loadv(S + r * kBk + j) - l2);
          storev(S + r * kBk + j, p);
          storev(dS + r * kBk + j, p * (loadv(dS + r * kBk + j) - dl));
        }
      }
      acc_cols<DP>(S, dof + r0 * dp, dp, n, dV);
      acc_cols<DP>(dS, qc + r0 * dp, dp, n, dK);
      acc_rows<DP>(dS, kn + j0 * dp, dp, n, dq + r0 * dp, nullptr);
    }
    // dk = scale * dS^T q = ln2 * dS^T qc (qc = q * scale * log2(e)).
    for (int64_t j = 0; j < std::min(n, a.nk - k0 - j0); ++j) {
      const int64_t offset = ((b * a.nk + k0 + j0 + j) * a.heads + h) * D;
      store_row(a.grad_k, a.dtype, offset, D, kLn2, dK + j * dp);
      store_row(a.grad_v, a.dtype, offset, D, 1.0f, dV + j * dp);
    }
  }
  if (a.chunks == 1) {
    for (int64_t i = 0; i < a.nq; ++i) {
      store_row(a.grad_q, a.dtype, ((b * a.nq + i) * a.heads + h) * D, D, a.scale, dq + i * dp);
    }
  }
}

#define FD_HEAD_DIM_DISPATCH(fn, ...)       \
  switch (a.dp) {                           \
    case 8: return fn<8>(__VA_ARGS__);      \
    case 16: return fn<16>(__VA_ARGS__);    \
    case 32: return fn<32>(__VA_ARGS__);    \
    case 40: return fn<40>(__VA_ARGS__);    \
    case 64: return fn<64>(__VA_ARGS__);    \
    case 72: return fn<72>(__VA_ARGS__);    \
    case 80: return fn<80>(__VA_ARGS__);    \
    case 128: return fn<128>(__VA_ARGS__);  \
    default: return fn<0>(__VA_ARGS__);     \
  }

}  // namespace

void attention_fwd_rows(const AttentionArgs& a, int64_t bh, int64_t i0, int64_t i1) {
  FD_HEAD_DIM_DISPATCH(fwd_rows, a, bh, i0, i1)
}

void attention_bwd_chunk(const AttentionArgs& a, int64_t bh, int64_t c) { FD_HEAD_DIM_DISPATCH(bwd_chunk, a, bh, c) }

void attention_bwd_dq(const AttentionArgs& a, int64_t bh, int64_t i0, int64_t i1) {
  const int64_t dp = a.dp, D = a.head_dim, b = bh / a.heads, h = bh % a.heads;
  float* sum = scratch(dp);
  for (int64_t i = i0; i < i1; ++i) {
    const float* part = a.dq_part + (bh * a.chunks * a.nq_pad + i) * dp;
    std::copy(part, part + dp, sum);
    for (int64_t c = 1; c < a.chunks; ++c) {
      const float* p = part + c * a.nq_pad * dp;
      for (int64_t d = 0; d < dp; ++d) sum[d] += p[d];
    }
    store_row(a.grad_q, a.dtype, ((b * a.nq + i) * a.heads + h) * D, D, a.scale, sum);
  }
}

}  // namespace fastdiff::cpu::FASTDIFF_ISA
