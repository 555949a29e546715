// Runs the CUDA attention kernels of csrc/cuda/attention_*.cuh on the host emulator
// (emulator.h) and checks forward and backward against a float64 reference: every compiled head-dim
// width, both forward paths, boundary tiles, masks (with fully masked rows), broadcast biases and
// strided (B, H, N, D) / fused-QKV layouts. Built and run by tests/cuda_emu/run.sh (and the slow
// pytest tests/cuda_emu/test_attention_emulated.py).
//
//   attention_emu_test [substring]   runs the cases whose name contains the substring
//
// Criterion: with the emulator's exact tensor-core products, a kernel's error comes from rounding
// P, dS and the outputs to 16 bits; max |got - ref| must stay below kTolUlps units of the dtype's
// rounding (2^-11 fp16, 2^-8 bf16) times max(max |ref|, 0.01). A wrong fragment, index or mask is off by O(1)
// of max |ref|. Fully masked rows must be exactly 0 (lse +inf), masked keys' dK/dV exactly 0, and
// no output element may be left unwritten (outputs start as NaN).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cuda/attention_dispatch.cuh"
#include "emu_check.h"
#include "emulator.h"

using fastdiff::DType;
using fastdiff::cuda::AttentionBwdParams;
using fastdiff::cuda::AttentionParams;
namespace attn = fastdiff::cuda::attn;
namespace emu = fastdiff::cuda::emu;
using emu::Buffer;
using emu::Result;

namespace {

struct EmuRunner {
  int launches = 0;
  template <class K>
  cudaError_t launch(const attn::Args& a, int64_t grid, size_t smem) {
    ++launches;
    const size_t guard = 256;
    std::vector<unsigned char> buf(smem + 2 * guard + 16, 0xFF);  // shared memory starts poisoned
    for (int64_t blk = 0; blk < grid; ++blk) {
      std::memset(buf.data(), 0xFF, buf.size());
      auto base = (reinterpret_cast<uintptr_t>(buf.data()) + guard + 15) / 16 * 16;
      char* s = reinterpret_cast<char*>(base);
      emu::run_block(K::kThreads, s, smem, [&](int tid) { K::run(a, s, static_cast<int>(blk), tid); });
      for (unsigned char* p = buf.data(); p < reinterpret_cast<unsigned char*>(s); ++p) {
        if (*p != 0xFF) {
          std::fprintf(stderr, "shared memory written below the block's allocation\n");
          std::abort();
        }
      }
      for (unsigned char* p = reinterpret_cast<unsigned char*>(s) + smem; p < buf.data() + buf.size(); ++p) {
        if (*p != 0xFF) {
          std::fprintf(stderr, "shared memory written past the block's %zu bytes\n", smem);
          std::abort();
        }
      }
    }
    return cudaSuccess;
  }
};

uint16_t to_bits(float x, DType t) {
  uint16_t r;
  if (t == DType::f16) {
    const __half h = __float2half_rn(x);
    std::memcpy(&r, &h, 2);
  } else {
    const __nv_bfloat16 h = __float2bfloat16_rn(x);
    std::memcpy(&r, &h, 2);
  }
  return r;
}

double from_bits(uint16_t b, DType t) {
  if (t == DType::f16) {
    __half h;
    std::memcpy(static_cast<void*>(&h), &b, 2);
    return __half2float(h);
  }
  __nv_bfloat16 h;
  std::memcpy(static_cast<void*>(&h), &b, 2);
  return __bfloat162float(h);
}

enum class Layout { kContig, kBHND, kFusedQKV };
enum class Mask { kNone, kKeyMask, kBiasQK, kBiasB11K, kBiasFull, kBias1HQ1, kBoth };

struct Case {
  std::string name;
  DType dtype;
  int B, Nq, Nk, H, D;
  Layout layout = Layout::kContig;
  Mask mask = Mask::kNone;
  attn::FwdPath path = attn::FwdPath::kAuto;
  double scale = 0;  // 0: 1/sqrt(D)
  int short_rows = 0;  // short path: query rows per block (0: the launcher's choice)
};

// A (B, N, H, D) view into a storage of 16-bit elements.
struct View {
  int64_t off, sb, sn, sh;
  int64_t at(int b, int n, int h, int d) const { return off + b * sb + n * sn + h * sh + d; }
};

constexpr double kTolUlps = 12.0;

// max |got - ref| / (u * max(max |ref|, 0.01)), NaN -> infinity. The floor covers gradients that
// are exactly 0 in exact arithmetic (one key: p = 1, dS = 0) but not after rounding.
double err_ulps(const std::vector<double>& got, const std::vector<double>& ref, double u) {
  double mref = 0.01, err = 0;
  for (double r : ref) mref = std::fmax(mref, std::fabs(r));
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i])) return std::numeric_limits<double>::infinity();
    err = std::fmax(err, std::fabs(got[i] - ref[i]));
  }
  return err / (u * mref);
}

