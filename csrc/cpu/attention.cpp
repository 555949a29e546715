// CPU implementations of fastdiff::attention_fwd and fastdiff::attention_bwd (schemas and contract:
// csrc/ops.cpp): argument checks, outputs and float32 scratch here, threading over (b, h, block),
// the loops in cpu/kernels/attention.cpp. Beyond the CUDA kernels' inputs these take float32 and any
// head dim D >= 1, and read q, k, v and grad_out through any strides (the rows are packed anyway).
//
// Deterministic: each output row (forward), key block (grad_k, grad_v) and grad_q row is computed
// by one task, and grad_q's per-chunk partials are summed in chunk order; the number of chunks is a
// function of the shape, so the bits are the same at any thread count.
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "cpu/common.h"
#include "cpu/kernels/attention.h"

namespace fastdiff::cpu {
namespace {

using Opt = std::optional<at::Tensor>;

// Backward tasks wanted per call: (b, h) pairs are split into chunks of keys until there are about
// this many (more chunks cost grad_q partials), at most kMaxChunks per pair.
constexpr int64_t kBwdTasks = 32;
constexpr int64_t kMaxChunks = 8;

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

void check_4d(const at::Tensor& t, at::ScalarType dtype, const char* op, const char* arg, const char* shape) {
  TORCH_CHECK(t.device().is_cpu(), "fastdiff.", op, ": argument '", arg, "' expected a CPU tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 4, "fastdiff.", op, ": argument '", arg, "' expected a 4-D ", shape, " tensor, got shape ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, "fastdiff.", op, ": argument '", arg, "' expected dtype ", dtype,
              " (like q), got ", t.scalar_type());
}

void set_strides(int64_t (&dst)[4], const at::Tensor& t) {
  for (int i = 0; i < 4; ++i) dst[i] = t.stride(i);
}

// The checked inputs of both ops; keeps alive the tensors that the args point into.
struct Inputs {
  at::Tensor key_mask, bias;
  AttentionArgs a{};
};

Inputs check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Opt& key_mask,
                    const Opt& bias, double scale, const char* op) {
  TORCH_CHECK(q.device().is_cpu(), "fastdiff.", op, ": argument 'q' expected a CPU tensor, got ", q.device());
  TORCH_CHECK(q.dim() == 4, "fastdiff.", op, ": argument 'q' expected a 4-D (B, Nq, H, D) tensor, got shape ",
              q.sizes());
  Inputs in;
  AttentionArgs& a = in.a;
  a.dtype = to_dtype(q, op, "q");
  check_4d(k, q.scalar_type(), op, "k", "(B, Nk, H, D)");
  check_4d(v, q.scalar_type(), op, "v", "(B, Nk, H, D)");
  a.batch = q.size(0), a.nq = q.size(1), a.heads = q.size(2), a.head_dim = q.size(3), a.nk = k.size(1);
  TORCH_CHECK(k.size(0) == a.batch && k.size(2) == a.heads && k.size(3) == a.head_dim && v.sizes() == k.sizes(),
              "fastdiff.", op, ": arguments 'k' and 'v' expected shape (", a.batch, ", Nk, ", a.heads, ", ",
              a.head_dim, ") matching q ", q.sizes(), ", got ", k.sizes(), " and ", v.sizes());
  TORCH_CHECK(a.head_dim >= 1, "fastdiff.", op, ": argument 'q' expected a head dim D >= 1, got D=", a.head_dim);
  TORCH_CHECK(std::isfinite(scale), "fastdiff.", op, ": argument 'scale' expected a finite number, got ", scale);
  if (key_mask.has_value()) {
    const at::Tensor& m = *key_mask;
    TORCH_CHECK(m.device().is_cpu() && m.scalar_type() == at::kBool && m.dim() == 2 && m.size(0) == a.batch &&
                    m.size(1) == a.nk,
                "fastdiff.", op, ": argument 'key_mask' expected a bool (B, Nk) = (", a.batch, ", ", a.nk,
                ") CPU tensor, got ", m.scalar_type(), " ", m.sizes(), " on ", m.device());
    in.key_mask = m.contiguous();
    a.key_mask = static_cast<const uint8_t*>(in.key_mask.const_data_ptr());
  }
  if (bias.has_value()) {
    const at::Tensor& t = *bias;
    TORCH_CHECK(t.device().is_cpu(), "fastdiff.", op, ": argument 'bias' expected a CPU tensor, got ", t.device());
    TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fastdiff.", op,
                ": argument 'bias' expected a floating-point tensor, got ", t.scalar_type());
    const std::vector<int64_t> full{a.batch, a.heads, a.nq, a.nk};
    bool fits = t.dim() <= 4;
    for (int64_t i = 1; fits && i <= t.dim(); ++i) {
      const int64_t s = t.size(t.dim() - i);
      fits = s == 1 || s == full[4 - i];
    }
    TORCH_CHECK(fits, "fastdiff.", op, ": argument 'bias' expected a tensor broadcastable to (B, H, Nq, Nk) = (",
                a.batch, ", ", a.heads, ", ", a.nq, ", ", a.nk, "), got shape ", t.sizes());
    std::vector<int64_t> shape(4 - t.dim(), 1);
    shape.insert(shape.end(), t.sizes().begin(), t.sizes().end());
    // q's dtype (SDPA's convention); broadcast dims get stride 0 from expand, nothing is copied.
    in.bias = t.to(q.scalar_type()).reshape(shape).expand(full);
    a.bias = in.bias.const_data_ptr();
    set_strides(a.bias_strides, in.bias);
  }
  a.q = q.const_data_ptr();
  a.k = k.const_data_ptr();
  a.v = v.const_data_ptr();
  set_strides(a.q_strides, q);
  set_strides(a.k_strides, k);
  set_strides(a.v_strides, v);
  a.scale = static_cast<float>(scale);
  a.dp = round_up(a.head_dim, 8);
  a.nk_pad = round_up(a.nk, 16);
  a.nq_pad = round_up(a.nq, kAttnRows);
  return in;
}

