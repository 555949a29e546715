"""An analytic test distribution: an isotropic Gaussian mixture whose denoiser is exact.

Under the forward process ``x_t = alpha x0 + sigma eps`` (VP, VE and flow-matching alike: alpha and
sigma are free), component k of ``p(x0) = sum_k w_k N(mu_k, s_k^2 I)`` stays Gaussian:
``N(alpha mu_k, v_k I)`` with ``v_k = alpha^2 s_k^2 + sigma^2``. So the noised marginal, the posterior
responsibilities ``r_k(x) = P(k | x_t = x)`` and the posterior mean are closed form::

    E[x0 | x_t = x] = sum_k r_k(x) (mu_k + alpha s_k^2 / v_k (x - alpha mu_k))
    E[eps | x_t = x] = sigma sum_k r_k(x) (x - alpha mu_k) / v_k        (= -sigma grad log p_t(x))

A sampler driven by these predictions has no model error, so what is left of its distance to the
target is solver error: this is the yardstick the demo and the sampler tests use. The epsilon form
above is used (rather than ``(x - alpha x0) / sigma``) because it stays finite at sigma = 0.

`MixtureModel` wraps a mixture as a ``model_fn(x, t)`` over a discrete ``alphas_cumprod`` schedule,
returning the batched ``[uncond; cond]`` output for classifier-free guidance when a condition
(a subset of components, per run or per sample) is given.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

Number = Union[float, int]
Coef = Union[Number, Tensor]
Mask = Union[Tensor, Sequence[bool], Sequence[int]]

#: MixtureModel's outputs over a discrete alphas_cumprod schedule
DIFFUSION_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
PREDICTION_TYPES = DIFFUSION_PREDICTION_TYPES + ("flow_prediction",)


def _noise_level(where: str, alpha: Number, sigma: Number) -> tuple[float, float]:
    """(alpha, sigma) as floats, refused unless finite, non-negative and not both 0."""
    alpha, sigma = float(alpha), float(sigma)
    if not (math.isfinite(alpha) and math.isfinite(sigma)) or alpha < 0 or sigma < 0 or (alpha == 0 and sigma == 0):
        raise ValueError(f"{where} expected finite alpha, sigma >= 0, not both 0, got alpha={alpha}, sigma={sigma}")
    return alpha, sigma


def _is_cpu_eager(t: Tensor) -> bool:
    # Value checks read the tensor; only do it where that costs no device sync and not while tracing.
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


class GaussianMixture:
    """``sum_k w_k N(mu_k, s_k^2 I)`` in d dimensions, with exact noised marginals and denoiser.

    means: (M, d). stds: (M,) positive. weights: (M,) non-negative with a positive sum (normalised
    here); None for equal weights. Parameters keep a floating tensor's dtype (float32 or float64),
    otherwise take torch's default dtype. Methods compute in the dtype and device of their ``x``.
    """

    def __init__(self, means: Union[Tensor, Sequence[Sequence[float]]], stds: Union[Tensor, Sequence[float]], weights: Optional[Union[Tensor, Sequence[float]]] = None):
        means_t = torch.as_tensor(means)
        if not means_t.is_floating_point():
            means_t = means_t.to(torch.get_default_dtype())
        dtype, device = means_t.dtype, means_t.device
        if means_t.dim() != 2 or means_t.shape[0] < 1 or means_t.shape[1] < 1:
            raise ValueError(f"GaussianMixture: means expected shape (M, d) with M, d >= 1, got {tuple(means_t.shape)}")
        m = means_t.shape[0]
        stds_t = torch.as_tensor(stds, dtype=dtype, device=device)
        if stds_t.dim() == 0:
            stds_t = stds_t.expand(m)
        if tuple(stds_t.shape) != (m,):
            raise ValueError(f"GaussianMixture: stds expected shape ({m},) (one std per component), got {tuple(stds_t.shape)}")
        w = torch.ones(m, dtype=dtype, device=device) if weights is None else torch.as_tensor(weights, dtype=dtype, device=device)
        if tuple(w.shape) != (m,):
            raise ValueError(f"GaussianMixture: weights expected shape ({m},), got {tuple(w.shape)}")
        if _is_cpu_eager(means_t):
            if not bool(torch.isfinite(means_t).all()):
                raise ValueError("GaussianMixture: means expected finite values")
            if not bool((torch.isfinite(stds_t) & (stds_t > 0)).all()):
                raise ValueError(f"GaussianMixture: stds expected finite positive values, got {stds_t.tolist()}")
            if not bool((torch.isfinite(w) & (w >= 0)).all()) or not float(w.sum()) > 0:
                raise ValueError(f"GaussianMixture: weights expected finite non-negative values with a positive sum, got {w.tolist()}")
        self.means = means_t
        self.stds = stds_t
        self.weights = w / w.sum()

    # -----------------------------------------------------------------------------------------
    # Basic properties
    # -----------------------------------------------------------------------------------------
    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    @property
    def device(self) -> torch.device:
        return self.means.device

    def __repr__(self) -> str:
        return f"GaussianMixture(M={self.num_components}, d={self.dim}, {self.dtype}, {self.device})"

    def to(self, device: Optional[Union[str, torch.device]] = None, dtype: Optional[torch.dtype] = None) -> "GaussianMixture":
        """The same mixture with parameters on another device / in another dtype."""
        return GaussianMixture(self.means.to(device=device, dtype=dtype), self.stds.to(device=device, dtype=dtype), self.weights.to(device=device, dtype=dtype))

    def mean(self) -> Tensor:
        """E[x0], shape (d,)."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Cov[x0], shape (d, d): within-component plus between-component spread."""
        c = self.means - self.mean()
        within = (self.weights * self.stds**2).sum() * torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return within + (self.weights[:, None] * c).T @ c

    # -----------------------------------------------------------------------------------------
    # Sub-mixtures and noised marginals
    # -----------------------------------------------------------------------------------------
    def component_mask(self, mask: Mask) -> Tensor:
        """A (M,) bool mask from a bool mask or a sequence of component indices."""
        t = torch.as_tensor(mask, device=self.device)
        if t.numel() == 0 and t.dim() == 1 and t.dtype != torch.bool:  # an empty index list
            t = t.long()
        if t.dtype == torch.bool:
            if tuple(t.shape) != (self.num_components,):
                raise ValueError(f"GaussianMixture: a component mask expected shape ({self.num_components},), got {tuple(t.shape)}")
            return t
        if t.dtype.is_floating_point or t.dim() != 1:
            raise ValueError(f"GaussianMixture: components expected a ({self.num_components},) bool mask or a 1-D list of indices, got {t.dtype} of shape {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_components):
            raise ValueError(f"GaussianMixture: component indices expected values in [0, {self.num_components - 1}], got {t.tolist()}")
        out = torch.zeros(self.num_components, dtype=torch.bool, device=self.device)
        out[t.long()] = True
        return out

    def condition(self, mask: Mask) -> "GaussianMixture":
        """The mixture restricted to a subset of components (weights renormalised): p(x0 | class)."""
        keep = self.component_mask(mask)
        if not bool(keep.any()):
            raise ValueError("GaussianMixture.condition: the mask selects no component")
        if not float(self.weights[keep].sum()) > 0:
            raise ValueError("GaussianMixture.condition: the selected components all have weight 0")
        return GaussianMixture(self.means[keep], self.stds[keep], self.weights[keep])

    def marginal(self, alpha: Number, sigma: Number) -> "GaussianMixture":
        """The law of ``alpha x0 + sigma eps``: components ``N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I)``."""
        alpha, sigma = _noise_level("GaussianMixture.marginal:", alpha, sigma)
        stds = torch.sqrt(alpha**2 * self.stds**2 + sigma**2)
        return GaussianMixture(alpha * self.means, stds, self.weights)

    # -----------------------------------------------------------------------------------------
    # Sampling and density
    # -----------------------------------------------------------------------------------------
    def sample(
        self,
        n: int,
        generator: Optional[torch.Generator] = None,
        *,
        dtype: Optional[torch.dtype] = None,
        return_components: bool = False,
    ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """n exact samples (n, d) on the mixture's device; with return_components also their (n,) component ids."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"GaussianMixture.sample: n expected a non-negative int, got {n!r}")
        dtype = dtype or self.dtype
        if n == 0:
            k = torch.zeros(0, dtype=torch.long, device=self.device)
        else:
            k = torch.multinomial(self.weights.to(torch.float64), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=dtype, device=self.device)
        x = self.means.to(dtype)[k] + self.stds.to(dtype)[k, None] * z
        return (x, k) if return_components else x

    def log_prob(self, x: Tensor, *, mask: Optional[Mask] = None) -> Tensor:
        """log p(x0 = x) for x of shape (..., d); returns shape (...). With a mask (see `denoise`),
        the density of the mixture restricted to those components, as `condition` gives it."""
        logits, _, _ = self._posterior_logits(x, 1.0, 0.0)
        if mask is None:
            return torch.logsumexp(logits, dim=-1)
        # The restricted mixture's density: its weights renormalised over the kept components.
        keep = self._sample_mask(mask, x)
        log_w = torch.log(self.weights.to(x.device, x.dtype)).expand_as(logits).masked_fill(~keep, -math.inf)
        return torch.logsumexp(logits.masked_fill(~keep, -math.inf), dim=-1) - torch.logsumexp(log_w, dim=-1)

    # -----------------------------------------------------------------------------------------
    # Exact predictions at x_t = alpha x0 + sigma eps
    # -----------------------------------------------------------------------------------------
    def denoise(self, x: Tensor, alpha: Coef, sigma: Coef, *, mask: Optional[Mask] = None) -> Tensor:
        """E[x0 | x_t = x], exact. x: (..., d); alpha, sigma: numbers, 0-d tensors or per-sample
        tensors of shape x.shape[:-1]. mask: restrict the prior to a subset of components, one
        (M,) mask (or index list) for every sample or a (..., M) bool mask per sample
        (class-conditional predictions)."""
        return self.predict(x, alpha, sigma, "sample", mask=mask)

    def eps(self, x: Tensor, alpha: Coef, sigma: Coef, *, mask: Optional[Mask] = None) -> Tensor:
        """E[eps | x_t = x] = -sigma grad log p_t(x), exact; finite at sigma = 0 (where it is 0)."""
        return self.predict(x, alpha, sigma, "epsilon", mask=mask)

    def v(self, x: Tensor, alpha: Coef, sigma: Coef, *, mask: Optional[Mask] = None) -> Tensor:
        """E[v | x_t = x] with v = alpha eps - sigma x0 (Salimans and Ho 2022), exact."""
        return self.predict(x, alpha, sigma, "v_prediction", mask=mask)

    def predict(self, x: Tensor, alpha: Coef, sigma: Coef, prediction_type: str = "epsilon", *, mask: Optional[Mask] = None) -> Tensor:
        """The exact model output of the given type: 'epsilon', 'v_prediction', 'sample' (x0) or
        'flow_prediction' (eps - x0, a rectified-flow model's velocity)."""
        return self.predict_many(x, alpha, sigma, prediction_type, masks=[mask])[0]

    def predict_many(self, x: Tensor, alpha: Coef, sigma: Coef, prediction_type: str = "epsilon", *, masks: Sequence[Optional[Mask]] = (None,)) -> list[Tensor]:
        """`predict` under several component masks at once (None: the whole mixture), sharing the
        per-component work: what a guided [uncond; cond] model call needs."""
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"GaussianMixture: prediction_type expected one of {PREDICTION_TYPES}, got {prediction_type!r}")
        logits, diff, var = self._posterior_logits(x, alpha, sigma)
        a, s = self._coef(alpha, x, "alpha"), self._coef(sigma, x, "sigma")
        mu = self.means.to(x.device, x.dtype)
        s2 = self.stds.to(x.device, x.dtype) ** 2
        outs = []
        for mask in masks:
            lg = logits if mask is None else logits.masked_fill(~self._sample_mask(mask, x), -math.inf)
            r = torch.softmax(lg, dim=-1)[..., None]  # (..., M, 1): posterior responsibilities
            # eps = sigma sum_k r_k (x - alpha mu_k) / v_k; x0 = sum_k r_k (mu_k + alpha s_k^2 / v_k (x - alpha mu_k))
            eps = s * (r * diff / var[..., None]).sum(-2) if prediction_type != "sample" else None
            x0 = (r * (mu + (a * s2 / var)[..., None] * diff)).sum(-2) if prediction_type != "epsilon" else None
            if prediction_type == "flow_prediction":
                outs.append(eps - x0)
            else:
                outs.append(eps if x0 is None else x0 if eps is None else a * eps - s * x0)
        return outs

    # -----------------------------------------------------------------------------------------
    # The probability-flow ODE
    # -----------------------------------------------------------------------------------------
    def flow_velocity(self, x: Tensor, t: float) -> Tensor:
        """E[eps - x0 | x_t = x] at rectified-flow time t (alpha = 1 - t, sigma = t): dx/dt of the PF ODE."""
        return self.predict(x, 1.0 - t, t, "flow_prediction")

    def solve_pf_ode(self, x: Tensor, start: tuple[float, float], end: tuple[float, float], *, steps: int = 1000) -> Tensor:
        """Carry states ``x`` (..., d) at noise level ``start = (alpha, sigma)`` along the probability-flow
        ODE to level ``end``; returns them in end's coordinates (``end = (1, 0)``: the clean sample).

        Every Gaussian path ``alpha x0 + sigma eps`` has the same PF-ODE trajectories up to a scale
        and a change of time (Karras et al. 2022), so the solve runs in rectified-flow coordinates
        ``x / (alpha + sigma)`` at ``t = sigma / (alpha + sigma)``, where the velocity stays finite at
        both ends (t = 1, pure noise, and t = 0), with classical RK4 on ``steps`` uniform steps in
        float64. The error falls as steps^-4: halve ``steps`` to see how many digits are exact.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"GaussianMixture.solve_pf_ode: steps expected a positive int, got {steps!r}")
        a0, s0 = _noise_level("GaussianMixture.solve_pf_ode: start", *start)
        a1, s1 = _noise_level("GaussianMixture.solve_pf_ode: end", *end)
        mix = self.to(dtype=torch.float64)
        t0, t1 = s0 / (a0 + s0), s1 / (a1 + s1)
        y = x.to(torch.float64) / (a0 + s0)
        # Grid points from the end points, not by accumulation: t must land on 0 exactly, never below.
        grid = [t0 + (t1 - t0) * i / steps for i in range(steps)] + [t1]
        for ta, tb in zip(grid, grid[1:]):
            h, tm = tb - ta, 0.5 * (ta + tb)
            k1 = mix.flow_velocity(y, ta)
            k2 = mix.flow_velocity(y + 0.5 * h * k1, tm)
            k3 = mix.flow_velocity(y + 0.5 * h * k2, tm)
            k4 = mix.flow_velocity(y + h * k3, tb)
            y = y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
        return (y * (a1 + s1)).to(x.dtype)

    # -----------------------------------------------------------------------------------------
    # Internals
    # -----------------------------------------------------------------------------------------
    def _coef(self, c: Coef, x: Tensor, name: str) -> Tensor:
        """alpha or sigma as a tensor broadcastable against x (..., d): shape () or (..., 1)."""
        t = torch.as_tensor(c, dtype=x.dtype, device=x.device)
        if t.dim() == 0:
            return t
        if tuple(t.shape) != tuple(x.shape[:-1]):
            raise ValueError(f"GaussianMixture: {name} expected a number or a per-sample tensor of shape {tuple(x.shape[:-1])}, got shape {tuple(t.shape)}")
        return t[..., None]

    def _posterior_logits(self, x: Tensor, alpha: Coef, sigma: Coef) -> tuple[Tensor, Tensor, Tensor]:
        """log(w_k N(x; alpha mu_k, v_k I)) (..., M), x - alpha mu_k (..., M, d) and v_k (..., M)."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError(f"GaussianMixture: x expected a floating-point tensor, got {type(x).__name__ if not isinstance(x, Tensor) else x.dtype}")
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"GaussianMixture: x expected shape (..., {self.dim}), got {tuple(x.shape)}")
        a = self._coef(alpha, x, "alpha")
        s = self._coef(sigma, x, "sigma")
        if _is_cpu_eager(a) and _is_cpu_eager(s):
            if not bool(((a >= 0) & (s >= 0) & ((a > 0) | (s > 0)) & torch.isfinite(a) & torch.isfinite(s)).all()):
                raise ValueError("GaussianMixture: expected finite alpha >= 0 and sigma >= 0, not both 0")
        mu = self.means.to(x.device, x.dtype)
        s2 = self.stds.to(x.device, x.dtype) ** 2
        var = a**2 * s2 + s**2  # (..., M) or (M,)
        var = var.expand(*x.shape[:-1], self.num_components)
        diff = x[..., None, :] - a[..., None] * mu  # (..., M, d)
        sq = (diff * diff).sum(-1)
        d = self.dim
        logits = torch.log(self.weights.to(x.device, x.dtype)) - 0.5 * sq / var - 0.5 * d * torch.log((2 * math.pi) * var)
        return logits, diff, var

    def _sample_mask(self, mask: Mask, x: Tensor) -> Tensor:
        m = self.num_components
        t = torch.as_tensor(mask, device=x.device)
        if t.dtype != torch.bool or t.dim() <= 1:
            t = self.component_mask(t.to(self.device)).to(x.device)
        elif tuple(t.shape) != (*x.shape[:-1], m):
            raise ValueError(f"GaussianMixture: mask expected shape ({m},) or {(*x.shape[:-1], m)} (per sample), got {tuple(t.shape)}")
        if _is_cpu_eager(t):
            w = self.weights.to(x.device)
            if not bool(((w > 0) & t).any(-1).all()):
                raise ValueError("GaussianMixture: mask expected at least one component of positive weight per sample")
        return t


class MixtureModel:
    """A diffusion model with no model error: ``model_fn(x, t)`` returns a mixture's exact prediction.

    ``alphas_cumprod`` (T,) is the discrete schedule: at timestep t, ``alpha = sqrt(alphas_cumprod[t])``
    and ``sigma = sqrt(1 - alphas_cumprod[t])``. With ``cond`` (a component mask or index list, or a
    per-sample (N, M) bool mask) the call returns the batched ``[uncond; cond]`` output (2N, d) that
    classifier-free guidance combines: uncond is the full mixture, cond the mixture restricted to the
    selected components. ``calls`` counts model evaluations.
    """

    def __init__(self, mixture: GaussianMixture, alphas_cumprod: Tensor, *, cond: Optional[Mask] = None, prediction_type: str = "epsilon"):
        if prediction_type not in DIFFUSION_PREDICTION_TYPES:
            raise ValueError(f"MixtureModel: prediction_type expected one of {DIFFUSION_PREDICTION_TYPES}, got {prediction_type!r}")
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if ac.dim() != 1 or ac.numel() < 1 or not bool(((ac > 0) & (ac <= 1)).all()):
            raise ValueError("MixtureModel: alphas_cumprod expected a 1-D tensor of values in (0, 1]")
        self.mixture = mixture
        self.alphas_cumprod = ac
        self.prediction_type = prediction_type
        self.cond = cond
        self.calls = 0
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    @property
    def guided(self) -> bool:
        return self.cond is not None

    def alpha_sigma(self, t: Union[int, Tensor], like: Tensor) -> tuple[Tensor, Tensor]:
        """alpha_t, sigma_t in like's dtype and device: 0-d for one timestep, (N,) for per-sample ones."""
        key = (like.device, like.dtype)
        if key not in self._tables:
            self._tables[key] = (self.alphas_cumprod.sqrt().to(like.device, like.dtype), (1 - self.alphas_cumprod).sqrt().to(like.device, like.dtype))
        alpha, sigma = self._tables[key]
        idx = torch.as_tensor(t, device=like.device)
        if idx.is_floating_point() or idx.dim() > 1:
            raise ValueError(f"MixtureModel: t expected an integer timestep or an (N,) tensor of them, got {idx.dtype} of shape {tuple(idx.shape)}")
        if _is_cpu_eager(idx) and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.alphas_cumprod.numel()):
            raise ValueError(f"MixtureModel: t expected timesteps in [0, {self.alphas_cumprod.numel() - 1}], got {idx.tolist()}")
        return alpha[idx], sigma[idx]

    def __call__(self, x: Tensor, t: Union[int, Tensor]) -> Tensor:
        self.calls += 1
        alpha, sigma = self.alpha_sigma(t, x)
        if self.cond is None:
            return self.mixture.predict(x, alpha, sigma, self.prediction_type)
        return torch.cat(self.mixture.predict_many(x, alpha, sigma, self.prediction_type, masks=[None, self.cond]))