Result run_case(const Case& c, std::mt19937& rng) {
  Result res;
  const DType t = c.dtype;
  const int B = c.B, Nq = c.Nq, Nk = c.Nk, H = c.H, D = c.D;
  const double scale = c.scale != 0 ? c.scale : 1.0 / std::sqrt(static_cast<double>(D));
  std::normal_distribution<float> normal(0.f, 1.f);

  // ---- inputs --------------------------------------------------------------------------------
  int64_t q_elems, kv_elems;
  View vq, vk, vv;
  if (c.layout == Layout::kContig) {
    vq = {0, int64_t{Nq} * H * D, int64_t{H} * D, D};
    vk = {0, int64_t{Nk} * H * D, int64_t{H} * D, D};
    vv = vk;
    q_elems = int64_t{B} * Nq * H * D;
    kv_elems = int64_t{B} * Nk * H * D;
  } else if (c.layout == Layout::kBHND) {  // (B, H, N, D) storage, read as a (B, N, H, D) view
    vq = {0, int64_t{H} * Nq * D, D, int64_t{Nq} * D};
    vk = {0, int64_t{H} * Nk * D, D, int64_t{Nk} * D};
    vv = vk;
    q_elems = int64_t{B} * Nq * H * D;
    kv_elems = int64_t{B} * Nk * H * D;
  } else {  // (B, N, 3, H, D): q, k, v are views of one fused projection (Nq == Nk)
    const int64_t sn = 3 * int64_t{H} * D;
    vq = {0, int64_t{Nq} * sn, sn, D};
    vk = {int64_t{H} * D, int64_t{Nq} * sn, sn, D};
    vv = {2 * int64_t{H} * D, int64_t{Nq} * sn, sn, D};
    q_elems = int64_t{B} * Nq * sn;
    kv_elems = 0;
  }
  const bool fused = c.layout == Layout::kFusedQKV;
  Buffer bq(q_elems * 2), bk(fused ? 16 : kv_elems * 2), bv(fused ? 16 : kv_elems * 2);
  auto* sq = reinterpret_cast<uint16_t*>(bq.data());
  auto* sk = fused ? sq : reinterpret_cast<uint16_t*>(bk.data());
  auto* sv = fused ? sq : reinterpret_cast<uint16_t*>(bv.data());
  for (int64_t i = 0; i < q_elems; ++i) sq[i] = to_bits(normal(rng), t);
  if (!fused) {
    for (int64_t i = 0; i < kv_elems; ++i) sk[i] = to_bits(normal(rng), t);
    for (int64_t i = 0; i < kv_elems; ++i) sv[i] = to_bits(normal(rng), t);
  }
  auto Q = [&](int b, int i, int h, int d) { return from_bits(sq[vq.at(b, i, h, d)], t); };
  auto K = [&](int b, int j, int h, int d) { return from_bits(sk[vk.at(b, j, h, d)], t); };
  auto V = [&](int b, int j, int h, int d) { return from_bits(sv[vv.at(b, j, h, d)], t); };

  // key mask (B, Nk): random, and the last sample fully masked when B > 1
  const bool use_key_mask = c.mask == Mask::kKeyMask || c.mask == Mask::kBoth;
  Buffer bmask(int64_t{B} * Nk, 1);
  auto* kmask = bmask.data();
  if (use_key_mask) {
    std::bernoulli_distribution keep(0.6);
    for (int b = 0; b < B; ++b) {
      for (int j = 0; j < Nk; ++j) kmask[int64_t{b} * Nk + j] = (B > 1 && b == B - 1) ? 0 : keep(rng);
    }
  }
  // bias: a dense storage of the broadcast shape, strides 0 on broadcast dims
  int bdims[4] = {1, 1, 1, 1};
  switch (c.mask) {
    case Mask::kBiasQK: bdims[2] = Nq; bdims[3] = Nk; break;
    case Mask::kBiasB11K: bdims[0] = B; bdims[3] = Nk; break;
    case Mask::kBiasFull:
    case Mask::kBoth: bdims[0] = B; bdims[1] = H; bdims[2] = Nq; bdims[3] = Nk; break;
    case Mask::kBias1HQ1: bdims[1] = H; bdims[2] = Nq; break;
    default: break;
  }
  const bool use_bias = c.mask != Mask::kNone && c.mask != Mask::kKeyMask;
  int64_t bstr[4];
  {
    int64_t s = 1;
    for (int i = 3; i >= 0; --i) {
      bstr[i] = bdims[i] == 1 ? 0 : s;
      s *= bdims[i];
    }
  }
  const int64_t bias_elems = int64_t{bdims[0]} * bdims[1] * bdims[2] * bdims[3];
  Buffer bbias(bias_elems * 2);
  auto* sbias = reinterpret_cast<uint16_t*>(bbias.data());
  for (int64_t i = 0; i < bias_elems; ++i) sbias[i] = to_bits(normal(rng), t);
  if (c.mask == Mask::kBiasFull || c.mask == Mask::kBoth) {
    // a fully masked row (query 3) and a row attending only keys >= 20 (query 5), every (b, h)
    for (int b = 0; b < B; ++b) {
      for (int h = 0; h < H; ++h) {
        for (int j = 0; j < Nk; ++j) {
          const int64_t base = b * bstr[0] + h * bstr[1] + j * bstr[3];
          if (Nq > 3) sbias[base + 3 * bstr[2]] = to_bits(-INFINITY, t);
          if (Nq > 5 && j < 20 && Nk > 20) sbias[base + 5 * bstr[2]] = to_bits(-INFINITY, t);
        }
      }
    }
  }
  auto bias_at = [&](int b, int h, int i, int j) {
    return use_bias ? from_bits(sbias[b * bstr[0] + h * bstr[1] + i * bstr[2] + j * bstr[3]], t) : 0.0;
  };

  // dO (B, Nq, H, D), contiguous but with a row padding (strides multiple of 8 elements) to exercise strides
  const int64_t do_sh = D, do_sn = int64_t{H} * D + 8, do_sb = int64_t{Nq} * do_sn;
  Buffer bdo(int64_t{B} * do_sb * 2);
  auto* sdo = reinterpret_cast<uint16_t*>(bdo.data());
  for (int64_t i = 0; i < int64_t{B} * do_sb; ++i) sdo[i] = to_bits(normal(rng), t);
  auto DO = [&](int b, int i, int h, int d) { return from_bits(sdo[b * do_sb + i * do_sn + h * do_sh + d], t); };

  // ---- float64 reference -------------------------------------------------------------------------
  const int64_t nO = int64_t{B} * Nq * H * D, nKV = int64_t{B} * Nk * H * D;
  std::vector<double> ro(nO, 0), rdq(nO, 0), rdk(nKV, 0), rdv(nKV, 0), rlse(int64_t{B} * H * Nq);
  std::vector<char> kv_masked_zero(nKV, 0);  // dK/dV rows that must be exactly 0 (masked keys)
  std::vector<char> row_dead(int64_t{B} * H * Nq, 0);
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < H; ++h) {
      std::vector<double> p(Nk), dp(Nk);
      for (int i = 0; i < Nq; ++i) {
        double m = -INFINITY;
        std::vector<double> s(Nk);
        for (int j = 0; j < Nk; ++j) {
          double x = 0;
          for (int d = 0; d < D; ++d) x += Q(b, i, h, d) * K(b, j, h, d);
          x = scale * x + bias_at(b, h, i, j);
          if (use_key_mask && !kmask[int64_t{b} * Nk + j]) x = -INFINITY;
          s[j] = x;
          m = std::fmax(m, x);
        }
        const int64_t st = (int64_t{b} * H + h) * Nq + i;
        if (m == -INFINITY) {
          rlse[st] = INFINITY;
          row_dead[st] = 1;
          continue;
        }
        double l = 0;
        for (int j = 0; j < Nk; ++j) l += (p[j] = std::exp(s[j] - m));
        for (int j = 0; j < Nk; ++j) p[j] /= l;
        rlse[st] = m + std::log(l);
        auto oi = [&](int d) -> double& { return ro[((int64_t{b} * Nq + i) * H + h) * D + d]; };
        for (int d = 0; d < D; ++d) {
          double o = 0;
          for (int j = 0; j < Nk; ++j) o += p[j] * V(b, j, h, d);
          oi(d) = o;
        }
        double delta = 0;
        for (int d = 0; d < D; ++d) delta += DO(b, i, h, d) * oi(d);
        for (int j = 0; j < Nk; ++j) {
          double x = 0;
          for (int d = 0; d < D; ++d) x += DO(b, i, h, d) * V(b, j, h, d);
          dp[j] = x;
        }
        for (int j = 0; j < Nk; ++j) {
          const double ds = p[j] * (dp[j] - delta);
          for (int d = 0; d < D; ++d) {
            rdq[((int64_t{b} * Nq + i) * H + h) * D + d] += scale * ds * K(b, j, h, d);
            rdk[((int64_t{b} * Nk + j) * H + h) * D + d] += scale * ds * Q(b, i, h, d);
            rdv[((int64_t{b} * Nk + j) * H + h) * D + d] += p[j] * DO(b, i, h, d);
          }
        }
      }
    }
  }
  if (use_key_mask) {
    for (int b = 0; b < B; ++b) {
      for (int j = 0; j < Nk; ++j) {
        if (kmask[int64_t{b} * Nk + j]) continue;
        for (int h = 0; h < H; ++h) {
          for (int d = 0; d < D; ++d) kv_masked_zero[((int64_t{b} * Nk + j) * H + h) * D + d] = 1;
        }
      }
    }
  }

  // ---- kernels on the emulator -----------------------------------------------------------------
  AttentionParams p{};
  p.q = sq + vq.off;
  p.k = sk + vk.off;
  p.v = sv + vv.off;
  p.dtype = t;
  p.batch = B;
  p.heads = H;
  p.nq = Nq;
  p.nk = Nk;
  p.head_dim = D;
  const View* views[3] = {&vq, &vk, &vv};
  int64_t* strides[3] = {p.q_strides, p.k_strides, p.v_strides};
  for (int x = 0; x < 3; ++x) {
    strides[x][0] = views[x]->sb;
    strides[x][1] = views[x]->sn;
    strides[x][2] = views[x]->sh;
  }
  p.key_mask = use_key_mask ? kmask : nullptr;
  p.bias = use_bias ? sbias : nullptr;
  for (int i = 0; i < 4; ++i) p.bias_strides[i] = bstr[i];
  p.scale = static_cast<float>(scale);

  Buffer bout(nO * 2), blse(int64_t{B} * H * Nq * 4);
  EmuRunner runner;
  if (attn::run_forward(p, bout.data(), reinterpret_cast<float*>(blse.data()), runner, c.path, c.short_rows) != cudaSuccess) {
    res.fail("run_forward refused");
    return res;
  }
  auto* gout = reinterpret_cast<uint16_t*>(bout.data());
  auto* glse = reinterpret_cast<float*>(blse.data());
  std::vector<double> go(nO);
  for (int64_t i = 0; i < nO; ++i) go[i] = from_bits(gout[i], t);
  const double u = t == DType::f16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
  char buf[256];
  const double e_out = err_ulps(go, ro, u);
  double e_lse = 0;
  for (size_t i = 0; i < rlse.size(); ++i) {
    if (row_dead[i]) {
      if (!(std::isinf(glse[i]) && glse[i] > 0)) res.fail("lse of a fully masked row is not +inf");
      continue;
    }
    if (std::isnan(glse[i])) e_lse = INFINITY;
    e_lse = std::fmax(e_lse, std::fabs(glse[i] - rlse[i]) / std::fmax(1.0, std::fabs(rlse[i])));
  }
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < H; ++h) {
      for (int i = 0; i < Nq; ++i) {
        if (!row_dead[(int64_t{b} * H + h) * Nq + i]) continue;
        for (int d = 0; d < D; ++d) {
          if (gout[((int64_t{b} * Nq + i) * H + h) * D + d] != 0) res.fail("fully masked row not exactly 0");
        }
      }
    }
  }

  // backward
  AttentionBwdParams bp{};
  bp.fwd = p;
  bp.grad_out = sdo;
  bp.grad_out_strides[0] = do_sb;
  bp.grad_out_strides[1] = do_sn;
  bp.grad_out_strides[2] = do_sh;
  bp.out = gout;
  bp.lse = glse;
  Buffer bdelta(int64_t{B} * H * Nq * 4), bdq(nO * 2), bdk(nKV * 2), bdv(nKV * 2);
  if (attn::run_backward(bp, reinterpret_cast<float*>(bdelta.data()), bdq.data(), bdk.data(), bdv.data(), runner) !=
      cudaSuccess) {
    res.fail("run_backward refused");
    return res;
  }
  auto* gdq = reinterpret_cast<uint16_t*>(bdq.data());
  auto* gdk = reinterpret_cast<uint16_t*>(bdk.data());
  auto* gdv = reinterpret_cast<uint16_t*>(bdv.data());
  std::vector<double> vdq(nO), vdk(nKV), vdv(nKV);
  for (int64_t i = 0; i < nO; ++i) vdq[i] = from_bits(gdq[i], t);
  for (int64_t i = 0; i < nKV; ++i) vdk[i] = from_bits(gdk[i], t);
  for (int64_t i = 0; i < nKV; ++i) vdv[i] = from_bits(gdv[i], t);
  const double e_dq = err_ulps(vdq, rdq, u), e_dk = err_ulps(vdk, rdk, u), e_dv = err_ulps(vdv, rdv, u);
  for (int64_t i = 0; i < nKV; ++i) {
    if (kv_masked_zero[i] && (gdk[i] != 0 || gdv[i] != 0)) {
      res.fail("masked key has a nonzero dK/dV");
      break;
    }
  }
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < H; ++h) {
      for (int i = 0; i < Nq; ++i) {
        if (!row_dead[(int64_t{b} * H + h) * Nq + i]) continue;
        for (int d = 0; d < D; ++d) {
          if (gdq[((int64_t{b} * Nq + i) * H + h) * D + d] != 0) res.fail("fully masked row has a nonzero dQ");
        }
      }
    }
  }
  for (Buffer* x : {&bq, &bk, &bv, &bmask, &bbias, &bdo, &bout, &blse, &bdelta, &bdq, &bdk, &bdv}) {
    if (!x->guards_intact()) res.fail("a kernel wrote outside a buffer");
  }
  const double worst = std::fmax(std::fmax(e_out, e_dq), std::fmax(e_dk, e_dv));
  if (!(worst <= kTolUlps)) res.fail("error above tolerance");
  if (!(e_lse <= 1e-5)) res.fail("lse error");
  std::snprintf(buf, sizeof buf, "out %6.2f  dq %6.2f  dk %6.2f  dv %6.2f  (units of u*max|ref|)  lse %.1e  launches %d",
                e_out, e_dq, e_dk, e_dv, e_lse, runner.launches);
  res.notes = buf + res.notes;
  return res;
}

}  // namespace

