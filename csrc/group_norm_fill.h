// Argument checks and buffers of the group_norm ops, shared by the CPU op (csrc/cpu/group_norm.cpp) and
// the CUDA binding (csrc/cuda/bindings_group_norm.cpp): each fills the one GroupNormArgs
// (group_norm_args.h) from its tensors and allocates its outputs and workspaces on x's device; the two
// differ only in the device they expect and in how they launch.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

#include "group_norm_args.h"
#include "torch_args.h"

namespace fastdiff::group_norm_fill {

using Opt = std::optional<at::Tensor>;

// Whether x (N, C, *) is stored channels-last (4-D or 5-D); fails unless it is contiguous either way.
inline bool channels_last(const at::Tensor& x, const char* op, const char* arg) {
  if (x.is_contiguous()) return false;
  const bool cl = (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ||
                  (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d));
  TORCH_CHECK(cl, "fastdiff.", op, ": argument '", arg, "' expected a contiguous or channels-last tensor, got strides ",
              x.strides());
  return true;
}

// The memory format of x's layout, for the outputs.
inline at::MemoryFormat memory_format(const at::Tensor& x, bool cl) {
  if (!cl) return at::MemoryFormat::Contiguous;
  return x.dim() == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::ChannelsLast3d;
}

inline void same_place(const at::Tensor& t, const at::Tensor& x, const char* op, const char* arg) {
  TORCH_CHECK(t.device() == x.device(), "fastdiff.", op, ": argument '", arg, "' expected a tensor on ", x.device(),
              " (like x), got a tensor on ", t.device());
}

inline const void* param(const Opt& p, const at::Tensor& x, const char* op, const char* arg) {
  if (!p.has_value()) return nullptr;
  same_place(*p, x, op, arg);
  TORCH_CHECK(p->scalar_type() == x.scalar_type(), "fastdiff.", op, ": argument '", arg, "' expected dtype ",
              x.scalar_type(), ", got ", p->scalar_type());
  TORCH_CHECK(p->dim() == 1 && p->size(0) == x.size(1) && p->is_contiguous(), "fastdiff.", op, ": argument '", arg,
              "' expected a contiguous tensor of shape (", x.size(1), "), got shape ", p->sizes());
  return p->data_ptr();
}

// x, its groups and parameters: everything but the outputs and workspaces. x must be on `device`.
inline GroupNormArgs inputs(const at::Tensor& x, int64_t groups, const Opt& weight, const Opt& bias, bool silu,
                            c10::DeviceType device, const char* op) {
  TORCH_CHECK(x.device().type() == device, "fastdiff.", op, ": argument 'x' expected a ", c10::DeviceTypeName(device),
              " tensor, got a tensor on ", x.device());
  TORCH_CHECK(x.dim() >= 2, "fastdiff.", op, ": argument 'x' expected a (N, C, *) tensor, got shape ", x.sizes());
  GroupNormArgs a{};
  a.dtype = to_dtype(x, op, "x");
  a.channels_last = channels_last(x, op, "x");
  a.batch = x.size(0), a.channels = x.size(1), a.groups = groups;
  a.spatial = 1;
  for (int64_t d = 2; d < x.dim(); ++d) a.spatial *= x.size(d);
  TORCH_CHECK(groups >= 1 && a.channels % groups == 0, "fastdiff.", op,
              ": argument 'num_groups' expected a positive divisor of C = ", a.channels, ", got ", groups);
  a.silu = silu;
  a.x = x.data_ptr();
  a.weight = param(weight, x, op, "weight");
  a.bias = param(bias, x, op, "bias");
  group_norm_partition(a);
  return a;
}

// Saved statistics: float32 (N, G) contiguous, placed like x.
inline float* stats(const at::Tensor& t, const at::Tensor& x, const GroupNormArgs& a, const char* op,
                    const char* arg) {
  same_place(t, x, op, arg);
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.dim() == 2 && t.size(0) == a.batch && t.size(1) == a.groups &&
                  t.is_contiguous(),
              "fastdiff.", op, ": argument '", arg, "' expected a contiguous float32 tensor of shape (", a.batch, ", ",
              a.groups, "), got ", t.scalar_type(), " ", t.sizes());
  return t.data_ptr<float>();
}

