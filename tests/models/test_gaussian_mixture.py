"""The analytic Gaussian mixture: exact denoiser, consistent predictions, exact samples, and a
sampler driven by it through fastdiff.ops.sampler_update reaching the target distribution."""

import math

import pytest
import torch

import fastdiff
from fastdiff.demo import log_snr_timesteps
from fastdiff.models import GaussianMixture, MixtureModel, sliced_wasserstein
from fastdiff.samplers import ddim_table, dpmpp_2m_table, scaled_linear_alphas_cumprod

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors hold a few thousand elements: intra-op threads only add synchronisation, which
    on a loaded CPU made the sampler tests 3x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def random_mixture(m=5, d=3, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(m, d, generator=g, dtype=F64) * 1.5
    stds = torch.rand(m, generator=g, dtype=F64) * 0.5 + 0.1
    weights = torch.rand(m, generator=g, dtype=F64) + 0.2
    return GaussianMixture(means.to(dtype), stds.to(dtype), weights.to(dtype))


def ring(m=8, radius=1.35, std=0.22):
    ang = torch.arange(m, dtype=F64) * (2 * math.pi / m)
    return GaussianMixture(radius * torch.stack([ang.cos(), ang.sin()], 1), torch.full((m,), std, dtype=F64))


def tweedie_x0(mix, x, alpha, sigma):
    """E[x0 | x] = (x + sigma^2 grad log p_t(x)) / alpha, the score taken by autograd."""
    x = x.detach().clone().requires_grad_(True)
    (score,) = torch.autograd.grad(mix.marginal(alpha, sigma).log_prob(x).sum(), x)
    return (x + sigma**2 * score) / alpha, score


NOISE_LEVELS = [(0.999, 0.045), (0.8, 0.6), (0.3, math.sqrt(1 - 0.09)), (0.05, 0.9987), (1.0, 2.5), (0.5, 0.5)]


# ---------------------------------------------------------------------------------------------
# Exactness of the closed forms
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha,sigma", NOISE_LEVELS)
def test_denoise_equals_tweedies_formula_on_the_marginal_in_float64(alpha, sigma):
    mix = random_mixture()
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(1), dtype=F64) * 2
    want, _ = tweedie_x0(mix, x, alpha, sigma)
    torch.testing.assert_close(mix.denoise(x, alpha, sigma), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("alpha,sigma", NOISE_LEVELS)
def test_eps_is_minus_sigma_score_and_v_is_alpha_eps_minus_sigma_x0(alpha, sigma):
    mix = random_mixture(d=2, seed=3)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    x0, score = tweedie_x0(mix, x, alpha, sigma)
    eps = mix.eps(x, alpha, sigma)
    torch.testing.assert_close(eps, -sigma * score, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(alpha * x0 + sigma * eps, x, rtol=1e-10, atol=1e-10)  # x = alpha x0 + sigma eps
    torch.testing.assert_close(mix.v(x, alpha, sigma), alpha * eps - sigma * x0, rtol=1e-10, atol=1e-10)
    for kind, want in (("epsilon", eps), ("sample", x0), ("v_prediction", alpha * eps - sigma * x0)):
        torch.testing.assert_close(mix.predict(x, alpha, sigma, kind), want, rtol=1e-10, atol=1e-10)


def test_per_sample_alpha_sigma_match_one_call_per_noise_level():
    mix = random_mixture(d=4, seed=5)
    alphas = torch.tensor([a for a, _ in NOISE_LEVELS], dtype=F64)
    sigmas = torch.tensor([s for _, s in NOISE_LEVELS], dtype=F64)
    x = torch.randn(len(NOISE_LEVELS), 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    for method in (mix.denoise, mix.eps, mix.v):
        batched = method(x, alphas, sigmas)
        one_by_one = torch.stack([method(x[i : i + 1], a, s)[0] for i, (a, s) in enumerate(NOISE_LEVELS)])
        torch.testing.assert_close(batched, one_by_one, rtol=1e-12, atol=1e-12)
    # Extra leading batch dimensions work the same way.
    x3 = x.expand(2, *x.shape)
    torch.testing.assert_close(mix.denoise(x3, alphas.expand(2, -1), sigmas.expand(2, -1))[1], mix.denoise(x, alphas, sigmas))


def test_float32_stays_finite_and_close_to_float64_far_out_in_the_tails():
    mix64 = random_mixture(d=2, seed=7)
    mix32 = mix64.to(dtype=torch.float32)
    # Points 60 units out: every component density underflows in float32, the log-sum-exp form does not.
    x = torch.tensor([[60.0, -60.0], [0.3, 0.1], [-45.0, 5.0]], dtype=F64)
    for alpha, sigma in [(0.9, 0.1), (1.0, 0.0), (0.2, 0.98)]:
        for method in ("denoise", "eps", "v"):
            if method != "denoise" and sigma == 0.0:
                continue
            got = getattr(mix32, method)(x.float(), alpha, sigma)
            want = getattr(mix64, method)(x, alpha, sigma)
            assert torch.isfinite(got).all(), (method, alpha, sigma)
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    lp32, lp64 = mix32.log_prob(x.float()), mix64.log_prob(x)
    assert torch.isfinite(lp32).all()
    torch.testing.assert_close(lp32.double(), lp64, rtol=1e-5, atol=1e-4)


def test_eps_is_zero_and_denoise_is_identity_at_sigma_zero():
    mix = random_mixture(d=2)
    x = torch.randn(10, 2, dtype=F64)
    torch.testing.assert_close(mix.eps(x, 1.0, 0.0), torch.zeros_like(x))
    torch.testing.assert_close(mix.denoise(x, 1.0, 0.0), x)


def test_denoise_at_alpha_zero_is_the_prior_mean():
    mix = random_mixture(d=3)
    x = torch.randn(5, 3, dtype=F64)
    torch.testing.assert_close(mix.denoise(x, 0.0, 1.0), mix.mean().expand(5, 3))


def test_log_prob_of_one_component_is_the_gaussian_density_and_the_mixture_integrates_to_one():
    one = GaussianMixture(torch.tensor([[0.5, -1.0]], dtype=F64), torch.tensor([0.7], dtype=F64))
    x = torch.randn(20, 2, dtype=F64)
    ref = torch.distributions.MultivariateNormal(torch.tensor([0.5, -1.0], dtype=F64), 0.49 * torch.eye(2, dtype=F64))
    torch.testing.assert_close(one.log_prob(x), ref.log_prob(x))
    mix = random_mixture(d=2, seed=11)
    c = torch.linspace(-9, 9, 401, dtype=F64)  # spacing 0.045 < a quarter of the smallest std: the sum is exact to ~1e-12
    grid = torch.stack(torch.meshgrid(c, c, indexing="ij"), -1)
    mass = mix.log_prob(grid).exp().sum() * (c[1] - c[0]) ** 2
    assert abs(float(mass) - 1.0) < 1e-6


def test_marginal_is_the_law_of_alpha_x0_plus_sigma_eps():
    mix = random_mixture(d=2, seed=4)
    alpha, sigma = 0.6, 0.8
    marg = mix.marginal(alpha, sigma)
    torch.testing.assert_close(marg.mean(), alpha * mix.mean())
    torch.testing.assert_close(marg.covariance(), alpha**2 * mix.covariance() + sigma**2 * torch.eye(2, dtype=F64))
    g = torch.Generator().manual_seed(0)
    xt = alpha * mix.sample(200_000, g) + sigma * torch.randn(200_000, 2, generator=g, dtype=F64)
    # The average log-density of true draws equals minus the entropy, estimated from the marginal's own samples.
    torch.testing.assert_close(marg.log_prob(xt).mean(), marg.log_prob(marg.sample(200_000, g)).mean(), rtol=0, atol=0.01)


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------
def test_samples_have_the_mixtures_mean_covariance_and_component_frequencies():
    mix = random_mixture(d=3, seed=2)
    n = 200_000
    x, k = mix.sample(n, torch.Generator().manual_seed(0), return_components=True)
    assert x.shape == (n, 3) and x.dtype == F64
    scale = mix.covariance().diagonal().sqrt()
    assert ((x.mean(0) - mix.mean()).abs() < 5 * scale / math.sqrt(n)).all()
    torch.testing.assert_close(torch.cov(x.T), mix.covariance(), rtol=0.02, atol=0.02)
    freq = torch.bincount(k, minlength=mix.num_components).double() / n
    assert ((freq - mix.weights).abs() < 5 * (mix.weights * (1 - mix.weights) / n).sqrt()).all()
    # Within a component: that component's mean and std.
    sel = x[k == 0]
    assert (sel.mean(0) - mix.means[0]).abs().max() < 5 * mix.stds[0] / math.sqrt(len(sel))
    assert abs(float(sel.std(0).mean() / mix.stds[0]) - 1) < 0.02


def test_sampling_is_reproducible_with_a_generator_and_takes_a_dtype():
    mix = random_mixture()
    a = mix.sample(100, torch.Generator().manual_seed(3))
    b = mix.sample(100, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert mix.sample(7, dtype=torch.float32).dtype == torch.float32
    assert mix.sample(0).shape == (0, 3)


# ---------------------------------------------------------------------------------------------
# Class-conditional mixtures
# ---------------------------------------------------------------------------------------------
def test_condition_is_the_mixture_restricted_to_a_subset_and_matches_masked_predictions():
    mix = random_mixture(m=6, d=2, seed=8)
    subset = [1, 4, 5]
    mask = torch.zeros(6, dtype=torch.bool)
    mask[subset] = True
    cond = mix.condition(subset)
    assert cond.num_components == 3
    torch.testing.assert_close(cond.weights, mix.weights[mask] / mix.weights[mask].sum())
    assert torch.equal(mix.condition(mask).means, cond.means)
    x = torch.randn(30, 2, dtype=F64)
    torch.testing.assert_close(mix.log_prob(x, mask=mask), cond.log_prob(x))
    for method in ("denoise", "eps", "v"):
        torch.testing.assert_close(getattr(mix, method)(x, 0.7, 0.5, mask=subset), getattr(cond, method)(x, 0.7, 0.5))


def test_per_sample_masks_condition_each_sample_on_its_own_class():
    mix = random_mixture(m=4, d=2, seed=9)
    classes = [[0, 1], [2, 3]]
    x = torch.randn(6, 2, dtype=F64)
    label = torch.tensor([0, 1, 1, 0, 1, 0])
    per_sample = torch.zeros(6, 4, dtype=torch.bool)
    for i, c in enumerate(label.tolist()):
        per_sample[i, classes[c]] = True
    got = mix.eps(x, 0.6, 0.8, mask=per_sample)
    want = torch.stack([mix.condition(classes[c]).eps(x[i : i + 1], 0.6, 0.8)[0] for i, c in enumerate(label.tolist())])
    torch.testing.assert_close(got, want)


def test_mixture_model_returns_uncond_then_cond_at_the_schedules_noise_level():
    mix = ring().to(dtype=torch.float32)
    ac = scaled_linear_alphas_cumprod()
    x = torch.randn(5, 2)
    t = 437
    alpha, sigma = math.sqrt(ac[t]), math.sqrt(1 - ac[t])
    plain = MixtureModel(mix, ac)
    torch.testing.assert_close(plain(x, t), mix.eps(x, alpha, sigma))
    guided = MixtureModel(mix, ac, cond=[0, 2, 4, 6])
    out = guided(x, t)
    assert out.shape == (10, 2)
    torch.testing.assert_close(out[:5], mix.eps(x, alpha, sigma))
    torch.testing.assert_close(out[5:], mix.condition([0, 2, 4, 6]).eps(x, alpha, sigma))
    # Per-sample timesteps, and the other prediction types.
    ts = torch.tensor([999, 500, 0, 10, 437])
    a, s = ac[ts].sqrt().float(), (1 - ac[ts]).sqrt().float()
    torch.testing.assert_close(plain(x, ts), mix.eps(x, a, s))
    torch.testing.assert_close(MixtureModel(mix, ac, prediction_type="v_prediction")(x, ts), mix.v(x, a, s))
    torch.testing.assert_close(MixtureModel(mix, ac, prediction_type="sample")(x, ts), mix.denoise(x, a, s))
    assert plain.calls == 2 and guided.calls == 1


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: GaussianMixture(torch.zeros(3), torch.ones(3)), r"means expected shape \(M, d\)"),
        (lambda: GaussianMixture(torch.zeros(3, 2), torch.ones(2)), r"stds expected shape \(3,\)"),
        (lambda: GaussianMixture(torch.zeros(2, 2), torch.tensor([1.0, 0.0])), "stds expected finite positive"),
        (lambda: GaussianMixture(torch.zeros(2, 2), torch.ones(2), torch.tensor([1.0, -1.0])), "weights expected finite non-negative"),
        (lambda: ring().eps(torch.zeros(4, 3, dtype=F64), 0.5, 0.5), r"x expected shape \(\.\.\., 2\)"),
        (lambda: ring().eps(torch.zeros(4, 2, dtype=F64), torch.ones(3), 0.5), r"alpha expected a number or a per-sample tensor of shape \(4,\)"),
        (lambda: ring().eps(torch.zeros(4, 2, dtype=F64), 0.0, 0.0), "not both 0"),
        (lambda: ring().eps(torch.zeros(4, 2, dtype=F64), -0.5, 0.5), "alpha >= 0"),
        (lambda: ring().condition([]), "selects no component"),
        (lambda: ring().condition([8]), r"values in \[0, 7\]"),
        (lambda: ring().eps(torch.zeros(4, 2, dtype=F64), 0.5, 0.5, mask=torch.zeros(4, 8, dtype=torch.bool)), "at least one component"),
        (lambda: ring().predict(torch.zeros(4, 2, dtype=F64), 0.5, 0.5, "score"), "prediction_type expected"),
        (lambda: MixtureModel(ring(), scaled_linear_alphas_cumprod())(torch.zeros(2, 2), 1000), r"timesteps in \[0, 999\]"),
        (lambda: sliced_wasserstein(torch.zeros(3, 2), torch.zeros(4, 2)), "same shape"),
        (lambda: ring().solve_pf_ode(torch.zeros(4, 2), (0.5, 0.5), (1.0, 0.0), steps=0), "steps expected a positive int"),
        (lambda: ring().solve_pf_ode(torch.zeros(4, 2), (0.0, 0.0), (1.0, 0.0)), "start expected"),
        (lambda: MixtureModel(ring(), scaled_linear_alphas_cumprod(), prediction_type="flow_prediction"), "prediction_type expected"),
    ],
)
def test_bad_input_raises_a_clear_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ---------------------------------------------------------------------------------------------
# The probability-flow ODE
# ---------------------------------------------------------------------------------------------
def test_flow_prediction_is_eps_minus_x0():
    mix, x = random_mixture(), torch.randn(16, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    torch.testing.assert_close(mix.predict(x, 0.6, 0.8, "flow_prediction"), mix.eps(x, 0.6, 0.8) - mix.denoise(x, 0.6, 0.8))


def test_pf_ode_solve_of_one_gaussian_is_the_closed_form_and_converges_at_fourth_order():
    # One component N(mu, s^2 I): in VE coordinates x(sigma) = mu + (x(sigma0) - mu) sqrt((s^2 + sigma^2) / (s^2 + sigma0^2)).
    mu, s = torch.tensor([[1.0, -2.0]], dtype=F64), 0.3
    mix = GaussianMixture(mu, [s])
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    a0, q0 = 0.0683, math.sqrt(1 - 0.0683**2)
    sig0 = q0 / a0
    want = mu + (x / a0 - mu) * s / math.sqrt(s**2 + sig0**2)
    errs = [float((mix.solve_pf_ode(x, (a0, q0), (1.0, 0.0), steps=n) - want).abs().max()) for n in (20, 40, 400)]
    assert errs[2] < 1e-11
    assert 10 < errs[0] / errs[1] < 24  # 2^4 = 16: fourth order
    # to an intermediate level, returned in that level's coordinates (alpha, sigma)
    a1, q1 = 0.8, 0.6
    mid = mix.solve_pf_ode(x, (a0, q0), (a1, q1), steps=400)
    sig1 = q1 / a1
    torch.testing.assert_close(mid, a1 * (mu + (x / a0 - mu) * math.sqrt((s**2 + sig1**2) / (s**2 + sig0**2))), rtol=1e-10, atol=1e-10)


def test_pf_ode_solve_runs_backwards_to_where_it_started_and_keeps_the_dtype():
    mix = ring()
    x = torch.randn(128, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    there = mix.solve_pf_ode(x, (0.0, 1.0), (0.9, 0.3), steps=400)
    torch.testing.assert_close(mix.solve_pf_ode(there, (0.9, 0.3), (0.0, 1.0), steps=400), x, rtol=1e-7, atol=1e-7)
    assert mix.solve_pf_ode(x.float(), (0.0, 1.0), (1.0, 0.0), steps=10).dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# The distance, and samplers through fastdiff reaching the target
# ---------------------------------------------------------------------------------------------
def test_sliced_wasserstein_is_zero_for_equal_sets_and_measures_a_translation():
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert sliced_wasserstein(x, x[torch.randperm(20)]) < 1e-15
    shift = torch.tensor([0.3, -0.4], dtype=F64)  # |shift| = 0.5; E|<shift, u>| over unit u in 2-D = 0.5 * 2 / pi
    got = sliced_wasserstein(x + shift, x, projections=20000, generator=torch.Generator().manual_seed(1))
    assert abs(got - 1.0 / math.pi) < 0.01 / math.pi
    got2 = sliced_wasserstein(x + shift, x, p=2, projections=20000, generator=torch.Generator().manual_seed(1))
    assert abs(got2 - 0.5 / math.sqrt(2)) < 0.01  # sqrt(E <shift, u>^2) = |shift| / sqrt(2)


def run_sampler(model, table, timesteps, noise, guidance_scale=None):
    """The plain sampling loop: one model call and one fused fastdiff.ops.sampler_update per step."""
    rows = table.to(torch.float32)
    k = rows.shape[1] - 6
    history = torch.zeros(k, *noise.shape) if k else None
    x = noise
    for i, t in enumerate(timesteps):
        x = fastdiff.ops.sampler_update(x, model(x, t), rows[i], history=history, guidance_scale=guidance_scale)
    return x


def projections():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("table_fn", [ddim_table, dpmpp_2m_table], ids=["ddim", "dpmpp_2m"])
def test_sampler_through_fastdiff_with_exact_guided_model_reaches_the_conditional_target(table_fn):
    n = 4000
    mix = ring().to(dtype=torch.float32)
    target = mix.condition([0, 2, 4, 6])
    ac = scaled_linear_alphas_cumprod()
    model = MixtureModel(mix, ac, cond=[0, 2, 4, 6])
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    exact = target.sample(n, torch.Generator().manual_seed(1))

    def sample(steps):
        ts = log_snr_timesteps(ac, steps)
        return run_sampler(model, table_fn(ac, ts), ts, noise, guidance_scale=1.0)

    coarse = sliced_wasserstein(sample(3), exact, generator=projections())
    x = sample(100)
    fine = sliced_wasserstein(x, exact, generator=projections())
    # Two exact sample sets of this size sit 0.014 to 0.03 apart (seed to seed); 100 steps get there.
    assert fine < 0.04, fine
    assert coarse > 3 * fine, (coarse, fine)  # the distance measures solver error: too few steps show
    torch.testing.assert_close(x.mean(0).double(), target.mean().double(), rtol=0, atol=0.04)
    torch.testing.assert_close(torch.cov(x.T.double()), target.covariance().double(), rtol=0, atol=0.06)
    # Within each component the spread is the component's std (no shrinkage, no blur).
    nearest = torch.cdist(x, mix.means).argmin(1)
    spread = (x - mix.means[nearest]).pow(2).sum(1).mean().div(2).sqrt()
    assert abs(float(spread) / 0.22 - 1) < 0.03, float(spread)
    # And it is class 0, not the whole ring: the unconditional mixture is far away.
    assert sliced_wasserstein(mix.sample(n, torch.Generator().manual_seed(3)), exact, generator=projections()) > 3 * fine


def test_unguided_sampler_reaches_the_whole_mixture():
    n = 4000
    mix = ring().to(dtype=torch.float32)
    ac = scaled_linear_alphas_cumprod()
    ts = log_snr_timesteps(ac, 40)
    x = run_sampler(MixtureModel(mix, ac), dpmpp_2m_table(ac, ts), ts, torch.randn(n, 2, generator=torch.Generator().manual_seed(4)))
    exact = mix.sample(n, torch.Generator().manual_seed(5))
    assert sliced_wasserstein(x, exact, generator=projections()) < 0.04
    # Every component receives its share (1/8) of the samples.
    share = torch.bincount(torch.cdist(x, mix.means).argmin(1), minlength=8).double() / n
    assert (share - 0.125).abs().max() < 0.02, share
