// CUDA implementations of fastdiff::attention_fwd and fastdiff::attention_bwd (schemas and contract in
// csrc/ops.cpp): argument checks, 16-byte alignment of every row (copying an input only when the
// promise of the schema does not hold, e.g. a direct op call with odd strides), device guard,
// current stream, outputs and scratch from torch's caching allocator, then the torch-free launchers
// of csrc/cuda/attention_*.cu. Nothing here synchronises with the device.
#include <ATen/Functions.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "cuda/attention_launchers.h"

namespace fastdiff::cuda {
namespace {

constexpr const char* kFwd = "attention_fwd";
constexpr const char* kBwd = "attention_bwd";

DType half_dtype(const at::Tensor& t, const char* op, const char* arg) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default:
      TORCH_CHECK(false, "fastdiff.", op, ": argument '", arg, "' expected dtype float16 or bfloat16 (the CUDA ",
                  "attention kernels), got ", t.scalar_type());
  }
}

// t, or an aligned contiguous copy: the kernels move rows as 16-byte vectors, so the head dim must
// be contiguous and every stride (of a dim longer than 1) and the data pointer multiples of 16 bytes.
at::Tensor rows_aligned(const at::Tensor& t) {
  bool ok = t.stride(3) == 1 && reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
  for (int i = 0; i < 3; ++i) ok = ok && (t.size(i) == 1 || t.stride(i) % 8 == 0);
  return ok ? t : t.clone(at::MemoryFormat::Contiguous);
}

void check_4d(const at::Tensor& t, const c10::Device& device, at::ScalarType dtype, const char* op, const char* arg,
              const char* shape) {
  TORCH_CHECK(t.device() == device, "fastdiff.", op, ": argument '", arg, "' expected a tensor on ", device, ", got ",
              t.device());
  TORCH_CHECK(t.dim() == 4, "fastdiff.", op, ": argument '", arg, "' expected a 4-D ", shape, " tensor, got shape ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, "fastdiff.", op, ": argument '", arg, "' expected dtype ", dtype,
              " (like q), got ", t.scalar_type());
}

void set_strides(int64_t (&dst)[3], const at::Tensor& t) {
  for (int i = 0; i < 3; ++i) dst[i] = t.stride(i);
}

// The checked inputs of both ops, packed for the launchers. The tensors that the params point into
// are kept here, so any aligned copies live until the launch is enqueued.
struct Inputs {
  at::Tensor q, k, v, key_mask, bias;
  AttentionParams p{};
};

Inputs check_inputs(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                    const std::optional<at::Tensor>& key_mask, const std::optional<at::Tensor>& bias, double scale,
                    const char* op) {
  TORCH_CHECK(q_in.is_cuda(), "fastdiff.", op, ": argument 'q' expected a CUDA tensor, got ", q_in.device());
  const c10::Device device = q_in.device();
  TORCH_CHECK(q_in.dim() == 4, "fastdiff.", op, ": argument 'q' expected a 4-D (B, Nq, H, D) tensor, got shape ",
              q_in.sizes());
  Inputs in;
  in.p.dtype = half_dtype(q_in, op, "q");
  check_4d(k_in, device, q_in.scalar_type(), op, "k", "(B, Nk, H, D)");
  check_4d(v_in, device, q_in.scalar_type(), op, "v", "(B, Nk, H, D)");
  const int64_t b = q_in.size(0), nq = q_in.size(1), h = q_in.size(2), d = q_in.size(3), nk = k_in.size(1);
  TORCH_CHECK(k_in.size(0) == b && k_in.size(2) == h && k_in.size(3) == d && v_in.sizes() == k_in.sizes(), "fastdiff.",
              op, ": arguments 'k' and 'v' expected shape (", b, ", Nk, ", h, ", ", d, ") matching q ", q_in.sizes(),
              ", got ", k_in.sizes(), " and ", v_in.sizes());
  TORCH_CHECK(attention_head_dim_supported(d), "fastdiff.", op,
              ": argument 'q' expected a head dim D that is a multiple of 8 in [8, 256], got D=", d);
  TORCH_CHECK(std::isfinite(scale), "fastdiff.", op, ": argument 'scale' expected a finite number, got ", scale);
  in.q = q_in.numel() ? rows_aligned(q_in) : q_in;
  in.k = k_in.numel() ? rows_aligned(k_in) : k_in;
  in.v = v_in.numel() ? rows_aligned(v_in) : v_in;
  if (key_mask.has_value()) {
    TORCH_CHECK(key_mask->device() == device && key_mask->scalar_type() == at::kBool && key_mask->dim() == 2 &&
                    key_mask->size(0) == b && key_mask->size(1) == nk,
                "fastdiff.", op, ": argument 'key_mask' expected a bool (B, Nk) = (", b, ", ", nk, ") tensor on ",
                device, ", got ", key_mask->scalar_type(), " ", key_mask->sizes(), " on ", key_mask->device());
    in.key_mask = key_mask->contiguous();
  }
  if (bias.has_value()) {
    const at::Tensor& t = *bias;
    TORCH_CHECK(t.device() == device, "fastdiff.", op, ": argument 'bias' expected a tensor on ", device, ", got ",
                t.device());
    TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fastdiff.", op,
                ": argument 'bias' expected a floating-point tensor, got ", t.scalar_type());
    const std::vector<int64_t> full{b, h, nq, nk};
    bool fits = t.dim() <= 4;
    for (int64_t i = 1; fits && i <= t.dim(); ++i) {
      const int64_t s = t.size(t.dim() - i);
      fits = s == 1 || s == full[4 - i];
    }
    TORCH_CHECK(fits, "fastdiff.", op, ": argument 'bias' expected a tensor broadcastable to (B, H, Nq, Nk) = (", b,
                ", ", h, ", ", nq, ", ", nk, "), got shape ", t.sizes());
    std::vector<int64_t> shape(4 - t.dim(), 1);
    shape.insert(shape.end(), t.sizes().begin(), t.sizes().end());
    // Same dtype as q (SDPA's convention); broadcast dims get stride 0 from expand, so nothing is copied.
    in.bias = t.to(q_in.scalar_type()).reshape(shape).expand(full);
  }

  AttentionParams& p = in.p;
  p.q = in.q.const_data_ptr();
  p.k = in.k.const_data_ptr();
  p.v = in.v.const_data_ptr();
  p.batch = b;
  p.heads = h;
  p.nq = nq;
  p.nk = nk;
  p.head_dim = d;
  set_strides(p.q_strides, in.q);
  set_strides(p.k_strides, in.k);
  set_strides(p.v_strides, in.v);
  p.key_mask = in.key_mask.defined() ? static_cast<const uint8_t*>(in.key_mask.const_data_ptr()) : nullptr;
  p.bias = in.bias.defined() ? in.bias.const_data_ptr() : nullptr;
  for (int i = 0; i < 4; ++i) p.bias_strides[i] = in.bias.defined() ? in.bias.stride(i) : 0;
  p.scale = static_cast<float>(scale);
  if (b * h * nq * nk > 0) {
    TORCH_CHECK(attention_sizes_supported(p), "fastdiff.", op, ": sizes B=", b, ", H=", h, ", Nq=", nq, ", Nk=", nk,
                " exceed what one launch of the CUDA attention kernels addresses");
  }
  return in;
}

