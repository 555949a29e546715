"""Sampler accuracy on an analytic Gaussian mixture: fastdiff beside diffusers, against the exact ODE solution.

The model is the mixture's exact prediction at the sampler's own noise level
(fastdiff.models.gaussian_mixture), so what separates a sampler's output from the truth is its
discretisation error alone. Two measures per sampler and number of model evaluations (NFE):

- ODE error (deterministic samplers): RMS distance, over samples, between the sampler's output and
  the exact probability-flow ODE solution from the same starting noise (a float64 RK4 solve with
  `--reference-steps` steps, checked against one with half as many).
- Sliced W1 (every sampler, stochastic ones included): the distance of the N outputs to N exact
  samples of the target; the floor is the same distance between two independent exact sample sets.

Both are measured for fastdiff.sample and for diffusers' scheduler of the same name and
configuration, run on the same starting noise, in float32.

    fastdiff bench samplers --out benchmarks/results/cpu        # JSON + markdown + PNG plot
    python benchmarks/sampler_accuracy.py --n 2000 --nfe 5,10 --samplers ddim,dpmpp_2m
"""

from __future__ import annotations

import argparse
import inspect
import math
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

import fastdiff
from fastdiff.models.gaussian_mixture import GaussianMixture, sliced_wasserstein
from fastdiff.samplers import NAMED, Sampler, make_sampler

from ._report import finish_study, pyplot