// grad_out: x's shape, dtype and layout.
inline const void* grad_out_of(const at::Tensor& g, const at::Tensor& x, const GroupNormArgs& a, const char* op) {
  same_place(g, x, op, "grad_out");
  TORCH_CHECK(g.scalar_type() == x.scalar_type() && g.sizes() == x.sizes(), "fastdiff.", op,
              ": argument 'grad_out' expected x's dtype and shape (", x.scalar_type(), " ", x.sizes(), "), got ",
              g.scalar_type(), " ", g.sizes());
  TORCH_CHECK(g.is_contiguous(memory_format(x, a.channels_last)), "fastdiff.", op,
              ": argument 'grad_out' expected x's layout (", a.channels_last ? "channels-last" : "contiguous",
              "), got strides ", g.strides());
  return g.data_ptr();
}

// The backward's inputs: the forward's, plus grad_out (x's layout) and the saved mean, rstd.
inline GroupNormArgs backward_inputs(const at::Tensor& grad_out, const at::Tensor& x, const Opt& weight,
                                     const Opt& bias, const at::Tensor& mean, const at::Tensor& rstd, int64_t groups,
                                     bool silu, c10::DeviceType device, const char* op) {
  GroupNormArgs a = inputs(x, groups, weight, bias, silu, device, op);
  a.grad_out = grad_out_of(grad_out, x, a, op);
  a.mean = stats(mean, x, a, op, "mean");
  a.rstd = stats(rstd, x, a, op, "rstd");
  return a;
}

// Outputs and float32 workspaces of one call on x's device, their pointers set in a.
struct Buffers {
  at::Tensor out, mean, rstd;                     // forward
  at::Tensor grad_x, grad_weight, grad_bias;      // backward
  at::Tensor partial, channel_sums, group_coef;   // workspaces
};

inline at::Tensor floats(int64_t count, const at::Tensor& x) {
  return at::empty({count}, x.options().dtype(at::kFloat));
}

inline at::Tensor like_x(const at::Tensor& x, const GroupNormArgs& a) {
  return at::empty(x.sizes(), x.options().memory_format(memory_format(x, a.channels_last)));
}

inline Buffers forward_buffers(GroupNormArgs& a, const at::Tensor& x) {
  Buffers f;
  f.out = like_x(x, a);
  f.mean = at::empty({a.batch, a.groups}, x.options().dtype(at::kFloat));
  f.rstd = at::empty({a.batch, a.groups}, x.options().dtype(at::kFloat));
  f.partial = floats(group_norm_partial_floats(a), x);
  a.out = f.out.data_ptr(), a.mean = f.mean.data_ptr<float>(), a.rstd = f.rstd.data_ptr<float>();
  a.partial = f.partial.data_ptr<float>();
  return f;
}

// grad_weight / grad_bias: (C,) like the parameter, or shape (0,) (and null in a) when it is absent.
inline Buffers backward_buffers(GroupNormArgs& a, const at::Tensor& x, const Opt& weight, const Opt& bias) {
  Buffers f;
  f.grad_x = like_x(x, a);
  f.grad_weight = weight.has_value() ? at::empty_like(*weight) : at::empty({0}, x.options());
  f.grad_bias = bias.has_value() ? at::empty_like(*bias) : at::empty({0}, x.options());
  f.partial = floats(group_norm_partial_floats(a), x);
  f.channel_sums = floats(a.batch * a.channels * 2, x);
  f.group_coef = floats(a.batch * a.groups * 2, x);
  a.grad_x = f.grad_x.data_ptr(), a.partial = f.partial.data_ptr<float>();
  a.channel_sums = f.channel_sums.data_ptr<float>(), a.group_coef = f.group_coef.data_ptr<float>();
  a.grad_weight = weight.has_value() ? f.grad_weight.data_ptr() : nullptr;
  a.grad_bias = bias.has_value() ? f.grad_bias.data_ptr() : nullptr;
  return f;
}

}  // namespace fastdiff::group_norm_fill