at::Tensor floats(int64_t n) { return at::empty({n}, at::TensorOptions().dtype(at::kFloat)); }

uint64_t next_call() {
  static std::atomic<uint64_t> calls{0};
  return ++calls;
}

// fn(bh, i0, i1) over every block of kAttnQueryBlock rows (of n rows) of every (b, h), in parallel.
template <typename Fn>
void for_row_blocks(const AttentionArgs& a, int64_t n, const Fn& fn) {
  const int64_t blocks = (n + kAttnQueryBlock - 1) / kAttnQueryBlock;
  at::parallel_for(0, a.batch * a.heads * blocks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t i0 = (t % blocks) * kAttnQueryBlock;
      fn(t / blocks, i0, std::min(n, i0 + kAttnQueryBlock));
    }
  });
}

std::tuple<at::Tensor, at::Tensor> attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const Opt& key_mask, const Opt& bias, double scale) {
  Inputs in = check_inputs(q, k, v, key_mask, bias, scale, "attention_fwd");
  AttentionArgs& a = in.a;
  at::Tensor out = empty_output({a.batch, a.nq, a.heads, a.head_dim}, q.options());
  at::Tensor lse = at::empty({a.batch, a.heads, a.nq}, q.options().dtype(at::kFloat));
  if (a.batch * a.heads * a.nq == 0) return {out, lse};
  if (a.nk == 0) {  // no key at all: every row is fully masked
    out.zero_();
    lse.fill_(std::numeric_limits<double>::infinity());
    return {out, lse};
  }
  a.out = out.mutable_data_ptr();
  a.lse = lse.mutable_data_ptr<float>();
  a.call = next_call();
  for_row_blocks(a, a.nq, [&](int64_t p, int64_t i0, int64_t i1) { FASTDIFF_CPU_CALL(attention_fwd_rows, a, p, i0, i1); });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd(const at::Tensor& grad_out, const at::Tensor& q,
                                                             const at::Tensor& k, const at::Tensor& v,
                                                             const at::Tensor& out, const at::Tensor& lse,
                                                             const Opt& key_mask, const Opt& bias, double scale) {
  constexpr const char* op = "attention_bwd";
  Inputs in = check_inputs(q, k, v, key_mask, bias, scale, op);
  AttentionArgs& a = in.a;
  check_4d(grad_out, q.scalar_type(), op, "grad_out", "(B, Nq, H, D)");
  check_4d(out, q.scalar_type(), op, "out", "(B, Nq, H, D)");
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(), "fastdiff.attention_bwd: arguments ",
              "'grad_out' and 'out' expected the shape of q ", q.sizes(), ", got ", grad_out.sizes(), " and ",
              out.sizes());
  TORCH_CHECK(lse.device().is_cpu() && lse.scalar_type() == at::kFloat && lse.dim() == 3 && lse.size(0) == a.batch &&
                  lse.size(1) == a.heads && lse.size(2) == a.nq,
              "fastdiff.attention_bwd: argument 'lse' expected a float32 (B, H, Nq) = (", a.batch, ", ", a.heads, ", ",
              a.nq, ") CPU tensor, got ", lse.scalar_type(), " ", lse.sizes(), " on ", lse.device());
  at::Tensor dq = empty_output(q.sizes(), q.options());
  at::Tensor dk = empty_output(k.sizes(), k.options());
  at::Tensor dv = empty_output(v.sizes(), v.options());
  const int64_t bh = a.batch * a.heads;
  if (bh * a.nq * a.nk == 0) {  // nothing attended: every gradient is 0
    dq.zero_();
    dk.zero_();
    dv.zero_();
    return {dq, dk, dv};
  }
  const at::Tensor o = out.contiguous(), l = lse.contiguous();
  a.grad_out = grad_out.const_data_ptr();
  set_strides(a.grad_out_strides, grad_out);
  a.out_in = o.const_data_ptr();
  a.lse_in = l.const_data_ptr<float>();
  a.grad_q = dq.mutable_data_ptr();
  a.grad_k = dk.mutable_data_ptr();
  a.grad_v = dv.mutable_data_ptr();
  const int64_t blocks = (a.nk_pad + kAttnKeyBlock - 1) / kAttnKeyBlock;
  const int64_t chunks = std::min({blocks, (kBwdTasks + bh - 1) / bh, kMaxChunks});
  a.chunk_blocks = (blocks + chunks - 1) / chunks;
  a.chunks = (blocks + a.chunk_blocks - 1) / a.chunk_blocks;
  // One chunk per (b, h) needs one parallel region; several add the region that sums their grad_q.
  at::Tensor dq_part = a.chunks > 1 ? floats(bh * a.chunks * a.nq_pad * a.dp) : at::Tensor();
  a.dq_part = a.chunks > 1 ? dq_part.mutable_data_ptr<float>() : nullptr;
  a.call = next_call();
  at::parallel_for(0, bh * a.chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) FASTDIFF_CPU_CALL(attention_bwd_chunk, a, t / a.chunks, t % a.chunks);
  });
  if (a.chunks > 1) {
    for_row_blocks(a, a.nq, [&](int64_t p, int64_t i0, int64_t i1) { FASTDIFF_CPU_CALL(attention_bwd_dq, a, p, i0, i1); });
  }
  return {dq, dk, dv};
}

}  // namespace
}  // namespace fastdiff::cpu

TORCH_LIBRARY_IMPL(fastdiff, CPU, m) {
  m.impl("attention_fwd", &fastdiff::cpu::attention_fwd);
  m.impl("attention_bwd", &fastdiff::cpu::attention_bwd);
}