std::tuple<at::Tensor, at::Tensor> attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const std::optional<at::Tensor>& key_mask,
                                                 const std::optional<at::Tensor>& bias, double scale) {
  Inputs in = check_inputs(q, k, v, key_mask, bias, scale, kFwd);
  const AttentionParams& p = in.p;
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty({p.batch, p.nq, p.heads, p.head_dim}, q.options());
  at::Tensor lse = at::empty({p.batch, p.heads, p.nq}, q.options().dtype(at::kFloat));
  if (p.batch * p.heads * p.nq == 0) return {out, lse};
  if (p.nk == 0) {  // no key at all: every row is fully masked
    out.zero_();
    lse.fill_(std::numeric_limits<double>::infinity());
    return {out, lse};
  }
  C10_CUDA_CHECK(launch_attention_fwd(p, out.mutable_data_ptr(), lse.mutable_data_ptr<float>(),
                                      c10::cuda::getCurrentCUDAStream()));
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd(const at::Tensor& grad_out, const at::Tensor& q,
                                                             const at::Tensor& k, const at::Tensor& v,
                                                             const at::Tensor& out, const at::Tensor& lse,
                                                             const std::optional<at::Tensor>& key_mask,
                                                             const std::optional<at::Tensor>& bias, double scale) {
  Inputs in = check_inputs(q, k, v, key_mask, bias, scale, kBwd);
  const c10::Device device = q.device();
  check_4d(grad_out, device, q.scalar_type(), kBwd, "grad_out", "(B, Nq, H, D)");
  check_4d(out, device, q.scalar_type(), kBwd, "out", "(B, Nq, H, D)");
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(), "fastdiff.attention_bwd: arguments ",
              "'grad_out' and 'out' expected the shape of q ", q.sizes(), ", got ", grad_out.sizes(), " and ",
              out.sizes());
  const AttentionParams& p = in.p;
  TORCH_CHECK(lse.device() == device && lse.scalar_type() == at::kFloat && lse.dim() == 3 && lse.size(0) == p.batch &&
                  lse.size(1) == p.heads && lse.size(2) == p.nq,
              "fastdiff.attention_bwd: argument 'lse' expected a float32 (B, H, Nq) = (", p.batch, ", ", p.heads, ", ",
              p.nq, ") tensor on ", device, ", got ", lse.scalar_type(), " ", lse.sizes(), " on ", lse.device());

  const c10::cuda::CUDAGuard guard(device);
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  if (p.batch * p.heads * p.nq * p.nk == 0) {  // nothing attended: every gradient is 0
    dq.zero_();
    dk.zero_();
    dv.zero_();
    return {dq, dk, dv};
  }
  const at::Tensor go = rows_aligned(grad_out);
  // The delta kernel reads out as contiguous 16-byte-aligned rows (the forward's output is).
  const bool out_ok = out.is_contiguous() && reinterpret_cast<uintptr_t>(out.const_data_ptr()) % 16 == 0;
  const at::Tensor o = out_ok ? out : out.clone(at::MemoryFormat::Contiguous);
  const at::Tensor l = lse.contiguous();
  AttentionBwdParams bp{};
  bp.fwd = p;
  bp.grad_out = go.const_data_ptr();
  set_strides(bp.grad_out_strides, go);
  bp.out = o.const_data_ptr();
  bp.lse = l.const_data_ptr<float>();
  const auto ws_bytes = static_cast<int64_t>(attention_bwd_workspace_bytes(p));
  at::Tensor workspace = at::empty({ws_bytes}, q.options().dtype(at::kByte));
  C10_CUDA_CHECK(launch_attention_bwd(bp, workspace.mutable_data_ptr(), dq.mutable_data_ptr(), dk.mutable_data_ptr(),
                                      dv.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()));
  return {dq, dk, dv};
}

}  // namespace
}  // namespace fastdiff::cuda

TORCH_LIBRARY_IMPL(fastdiff, CUDA, m) {
  m.impl("attention_fwd", &fastdiff::cuda::attention_fwd);
  m.impl("attention_bwd", &fastdiff::cuda::attention_bwd);
}
