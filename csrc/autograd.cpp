// Autograd for the group_norm, geglu and adaLN ops (and their _triton variants), in C++: the same formulas
// torch.library.register_autograd would run from Python, without its per-call Python work (about
// 30 us a forward and as much a backward on a CPU, which outweighed the kernel on U-Net-sized
// tensors). Each forward redispatches below autograd to whichever kernel the device registered
// (C++ CPU, CUDA, or the Python-registered Triton and fake kernels); each backward calls the
// family's backward op through the dispatcher, so torch.compile sees both ops whole.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

namespace fastdiff {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Tensor = at::Tensor;

// The layout the kernels keep (fastdiff/ops/group_norm.py memory_format): contiguous, else
// channels-last when x is stored so, else contiguous.
at::MemoryFormat kept_format(const Tensor& x) {
  if (x.is_contiguous()) return at::MemoryFormat::Contiguous;
  if (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) return at::MemoryFormat::ChannelsLast;
  if (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d)) return at::MemoryFormat::ChannelsLast3d;
  return at::MemoryFormat::Contiguous;
}

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

Tensor or_undefined(const c10::optional<Tensor>& t) { return t.has_value() ? *t : Tensor(); }
c10::optional<Tensor> or_none(const Tensor& t) { return t.defined() ? c10::optional<Tensor>(t) : c10::nullopt; }
Tensor contiguous_or_zeros(const Tensor& g, const Tensor& like) {
  return g.defined() ? g.contiguous() : at::zeros_like(like, at::MemoryFormat::Contiguous);
}

using GroupNormOp = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, int64_t, const c10::optional<Tensor>&,
                                                         const c10::optional<Tensor>&, double, bool);
using GroupNormBackwardOp = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const c10::optional<Tensor>&,
                                                                 const c10::optional<Tensor>&, const Tensor&,
                                                                 const Tensor&, int64_t, bool);

template <bool kTriton>
struct GroupNormFunction : public torch::autograd::Function<GroupNormFunction<kTriton>> {
  static constexpr const char* kForward = kTriton ? "fastdiff::group_norm_triton" : "fastdiff::group_norm";
  static constexpr const char* kBackward = kTriton ? "fastdiff::group_norm_backward_triton" : "fastdiff::group_norm_backward";

  static variable_list forward(AutogradContext* ctx, const Tensor& x, int64_t num_groups,
                               const c10::optional<Tensor>& weight, const c10::optional<Tensor>& bias, double eps,
                               bool silu) {
    static const auto op = find_op<GroupNormOp>(kForward);
    Tensor out, mean, rstd;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(out, mean, rstd) = op.call(x, num_groups, weight, bias, eps, silu);
    }
    ctx->save_for_backward({x, or_undefined(weight), or_undefined(bias), mean, rstd});
    ctx->saved_data["num_groups"] = num_groups;
    ctx->saved_data["silu"] = silu;
    ctx->mark_non_differentiable({mean, rstd});
    return {out, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<GroupNormBackwardOp>(kBackward);
    const auto saved = ctx->get_saved_variables();
    const Tensor& x = saved[0];
    const c10::optional<Tensor> weight = saved[1].defined() ? c10::optional<Tensor>(saved[1]) : c10::nullopt;
    const c10::optional<Tensor> bias = saved[2].defined() ? c10::optional<Tensor>(saved[2]) : c10::nullopt;
    const auto fmt = kept_format(x);
    const Tensor g = grads[0].defined() ? grads[0].contiguous(fmt) : at::zeros_like(x, fmt);
    auto [gx, gw, gb] = op.call(g, x, weight, bias, saved[3], saved[4], ctx->saved_data["num_groups"].toInt(),
                                ctx->saved_data["silu"].toBool());
    return {gx, Tensor(), weight ? gw : Tensor(), bias ? gb : Tensor(), Tensor(), Tensor()};
  }
};