int main(int argc, char** argv) {
  using P = attn::FwdPath;
  const DType F = DType::f16, BF = DType::bf16;
  const std::vector<Case> cases = {
      // name, dtype, B, Nq, Nk, H, D, layout, mask, path
      {"d40 f16 cross short", F, 1, 33, 77, 2, 40},
      {"d40 f16 cross tiled", F, 1, 33, 77, 2, 40, Layout::kContig, Mask::kNone, P::kTiled},
      {"d64 bf16 keymask short", BF, 2, 70, 150, 1, 64, Layout::kContig, Mask::kKeyMask},
      {"d64 bf16 keymask tiled", BF, 2, 70, 150, 1, 64, Layout::kContig, Mask::kKeyMask, P::kTiled},
      {"d72 f16 bias(Nq,Nk) tiled", F, 1, 20, 300, 1, 72, Layout::kContig, Mask::kBiasQK, P::kTiled},
      {"d72 bf16 short nk300", BF, 1, 9, 300, 1, 72},
      {"d80 f16 bias(B,1,1,Nk)", F, 2, 17, 45, 2, 80, Layout::kContig, Mask::kBiasB11K},
      {"d96 bf16 bias full -inf rows", BF, 1, 20, 24, 2, 96, Layout::kContig, Mask::kBiasFull},
      {"d96 f16 bias(1,H,Nq,1) tiled", F, 1, 9, 20, 2, 96, Layout::kContig, Mask::kBias1HQ1, P::kTiled},
      {"d128 f16 BHND tiled", F, 1, 70, 130, 2, 128, Layout::kBHND, Mask::kNone, P::kTiled},
      {"d128 bf16 BHND short", BF, 1, 40, 130, 1, 128, Layout::kBHND},
      {"d160 f16 keymask+bias short", F, 2, 33, 77, 1, 160, Layout::kContig, Mask::kBoth},
      {"d160 bf16 tiled", BF, 1, 33, 77, 1, 160, Layout::kContig, Mask::kNone, P::kTiled},
      {"d24 (w32) f16 fused qkv", F, 2, 23, 23, 2, 24, Layout::kFusedQKV},
      {"d8 (w32) bf16 tiled", BF, 1, 20, 70, 1, 8, Layout::kContig, Mask::kNone, P::kTiled},
      {"d48 (w64) f16 keymask", F, 2, 12, 20, 1, 48, Layout::kContig, Mask::kKeyMask},
      {"d136 (w160) f16 tiled", F, 1, 17, 40, 1, 136, Layout::kContig, Mask::kNone, P::kTiled},
      {"d192 bf16 short", BF, 1, 17, 40, 1, 192},
      {"d256 f16 tiled bias", F, 1, 17, 40, 1, 256, Layout::kContig, Mask::kBiasFull},
      {"d200 (w256) bf16 keymask", BF, 2, 9, 33, 1, 200, Layout::kContig, Mask::kKeyMask},
      {"d64 f16 one query one key", F, 1, 1, 1, 1, 64},
      {"d40 f16 one key tiled", F, 1, 17, 1, 1, 40, Layout::kContig, Mask::kNone, P::kTiled},
      {"d72 f16 scale 0.3", F, 1, 20, 45, 2, 72, Layout::kContig, Mask::kNone, P::kAuto, 0.3},
      // short path, 128 query rows per block: each warp walks two 16-row slabs (last block partial)
      {"d64 f16 short 2 slabs per warp", F, 1, 300, 77, 2, 64, Layout::kContig, Mask::kKeyMask, P::kShort, 0, 128},
  };
  std::vector<emu::Case> runs;
  for (const Case& c : cases) {
    // Each case seeds its own generator, so a case's inputs do not depend on which others run.
    runs.push_back({c.name, [c] {
                      std::mt19937 rng(static_cast<unsigned>(std::hash<std::string>{}(c.name)));
                      return run_case(c, rng);
                    }});
  }
  return emu::run_cases(argc, argv, runs);
}