def sliced_wasserstein(a: Tensor, b: Tensor, *, p: float = 1.0, projections: int = 128, generator: Optional[torch.Generator] = None) -> float:
    """Sliced p-Wasserstein distance between two equal-size point clouds (N, d), computed in float64.

    Projects both onto ``projections`` random unit directions (drawn with ``generator``, on a's
    device); in 1-D the p-Wasserstein distance between equal-size empirical measures pairs sorted
    values. Returns ``(mean over directions of W_p^p) ^ (1/p)``. p = 1 (the default) is the robust
    choice for mixtures: W2 grows like the square root of mass moved between distant components, so
    the multinomial noise in component counts dominates it. Two independent exact samples of size N
    sit about N^-1/2 apart: compare with that floor.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape != b.shape or a.shape[0] < 1:
        raise ValueError(f"sliced_wasserstein: expected two non-empty (N, d) tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not p >= 1:
        raise ValueError(f"sliced_wasserstein: p expected a number >= 1, got {p}")
    acc = torch.float64
    dirs = torch.randn(projections, a.shape[1], generator=generator, dtype=acc, device=a.device)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    # (projections, N): each direction's projections contiguous, so the sorts run along rows.
    pa = torch.sort(dirs @ a.to(acc).T, dim=1).values
    pb = torch.sort(dirs @ b.to(a.device, acc).T, dim=1).values
    return float(((pa - pb).abs() ** p).mean() ** (1.0 / p))
