// fastdiff::torch_randn_: torch.randn's values on a CPU tensor, faster (see torch_rng/normal_avx2.cpp).
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>
#include <ATen/Functions.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <mutex>
#include <optional>

#include "cpu/isa.h"
#if defined(FASTDIFF_TORCH_RNG_AVX2)
#include "cpu/torch_rng/torch_rng.h"
#endif

namespace fastdiff::cpu {
namespace {

// x86-64 builds carry the sampler; it runs where the avx2 kernels do (fastdiff._C.cpu_isa()).
bool available() {
#if defined(FASTDIFF_TORCH_RNG_AVX2)
  return best_isa() == Isa::avx2;
#else
  return false;
#endif
}

// Fills `out` (contiguous, CPU, float32/float16/bfloat16, >= 16 elements) as
// torch.randn(out.shape, generator=generator, dtype=out.dtype) would, advancing the generator alike.
// Whether this build reproduces PyTorch's values is for the caller to check (fastdiff/ops/randn.py).
at::Tensor& torch_randn_(at::Tensor& out, const std::optional<at::Generator>& generator) {
  TORCH_CHECK(available(), "fastdiff::torch_randn_: this build has no AVX2 normal sampler (or FASTDIFF_CPU_ISA=base)");
  TORCH_CHECK(out.device().is_cpu() && out.is_contiguous(), "fastdiff::torch_randn_: out: expected a contiguous CPU tensor, got ",
              out.device(), out.is_contiguous() ? "" : " (non-contiguous)");
  const auto dtype = out.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "fastdiff::torch_randn_: out: expected float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(out.numel() >= 16, "fastdiff::torch_randn_: out: expected at least 16 elements (PyTorch draws fewer one "
              "by one), got ", out.numel());
#if defined(FASTDIFF_TORCH_RNG_AVX2)
  at::Generator gen = generator.has_value() && generator->defined() ? *generator : at::detail::getDefaultCPUGenerator();
  auto* impl = at::check_generator<at::CPUGeneratorImpl>(gen);
  // float16/bfloat16: PyTorch computes in float32 and rounds each value, as the copy below does
  at::Tensor buf = dtype == at::kFloat ? out : at::empty(out.sizes(), out.options().dtype(at::kFloat));
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    at::mt19937 engine = impl->engine();
    at::mt19937_data_pod pod = engine.data();
    torch_rng::MtState s{pod.state_.data(), pod.left_, pod.next_};
    torch_rng::normal_fill(s, buf.data_ptr<float>(), buf.numel(), dtype == at::kFloat);
    pod.left_ = s.left;
    pod.next_ = s.next;
    engine.set_data(pod);
    impl->set_engine(engine);
  }
  if (dtype != at::kFloat) out.copy_(buf);
#endif
  return out;
}

}  // namespace
}  // namespace fastdiff::cpu

TORCH_LIBRARY_IMPL(fastdiff, CPU, m) { m.impl("torch_randn_", &fastdiff::cpu::torch_randn_); }