template <bool kTriton>
std::tuple<Tensor, Tensor, Tensor> group_norm_autograd(const Tensor& x, int64_t num_groups,
                                                       const c10::optional<Tensor>& weight,
                                                       const c10::optional<Tensor>& bias, double eps, bool silu) {
  auto out = GroupNormFunction<kTriton>::apply(x, num_groups, weight, bias, eps, silu);
  return {out[0], out[1], out[2]};
}

template <bool kTriton>
struct GegluFunction : public torch::autograd::Function<GegluFunction<kTriton>> {
  static constexpr const char* kForward = kTriton ? "fastdiff::geglu_triton" : "fastdiff::geglu";
  static constexpr const char* kBackward = kTriton ? "fastdiff::geglu_backward_triton" : "fastdiff::geglu_backward";

  static Tensor forward(AutogradContext* ctx, const Tensor& x, bool tanh) {
    static const auto op = find_op<Tensor(const Tensor&, bool)>(kForward);
    Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = op.call(x, tanh);
    }
    ctx->save_for_backward({x});
    ctx->saved_data["tanh"] = tanh;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<Tensor(const Tensor&, const Tensor&, bool)>(kBackward);
    const Tensor x = ctx->get_saved_variables()[0];
    if (!grads[0].defined()) return {at::zeros_like(x), Tensor()};
    return {op.call(grads[0].contiguous(), x, ctx->saved_data["tanh"].toBool()), Tensor()};
  }
};

template <bool kTriton>
Tensor geglu_autograd(const Tensor& x, bool tanh) {
  return GegluFunction<kTriton>::apply(x, tanh);
}

// ---- adaLN (fastdiff/ops/adaln.py: the formulas; the backward ops return what these pass on) ----------
using Opt = c10::optional<Tensor>;
using ModulateOp = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Opt&, const Opt&,
                                                        double, bool);
using ModulateBackwardOp = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                                              const Opt&, const Opt&, const Tensor&,
                                                                              const Tensor&, bool, bool);
using ResidualBackwardOp = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&);
using FusedOp = std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                           const Tensor&, const Opt&, const Opt&, double, bool);
using FusedBackwardOp = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Opt&, const Opt&,
    const Tensor&, const Tensor&, bool, bool);

template <bool kTriton>
struct ModulateFunction : public torch::autograd::Function<ModulateFunction<kTriton>> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& shift, const Tensor& scale,
                               const Opt& weight, const Opt& bias, double eps, bool rms) {
    static const auto op = find_op<ModulateOp>(kTriton ? "fastdiff::adaln_modulate_triton" : "fastdiff::adaln_modulate");
    Tensor out, mean, rstd;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(out, mean, rstd) = op.call(x, shift, scale, weight, bias, eps, rms);
    }
    ctx->save_for_backward({x, scale, or_undefined(weight), or_undefined(bias), mean, rstd});
    ctx->saved_data["rms"] = rms;
    ctx->saved_data["shift_per_token"] = shift.dim() == 3;
    ctx->mark_non_differentiable({mean, rstd});
    return {out, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<ModulateBackwardOp>(kTriton ? "fastdiff::adaln_modulate_backward_triton"
                                                               : "fastdiff::adaln_modulate_backward");
    const auto s = ctx->get_saved_variables();
    const Opt weight = or_none(s[2]), bias = or_none(s[3]);
    auto [gx, gs, gsc, gw, gb] = op.call(contiguous_or_zeros(grads[0], s[0]), s[0], s[1], weight, bias, s[4], s[5],
                                         ctx->saved_data["rms"].toBool(), ctx->saved_data["shift_per_token"].toBool());
    return {gx, gs, gsc, weight ? gw : Tensor(), bias ? gb : Tensor(), Tensor(), Tensor()};
  }
};

template <bool kTriton>
std::tuple<Tensor, Tensor, Tensor> modulate_autograd(const Tensor& x, const Tensor& shift, const Tensor& scale,
                                                     const Opt& weight, const Opt& bias, double eps, bool rms) {
  auto out = ModulateFunction<kTriton>::apply(x, shift, scale, weight, bias, eps, rms);
  return {out[0], out[1], out[2]};
}

