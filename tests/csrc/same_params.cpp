// Compile-time check (tests/csrc/test_param_structs.py compiles it with -fsyntax-only): the C++ CPU
// kernels and the CUDA launchers of each family take the very same parameter struct, the one in
// csrc/<family>_args.h, so the two backends cannot drift apart in layout or meaning.
#include <type_traits>

#include "cpu/kernels/adaln.h"
#include "cpu/kernels/kernels.h"
#include "cuda/adaln.h"
#include "cuda/launchers.h"

namespace {

// The struct a kernel entry point takes as its first parameter (by const reference).
template <typename F>
struct first_param;
template <typename R, typename A, typename... Rest>
struct first_param<R (*)(A, Rest...)> {
  using type = std::remove_cv_t<std::remove_reference_t<A>>;
};
template <typename F>
using first_param_t = typename first_param<F>::type;

template <typename F, typename G>
constexpr bool same_params = std::is_same_v<first_param_t<F>, first_param_t<G>>;

namespace cpu = fastdiff::cpu;
namespace cuda = fastdiff::cuda;

// guidance
static_assert(std::is_same_v<first_param_t<decltype(&cpu::base::guidance_combine)>, fastdiff::GuidanceParams>);
static_assert(same_params<decltype(&cpu::base::guidance_combine), decltype(&cuda::launch_guidance_combine)>);
static_assert(same_params<decltype(&cpu::avx2::guidance_moments), decltype(&cuda::launch_guidance_rescale_factor)>);
// sampler_update
static_assert(std::is_same_v<first_param_t<decltype(&cpu::base::sampler_update)>, fastdiff::UpdateParams>);
static_assert(same_params<decltype(&cpu::avx2::sampler_update), decltype(&cuda::launch_sampler_update)>);
// adaln
static_assert(std::is_same_v<first_param_t<decltype(&cpu::base::adaln_forward)>, fastdiff::AdalnForwardArgs>);
static_assert(same_params<decltype(&cpu::base::adaln_forward), decltype(&cuda::adaln_forward)>);
static_assert(same_params<decltype(&cpu::avx2::adaln_backward), decltype(&cuda::adaln_backward)>);
static_assert(same_params<decltype(&cpu::base::gated_residual_forward), decltype(&cuda::gated_residual_forward)>);
static_assert(same_params<decltype(&cpu::avx2::gated_residual_backward), decltype(&cuda::gated_residual_backward)>);

}  // namespace