NFE = [5, 10, 15, 20, 50]
#: samplers that inject fresh noise: no single ODE solution to compare with (SA-Solver: tau = 1 on
#: timesteps 200..800, its default)
STOCHASTIC = {"ddpm", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde", "lcm", "sa_solver", "tcd", "dpm2_ancestral", "dpmpp_sde"}
#: runs up the levels, from data to noise: it starts at exact data samples noised to its first level, and
#: its target is the exact marginal at its last level
INVERSION = {"ddim_inversion", "dpmpp_2m_inversion"}
_KARRAS = {"use_karras_sigmas": True}
#: schedulers whose model is EDM's preconditioned network F
EDM = {"EDMEulerScheduler", "EDMDPMSolverMultistepScheduler"}
NOT_MEASURED: set = set()
#: two-stage samplers whose second stage evaluates at the log-midpoint level, where the plan's levels say
#: the step's end (the level diffusers' add_noise reads, which inpainting needs): their model's level is
#: read from its time input instead, sigma(t) on the training schedule's log-sigmas, which inverts the
#: schedulers' own sigma -> t interpolation
MIDPOINT = {"KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DPMSolverSDEScheduler"}
#: Two grids. "sd": each sampler's SD set-up (scaled_linear betas, trailing timesteps, final sigma 0),
#: what a pipeline runs; EDM-Euler and IPNDM run on their own schedules (EDM's Karras sigmas 80 ..
#: 0.002 with preconditioning, IPNDM's sin^2 levels), which have no SD form. "karras": the samplers that take Karras sigmas, all on the same rho = 7 grid
#: from the schedule's sigma_max to sigma_min, then 0: the grid exponential integrators are built for.
#: Euler and Heun need linspace spacing there, or diffusers takes sigma_min from the last trailing step.
CONFIGS: dict[str, dict[str, dict]] = {
    "sd": {name: ({"shift": 3.0} if name == "flow_euler" else {}) for name in NAMED if name not in NOT_MEASURED},
    "karras": {
        "euler": {"timestep_spacing": "linspace", **_KARRAS},
        "heun": {"timestep_spacing": "linspace", **_KARRAS},
        **{name: dict(_KARRAS) for name in ("dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "dpmpp_3m_sde", "unipc")},
    },
}
#: expected clearly ahead of DDIM's update at 10 NFE on the Karras grid, where Euler's step is DDIM's
ORDER_CHECK = ("dpmpp_2m", "dpmpp_3m", "unipc")
CLEARLY = 1.5
Level = tuple[float, float]


def ring(dim: int = 2, components: int = 8, radius: float = 3.0, std: float = 0.3) -> GaussianMixture:
    """8 unequal-weight Gaussians on a circle: separated modes, the shape solvers find hard at low NFE."""
    ang = torch.arange(components, dtype=torch.float64) * (2 * math.pi / components)
    means = torch.zeros(components, dim, dtype=torch.float64)
    means[:, 0], means[:, 1] = radius * ang.cos(), radius * ang.sin()
    weights = torch.linspace(1.0, 2.0, components, dtype=torch.float64)
    return GaussianMixture(means, torch.full((components,), std, dtype=torch.float64), weights)


TWO_STAGE = {"heun", "dpm2", "dpm2_ancestral", "dpmpp_sde"}


def steps_for(name: str, nfe: int) -> int:
    """The step count whose model evaluations come closest to nfe without passing it (the two-stage
    samplers, Heun and DPM-Solver-2/-SDE: 2 steps - 1)."""
    return (nfe + 1) // 2 if name in TWO_STAGE else nfe


# ---------------------------------------------------------------------------------------------
# The two implementations, driven by the same exact model
# ---------------------------------------------------------------------------------------------
def exact_output(mix: GaussianMixture, sampler: Sampler, x: Tensor, level: Level) -> Tensor:
    """The exact model output for a model input x at level (p, q): the mixture's prediction of the
    sampler's type, or for EDM the network F of its preconditioning (Karras et al. 2022, table 1:
    denoised = c_skip x_ve + c_out F at sigma = q / p, x_ve = x / p)."""
    p, q = level
    if sampler.scheduler_name not in EDM:
        return mix.predict(x, p, q, sampler.prediction_type)
    sd, sigma = sampler.config.get("sigma_data", sampler.scheduler_class._init_params()["sigma_data"]), q / p
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / math.sqrt(sigma**2 + sd**2) * (-1.0 if sampler.prediction_type == "v_prediction" else 1.0)
    return (mix.predict(x, p, q, "sample") - c_skip * (x / p)) / c_out


_LOG_SIGMAS: dict[str, np.ndarray] = {}


def midpoint_level(sampler: Sampler, t) -> Level:
    """(alpha, sigma) of a MIDPOINT sampler's model input at time input t: sigma(t) interpolated on the
    training schedule's log-sigmas, the input scaled by 1 / sqrt(sigma^2 + 1)."""
    key = repr(sorted(sampler.config.items()))
    if key not in _LOG_SIGMAS:
        import diffusers

        ac = getattr(diffusers, sampler.scheduler_name).from_config(sampler.config).alphas_cumprod.double().numpy()
        _LOG_SIGMAS[key] = np.log(((1 - ac) / ac) ** 0.5)
    log_sigmas = _LOG_SIGMAS[key]
    sigma = math.exp(float(np.interp(float(t), np.arange(len(log_sigmas)), log_sigmas)))
    a = 1 / math.sqrt(sigma**2 + 1)
    return a, sigma * a


def run_fastdiff(mix: GaussianMixture, sampler: Sampler, steps: int, noise: Tensor, seed: int) -> tuple[Tensor, int]:
    plan = sampler.plan(steps, noise.device)
    calls = []

    def model(x, t):  # the state before evaluation j sits at plan.levels[j]
        level = midpoint_level(sampler, t) if sampler.scheduler_name in MIDPOINT else plan.levels[len(calls)]
        calls.append(t)
        return exact_output(mix, sampler, x, level)

    out = fastdiff.sample(model, noise, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(seed), progress=False)
    return out, len(calls)


def diffusers_level(sched, i: int, t) -> Level:
    """(alpha, sigma) of the model input at diffusers' evaluation i, read from diffusers' own schedule."""
    name = type(sched).__name__
    if name == "IPNDMScheduler":  # its betas are the levels' sigmas
        return float(sched.alphas[i]), float(sched.betas[i])
    if name == "DDIMInverseScheduler":  # the state sits one step below the timestep the model is given
        src = min(int(t) - sched.config.num_train_timesteps // sched.num_inference_steps, sched.config.num_train_timesteps - 1)
        ac = float(sched.alphas_cumprod[src] if src >= 0 else sched.initial_alpha_cumprod)
        return math.sqrt(ac), math.sqrt(1 - ac)
    if name in EDM:  # the model input is c_in x = x / sqrt(sigma^2 + sigma_data^2)
        sigma = float(sched.sigmas[i])
        c_in = 1 / math.sqrt(sigma**2 + sched.config.sigma_data**2)
        return c_in, sigma * c_in
    if not hasattr(sched, "sigmas"):  # DDPM, DDIM, LCM: the VP schedule at timestep t
        ac = float(sched.alphas_cumprod[int(t)])
        return math.sqrt(ac), math.sqrt(1 - ac)
    sigma = float(sched.sigmas[i])
    if type(sched).__name__.startswith("FlowMatch"):
        return 1 - sigma, sigma
    a = 1 / math.sqrt(sigma**2 + 1)  # Euler / Heun inputs are scaled to this; DPM-Solver / UniPC states sit here
    return a, sigma * a


def run_diffusers(mix: GaussianMixture, sampler: Sampler, steps: int, noise: Tensor, seed: int) -> tuple[Tensor, int]:
    import diffusers

    sched = getattr(diffusers, sampler.scheduler_name).from_config(sampler.config)
    sched.set_timesteps(steps, device=noise.device)
    takes_generator = "generator" in inspect.signature(sched.step).parameters
    gen = torch.Generator().manual_seed(seed)
    x = noise * float(getattr(sched, "init_noise_sigma", 1.0))  # flow matching starts at pure noise
    scale_input = getattr(sched, "scale_model_input", lambda x, t: x)  # flow matching feeds the state as is
    for i, t in enumerate(sched.timesteps):
        xi = scale_input(x, t)
        level = midpoint_level(sampler, t) if sampler.scheduler_name in MIDPOINT else diffusers_level(sched, i, t)
        out = exact_output(mix, sampler, xi, level)
        x = sched.step(out, t, x, **({"generator": gen} if takes_generator else {})).prev_sample
    return x, len(sched.timesteps)


IMPLEMENTATIONS: dict[str, Callable] = {"fastdiff": run_fastdiff, "diffusers": run_diffusers}


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------
def rms(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).norm(dim=-1).pow(2).mean().sqrt())


class Reference:
    """Exact PF-ODE solutions of the starting noise, one solve per (start, end) level pair."""

    def __init__(self, mix: GaussianMixture, steps: int):
        self.mix, self.steps = mix, steps
        self.solutions: dict[tuple[Level, Level], Tensor] = {}
        self.accuracy: dict[str, float] = {}  # RMS change from steps / 2 to steps, per pair

    def __call__(self, x: Tensor, start: Level, end: Level) -> Tensor:
        # Samplers derive the same level in float32 or float64: levels a few ulps apart share a solve.
        key = (tuple(round(v, 7) for v in start), tuple(round(v, 7) for v in end))
        if key not in self.solutions:
            fine = self.mix.solve_pf_ode(x.double(), start, end, steps=self.steps)
            coarse = self.mix.solve_pf_ode(x.double(), start, end, steps=self.steps // 2)
            self.solutions[key] = fine
            self.accuracy[f"{key[0]} -> {key[1]}"] = rms(fine, coarse)
        return self.solutions[key]


def run(n: int, seed: int, configs: list[str], samplers: list[str], nfes: list[int], reference_steps: int,
        implementations: list[str]) -> dict:
    mix = ring()
    gen = torch.Generator().manual_seed(seed)
    exact = mix.sample(n, gen)
    floor = sliced_wasserstein(exact, mix.sample(n, gen), generator=torch.Generator().manual_seed(0))
    noise = torch.randn(n, mix.dim, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float32)
    mix32 = mix.to(dtype=torch.float32)
    # inversion: exact data to start from, and exact data plus noise for its target (independent draws)
    inv_gen = torch.Generator().manual_seed(seed + 3)
    inv_data, inv_target = mix.sample(n, inv_gen), mix.sample(n, inv_gen)
    inv_noise = torch.randn(n, mix.dim, generator=inv_gen, dtype=torch.float64)
    reference = Reference(mix, reference_steps)
    rows = []
    for config in configs:
        for name in (s for s in samplers if s in CONFIGS[config]):
            sampler = make_sampler(name, **CONFIGS[config][name])
            for nfe in nfes:
                steps = steps_for(name, nfe)
                plan = sampler.plan(steps, noise.device)
                start, target = noise, exact
                if name in INVERSION:
                    (p0, q0), (p1, q1) = plan.levels[0], plan.levels[-1]
                    start = (p0 * inv_data + q0 * noise.double()).float()
                    target = p1 * inv_target + q1 * inv_noise
                truth = None if name in STOCHASTIC else reference(start * plan.init_scale, plan.levels[0], plan.levels[-1])
                for impl in implementations:
                    t0 = time.perf_counter()
                    out, used = IMPLEMENTATIONS[impl](mix32, sampler, steps, start, seed + 2)
                    row = {"config": config, "sampler": name, "implementation": impl, "steps": steps, "nfe": used,
                           "target_nfe": nfe, "finite": bool(torch.isfinite(out).all()), "seconds": time.perf_counter() - t0,
                           "ode_error": None if truth is None else rms(out, truth),
                           "sliced_w1": sliced_wasserstein(out, target, generator=torch.Generator().manual_seed(0))}
                    rows.append(row)
                    err = "        -" if row["ode_error"] is None else f"{row['ode_error']:.3e}"
                    print(f"{config:6s} {name:16s} {impl:9s} nfe={used:3d}  ODE error {err}  SW1 {row['sliced_w1']:.4f} "
                          f"(floor {floor:.4f})", flush=True)
    return {"floor_sliced_w1": floor, "reference_accuracy": reference.accuracy, "rows": rows}


def _row(result: dict, config: str, name: str, impl: str, nfe: int) -> Optional[dict]:
    return next((r for r in result["rows"] if (r["config"], r["sampler"], r["implementation"], r["target_nfe"]) == (config, name, impl, nfe)), None)


def _present(result: dict, key: str) -> list:
    seen = {r[key] for r in result["rows"]}
    order = {"config": list(CONFIGS), "sampler": list(NAMED), "implementation": list(IMPLEMENTATIONS), "target_nfe": sorted(seen)}[key]
    return [v for v in order if v in seen]


def _ratio(result: dict, config: str, name: str, nfe: int = 10) -> Optional[float]:
    """DDIM's (= Euler's, on the same sigmas) ODE error over name's, fastdiff's runs."""
    base = _row(result, config, "ddim" if config == "sd" else "euler", "fastdiff", nfe)
    r = _row(result, config, name, "fastdiff", nfe)
    return None if base is None or r is None else base["ode_error"] / r["ode_error"]


def checks(result: dict) -> list[tuple[str, bool]]:
    """The issue's two claims, evaluated on this run's numbers.

    fastdiff no worse than diffusers: ODE error within 0.1% (float32 rounding of the same
    arithmetic); stochastic samplers' SW1 within the sampling floor (their noise streams differ).
    Higher order pays: on the Karras grid at 10 NFE, DPM-Solver++ and UniPC at least 1.5x below
    DDIM's update.
    """
    nfes = _present(result, "target_nfe")
    out = []
    for config in _present(result, "config"):
        for name in _present(result, "sampler"):
            pairs = [(nfe, _row(result, config, name, "fastdiff", nfe), _row(result, config, name, "diffusers", nfe)) for nfe in nfes]
            pairs = [(nfe, f, d) for nfe, f, d in pairs if f is not None and d is not None]
            if not pairs:
                continue
            worse = [nfe for nfe, f, d in pairs
                     if (f["ode_error"] > d["ode_error"] * 1.001 + 1e-7 if f["ode_error"] is not None
                         else f["sliced_w1"] > d["sliced_w1"] + result["floor_sliced_w1"])]
            out.append((f"{config} / {name}: fastdiff no worse than diffusers at every NFE" + (f" (worse at {worse})" if worse else ""), not worse))
    for name in ORDER_CHECK:
        ratio = _ratio(result, "karras", name)
        if ratio is not None:
            out.append((f"karras / {name} at 10 NFE: ODE error {ratio:.2f}x below DDIM's update (euler on the same sigmas; "
                        f">= {CLEARLY}x expected)", ratio >= CLEARLY))
    return out


def markdown(result: dict) -> str:
    nfes, impls = _present(result, "target_nfe"), _present(result, "implementation")

    def cell(config, name, impl, nfe, key, fmt):
        r = _row(result, config, name, impl, nfe)
        if r is None or r[key] is None:
            return "-"
        return format(r[key], fmt) + ("" if r["nfe"] == nfe else f" ({r['nfe']})")

    def table(config, key, fmt, names):
        lines = ["| sampler | impl | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|---|" + "---|" * len(nfes)]
        for name in names:
            lines += [f"| {name} | {impl} | " + " | ".join(cell(config, name, impl, n, key, fmt) for n in nfes) + " |" for impl in impls]
        return lines

    about = {"sd": "each sampler's SD set-up: scaled_linear betas, trailing timesteps, final sigma 0 (flow_euler: shift 3; "
                   "edm_euler and ipndm: their own schedules; ddim_inversion: from exact data up to its last level, "
                   "SW1 to the exact marginal there)",
             "karras": "Karras rho = 7 sigmas from sigma_max to sigma_min of the same betas, then 0; Euler's step here is "
                       "DDIM's (eta 0) on these sigmas"}
    lines = [f"Exact mixture denoiser, 8-component ring in 2-D, N = {result['n']}, float32; fastdiff = fastdiff.sample, "
             f"diffusers = its scheduler of the same name and config; the same starting noise for both. Actual NFE in "
             "parentheses where it differs (two-stage samplers, Heun, DPM-Solver-2 and -SDE: 2 steps - 1)."]
    for config in _present(result, "config"):
        names = [n for n in _present(result, "sampler") if any(r["config"] == config and r["sampler"] == n for r in result["rows"])]
        lines += ["", f"## Grid `{config}`: {about[config]}", "",
                  "ODE error: RMS distance to the exact probability-flow ODE solution (deterministic samplers).", ""]
        lines += table(config, "ode_error", ".2e", [n for n in names if n not in STOCHASTIC])
        lines += ["", f"Sliced W1 to the target (exact-sample floor {result['floor_sliced_w1']:.4f}: values near it are at "
                  "sampling-noise level).", ""]
        lines += table(config, "sliced_w1", ".4f", names)
        ratios = [(n, _ratio(result, config, n)) for n in ORDER_CHECK]
        ratios = [f"{n} {r:.2f}x" for n, r in ratios if r is not None]
        if ratios:
            base = "DDIM" if config == "sd" else "Euler (DDIM's update)"
            lines += ["", f"At 10 NFE, {base}'s ODE error over the higher-order samplers': " + ", ".join(ratios) + "."]
    lines += ["", "## Checks", ""] + [f"- [{'x' if ok else ' '}] {text}" for text, ok in checks(result)]
    acc = ", ".join(f"{k}: {v:.1e}" for k, v in result["reference_accuracy"].items())
    lines += ["", f"Reference: RK4 in float64, {result['reference_steps']} steps; RMS change from half as many steps: {acc}."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> bool:
    """ODE error and sliced W1 vs NFE on log axes, one row of panels per grid. False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    configs = _present(result, "config")
    fig, axes = plt.subplots(len(configs), 2, figsize=(13, 5 * len(configs)), squeeze=False)
    palette = [plt.cm.tab10(i) for i in range(10)] + ["black", "darkviolet"]
    colors = {name: palette[i % len(palette)] for i, name in enumerate(NAMED)}
    for row, config in zip(axes, configs):
        for ax, key, title in ((row[0], "ode_error", "ODE error (RMS to the exact PF-ODE solution)"),
                               (row[1], "sliced_w1", "sliced W1 to the target")):
            for name in _present(result, "sampler"):
                for impl, style in (("fastdiff", dict(ls="-", marker="o", ms=4)), ("diffusers", dict(ls="none", marker="x", ms=9))):
                    pts = sorted((r["nfe"], r[key]) for r in result["rows"] if (r["config"], r["sampler"], r["implementation"]) ==
                                 (config, name, impl) and r[key] is not None)
                    if pts:
                        ax.plot(*zip(*pts), color=colors[name], label=name if impl == "fastdiff" else None, **style)
            if key == "sliced_w1":
                ax.axhline(result["floor_sliced_w1"], color="gray", ls=":", label="exact-sample floor")
            ax.set(xscale="log", yscale="log", xlabel="model evaluations (NFE)", title=f"{title}, grid '{config}'")
            ax.set_xticks(_present(result, "target_nfe"), [str(n) for n in _present(result, "target_nfe")])
            ax.minorticks_off()
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"fastdiff (lines) and diffusers (x) on an 8-component Gaussian ring, N = {result['n']}, float32")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _csv(text: str, kind=str) -> list:
    return [kind(v) for v in text.split(",") if v]


def check_implementations(ap: argparse.ArgumentParser, impls: list) -> None:
    """--implementations: fastdiff and/or diffusers, and diffusers importable when asked for."""
    for impl in impls:
        if impl not in IMPLEMENTATIONS:
            ap.error(f"--implementations: expected fastdiff and/or diffusers, got {impl!r}")
    if "diffusers" in impls:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            ap.error("the diffusers column needs diffusers (pip install diffusers), or pass --implementations fastdiff")


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(prog="fastdiff bench samplers", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="samples per run (default 10000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the starting noise and the samplers' noise (default 0)")
    ap.add_argument("--nfe", default=",".join(map(str, NFE)), help="comma-separated model-evaluation budgets")
    ap.add_argument("--samplers", default=",".join(NAMED), help="comma-separated fastdiff sampler names")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated grids: sd, karras (see the module)")
    ap.add_argument("--implementations", default="fastdiff,diffusers", help="fastdiff, diffusers or both")
    ap.add_argument("--reference-steps", type=int, default=400, help="RK4 steps of the exact solve (default 400)")
    ap.add_argument("--out", type=Path, default=None, help="folder for <date>-<commit>-sampler_accuracy.{json,md,png}")
    args = ap.parse_args(argv)
    samplers, nfes, impls, configs = _csv(args.samplers), _csv(args.nfe, int), _csv(args.implementations), _csv(args.configs)
    for config in configs:
        if config not in CONFIGS:
            ap.error(f"--configs: expected names from {', '.join(CONFIGS)}, got {config!r}")
    for name in samplers:
        if name not in NAMED:
            ap.error(f"--samplers: expected names from {', '.join(NAMED)}, got {name!r}")
    check_implementations(ap, impls)
    if any(n < 1 for n in nfes) or args.n < 2 or args.reference_steps < 2:
        ap.error("--nfe values, --n and --reference-steps expected positive integers (n, reference steps >= 2)")
    result = run(args.n, args.seed, configs, samplers, nfes, args.reference_steps, impls)
    result.update(n=args.n, seed=args.seed, reference_steps=args.reference_steps, dtype="float32", torch=torch.__version__,
                  fastdiff=fastdiff.__version__, machine=platform.machine(),
                  command="fastdiff bench samplers " + " ".join(argv if argv is not None else sys.argv[1:]),
                  configs={c: CONFIGS[c] for c in configs})
    return finish_study(args.out, "sampler_accuracy", result, markdown, plot, checks)


if __name__ == "__main__":
    sys.exit(main())
