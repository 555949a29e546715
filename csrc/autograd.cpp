// Autograd for the group_norm and geglu ops (and their _triton variants), in C++: the same formulas
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

Tensor or_undefined(const c10::optional<Tensor>& t) { return t.has_value() ? *t : Tensor(); }

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
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(kForward, "").typed<GroupNormOp>();
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
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(kBackward, "").typed<GroupNormBackwardOp>();
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
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(kForward, "").typed<Tensor(const Tensor&, bool)>();
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
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow(kBackward, "")
                               .typed<Tensor(const Tensor&, const Tensor&, bool)>();
    const Tensor x = ctx->get_saved_variables()[0];
    if (!grads[0].defined()) return {at::zeros_like(x), Tensor()};
    return {op.call(grads[0].contiguous(), x, ctx->saved_data["tanh"].toBool()), Tensor()};
  }
};

template <bool kTriton>
Tensor geglu_autograd(const Tensor& x, bool tanh) {
  return GegluFunction<kTriton>::apply(x, tanh);
}

}  // namespace
}  // namespace fastdiff

TORCH_LIBRARY_IMPL(fastdiff, Autograd, m) {
  m.impl("group_norm", &fastdiff::group_norm_autograd<false>);
  m.impl("group_norm_triton", &fastdiff::group_norm_autograd<true>);
  m.impl("geglu", &fastdiff::geglu_autograd<false>);
  m.impl("geglu_triton", &fastdiff::geglu_autograd<true>);
}