template <bool kTriton>
struct ResidualFunction : public torch::autograd::Function<ResidualFunction<kTriton>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& gate, const Tensor& h) {
    static const auto op = find_op<Tensor(const Tensor&, const Tensor&, const Tensor&)>(
        kTriton ? "fastdiff::gated_residual_triton" : "fastdiff::gated_residual");
    Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = op.call(x, gate, h);
    }
    ctx->save_for_backward({gate, h});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<ResidualBackwardOp>(kTriton ? "fastdiff::gated_residual_backward_triton"
                                                               : "fastdiff::gated_residual_backward");
    const auto s = ctx->get_saved_variables();
    const Tensor g = contiguous_or_zeros(grads[0], s[1]);
    auto [grad_gate, grad_h] = op.call(g, s[0], s[1]);
    return {g, grad_gate, grad_h};
  }
};

template <bool kTriton>
Tensor residual_autograd(const Tensor& x, const Tensor& gate, const Tensor& h) {
  return ResidualFunction<kTriton>::apply(x, gate, h);
}

template <bool kTriton>
struct FusedFunction : public torch::autograd::Function<FusedFunction<kTriton>> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& gate, const Tensor& h,
                               const Tensor& shift, const Tensor& scale, const Opt& weight, const Opt& bias, double eps,
                               bool rms) {
    static const auto op = find_op<FusedOp>(kTriton ? "fastdiff::gated_residual_adaln_triton"
                                                    : "fastdiff::gated_residual_adaln");
    Tensor x_out, out, mean, rstd;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(x_out, out, mean, rstd) = op.call(x, gate, h, shift, scale, weight, bias, eps, rms);
    }
    ctx->save_for_backward({x_out, gate, h, scale, or_undefined(weight), or_undefined(bias), mean, rstd});
    ctx->saved_data["rms"] = rms;
    ctx->saved_data["shift_per_token"] = shift.dim() == 3;
    ctx->mark_non_differentiable({mean, rstd});
    return {x_out, out, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<FusedBackwardOp>(kTriton ? "fastdiff::gated_residual_adaln_backward_triton"
                                                            : "fastdiff::gated_residual_adaln_backward");
    const auto s = ctx->get_saved_variables();
    const Opt weight = or_none(s[4]), bias = or_none(s[5]);
    auto [gx, gg, gh, gs, gsc, gw, gb] =
        op.call(contiguous_or_zeros(grads[0], s[0]), contiguous_or_zeros(grads[1], s[0]), s[0], s[1], s[2], s[3], weight,
                bias, s[6], s[7], ctx->saved_data["rms"].toBool(), ctx->saved_data["shift_per_token"].toBool());
    return {gx, gg, gh, gs, gsc, weight ? gw : Tensor(), bias ? gb : Tensor(), Tensor(), Tensor()};
  }
};

template <bool kTriton>
std::tuple<Tensor, Tensor, Tensor, Tensor> fused_autograd(const Tensor& x, const Tensor& gate, const Tensor& h,
                                                          const Tensor& shift, const Tensor& scale, const Opt& weight,
                                                          const Opt& bias, double eps, bool rms) {
  auto out = FusedFunction<kTriton>::apply(x, gate, h, shift, scale, weight, bias, eps, rms);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace
}  // namespace fastdiff

TORCH_LIBRARY_IMPL(fastdiff, Autograd, m) {
  m.impl("adaln_modulate", &fastdiff::modulate_autograd<false>);
  m.impl("adaln_modulate_triton", &fastdiff::modulate_autograd<true>);
  m.impl("gated_residual", &fastdiff::residual_autograd<false>);
  m.impl("gated_residual_triton", &fastdiff::residual_autograd<true>);
  m.impl("gated_residual_adaln", &fastdiff::fused_autograd<false>);
  m.impl("gated_residual_adaln_triton", &fastdiff::fused_autograd<true>);
  m.impl("group_norm", &fastdiff::group_norm_autograd<false>);
  m.impl("group_norm_triton", &fastdiff::group_norm_autograd<true>);
  m.impl("geglu", &fastdiff::geglu_autograd<false>);
  m.impl("geglu_triton", &fastdiff::geglu_autograd<true>);
}
