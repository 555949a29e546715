"""`fastdiff demo`: sample a 2-D Gaussian mixture with DDIM and DPM-Solver++(2M), draw a PNG.

The model is exact (`fastdiff.models.MixtureModel`), so what the picture and the quality number
show is the sampler: each step is one exact ``[uncond; cond]`` model call plus one fused
`fastdiff.ops.sampler_update` launch that folds classifier-free guidance into the update.

Target: eight components on a ring, split into two classes (even and odd components). The
unconditional model is the whole ring, the conditional one class 0; with guidance 1 the sampler
targets p(x | class 0) exactly, and larger scales sharpen it the way CFG does (and move it off
that target, which the quality number then shows).

Schedule: Stable Diffusion's ``scaled_linear`` alphas_cumprod over 1000 steps. The ring is scaled so
Var[x0] is about 1 per coordinate (0.96); then the terminal marginal ``alpha_T x0 + sigma_T eps``
(alpha_T = 0.068) has variance 0.9998 and lies within KL 1e-6 nats of the N(0, I) the samplers start
from (Monte-Carlo estimate, 4e5 draws), so starting from plain noise, as real pipelines do, costs nothing measurable, and the
coefficients are those an SD pipeline with these samplers uses. Timesteps are evenly spaced in
log-SNR from t = 999 down to t = 0 (the same for both samplers). Measured here at 20 steps (SW1,
with the 0.014-0.03 floor of two exact sets): DPM-Solver++(2M) 0.018-0.029 with log-SNR spacing
against 0.048-0.054 with diffusers' "linspace" spacing, whose final jump from t = 50 to the clean
sample shrinks every component's spread from 0.217 to 0.153; DDIM 0.039-0.046 against 0.043-0.052.

Quality: sliced 1-Wasserstein distance (128 random directions) from each sampler's samples to as
many exact samples of p(x | class 0). Two independent exact sample sets are themselves about
N^-1/2 apart; the table prints that floor as the "exact" row.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

from . import _backend
from .models.gaussian_mixture import GaussianMixture, MixtureModel, sliced_wasserstein
from .ops.sampler_update import sampler_update
from .samplers import ddim_table, dpmpp_2m_table, scaled_linear_alphas_cumprod

NUM_TRAIN_TIMESTEPS = 1000
RING_COMPONENTS = 8
RING_RADIUS = 1.35
COMPONENT_STD = 0.22
COND_COMPONENTS = (0, 2, 4, 6)  # class 0: every other component of the ring
VIEW = 2.4  # the panels show [-VIEW, VIEW]^2

SAMPLERS: dict[str, tuple[str, Callable[..., Tensor]]] = {
    "ddim": ("DDIM", ddim_table),
    "dpmpp_2m": ("DPM-Solver++(2M)", dpmpp_2m_table),
}


def ring_mixture(dtype: torch.dtype = torch.float64, device: Optional[torch.device] = None) -> GaussianMixture:
    """Eight equal isotropic components on a circle; per-coordinate variance r^2/2 + s^2 = 0.96."""
    ang = torch.arange(RING_COMPONENTS, dtype=torch.float64) * (2 * math.pi / RING_COMPONENTS)
    means = RING_RADIUS * torch.stack([ang.cos(), ang.sin()], dim=1)
    stds = torch.full((RING_COMPONENTS,), COMPONENT_STD, dtype=torch.float64)
    return GaussianMixture(means, stds).to(device=device, dtype=dtype)


def log_snr_timesteps(alphas_cumprod: Tensor, steps: int) -> list[int]:
    """``steps`` strictly decreasing integer timesteps from T-1 to 0, evenly spaced in log-SNR.

    lambda_t = log(alpha_t / sigma_t) (Lu et al. 2022 recommend uniform lambda for DPM-Solver); each
    grid point takes the nearest timestep, and where the grid is finer than the schedule near t = 0
    neighbours are pushed up one step so that exactly ``steps`` distinct timesteps remain.
    """
    n = alphas_cumprod.numel()
    if not 1 <= steps <= n:
        raise ValueError(f"steps expected a value in [1, {n}], got {steps}")
    ac = alphas_cumprod.to(torch.float64)
    lam = 0.5 * (torch.log(ac) - torch.log1p(-ac))  # increasing as t decreases
    grid = torch.linspace(float(lam[-1]), float(lam[0]), steps, dtype=torch.float64)
    if steps == 1:
        return [n - 1]
    nearest = (lam[None, :] - grid[:, None]).abs().argmin(dim=1).tolist()
    # Step i must leave room for the steps around it: t_i in [steps - 1 - i, n - 1 - i].
    ts = [min(max(int(t), steps - 1 - i), n - 1 - i) for i, t in enumerate(nearest)]
    ts[0], ts[-1] = n - 1, 0
    for i in range(steps - 2, 0, -1):
        ts[i] = max(ts[i], ts[i + 1] + 1)
    return ts


@dataclass
class SamplerRun:
    key: str
    label: str
    steps: int
    seconds: float
    update_seconds: float
    distance: float
    samples: Tensor

    @property
    def ms_per_step(self) -> float:
        return 1e3 * self.seconds / self.steps

    @property
    def update_ms_per_step(self) -> float:
        return 1e3 * self.update_seconds / self.steps


@dataclass
class DemoResult:
    mixture: GaussianMixture
    target: GaussianMixture
    exact: Tensor
    floor: float
    runs: list[SamplerRun]
    backend: str
    device: torch.device
    guidance: float
    steps: int
    samples: int
    seed: int


def run_sampler(model: MixtureModel, noise: Tensor, table: Tensor, timesteps: list[int], guidance: float) -> Tensor:
    """The whole sampling loop: one model call and one fused sampler_update per step."""
    rows = table.to(noise.device, torch.float32)  # one transfer; rows[i] is a view, no host sync
    k = rows.shape[1] - 6
    history = torch.zeros(k, *noise.shape, dtype=noise.dtype, device=noise.device) if k else None
    x = noise
    for i, t in enumerate(timesteps):
        x = sampler_update(x, model(x, t), rows[i], history=history, guidance_scale=guidance)
    return x


def time_updates(model_out: Tensor, x: Tensor, table: Tensor, guidance: float) -> float:
    """Seconds for the fused updates alone: the run's steps replayed on a fixed model output."""
    rows = table.to(x.device, torch.float32)
    k = rows.shape[1] - 6
    history = torch.zeros(k, *x.shape, dtype=x.dtype, device=x.device) if k else None
    _sync(x.device)
    t0 = time.perf_counter()
    for i in range(rows.shape[0]):
        sampler_update(x, model_out, rows[i], history=history, guidance_scale=guidance)
    _sync(x.device)
    return time.perf_counter() - t0


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the demo's CPU work on one intra-op thread, then restore the caller's setting.

    Its tensors hold a few thousand elements, where splitting an op across threads only adds
    synchronisation: on a loaded 2-core machine the default 2 threads measured 10x slower.
    """
    if device.type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_demo(
    *,
    steps: int = 20,
    samples: int = 4000,
    guidance: float = 1.0,
    backend: Optional[str] = None,
    seed: int = 0,
    device: Optional[str] = None,
) -> DemoResult:
    """Sample the ring's class 0 with each sampler under classifier-free guidance; time and score them."""
    if samples < 2:
        raise ValueError(f"samples expected at least 2, got {samples}")
    if not math.isfinite(guidance):
        raise ValueError(f"guidance expected a finite number, got {guidance}")
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ac = scaled_linear_alphas_cumprod(NUM_TRAIN_TIMESTEPS)
    timesteps = log_snr_timesteps(ac, steps)
    mixture = ring_mixture(torch.float32, dev)
    model = MixtureModel(mixture, ac, cond=list(COND_COMPONENTS))
    target = mixture.condition(list(COND_COMPONENTS))
    tables = {key: make(ac, timesteps) for key, (_, make) in SAMPLERS.items()}

    gen = torch.Generator(device=dev)
    noise = torch.randn(samples, 2, generator=gen.manual_seed(seed), device=dev)
    exact = target.sample(samples, gen.manual_seed(seed + 1))
    exact2 = target.sample(samples, gen.manual_seed(seed + 2))

    def distance(x: Tensor) -> float:
        return sliced_wasserstein(x, exact, p=1, generator=torch.Generator(device=dev).manual_seed(seed + 3))

    with _backend.backend(backend or "auto"), _one_cpu_thread(dev):
        # Which backend serves float32 sampler_update here (raises BackendUnavailable, with the reason, if forced and unable).
        served = _backend.family("sampler_update").select("sampler_update", dev, (torch.float32, torch.float32), coeffs_dtype=torch.float32)
        # Warm up (first-call dispatch, lazy imports, Triton compilation) outside the timed runs.
        for key, (_, make) in SAMPLERS.items():
            run_sampler(model, noise[:2], make(ac, timesteps[:2]), timesteps[:2], guidance)
        runs = []
        for key, (label, _) in SAMPLERS.items():
            _sync(dev)
            t0 = time.perf_counter()
            x = run_sampler(model, noise, tables[key], timesteps, guidance)
            _sync(dev)
            seconds = time.perf_counter() - t0
            update_seconds = time_updates(model(noise, timesteps[-1]), noise, tables[key], guidance)
            runs.append(SamplerRun(key, label, steps, seconds, update_seconds, distance(x), x))
    return DemoResult(
        mixture=mixture, target=target, exact=exact, floor=distance(exact2), runs=runs, backend=served,
        device=dev, guidance=float(guidance), steps=steps, samples=samples, seed=seed,
    )


def format_table(result: DemoResult) -> str:
    head = ("sampler", "steps", "wall ms", "ms/step", "update ms/step", "SW1 to p(x|c)", "backend")
    rows = [
        (r.label, str(r.steps), f"{1e3 * r.seconds:.1f}", f"{r.ms_per_step:.3f}", f"{r.update_ms_per_step:.3f}", f"{r.distance:.4f}", result.backend)
        for r in result.runs
    ]
    rows.append(("exact samples (floor)", "-", "-", "-", "-", f"{result.floor:.4f}", "-"))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [line(head), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Picture (PIL only)
# ---------------------------------------------------------------------------------------------
PANEL = 300  # plot area, pixels per side
PAD = 16
TITLE_H = 40
CAPTION_H = 28
TICK_H = 16
_BG = (255, 255, 255)
# Density colour ramp: white -> pale blue -> deep blue -> navy, by sqrt of the normalised density.
_RAMP = [(0.0, (255, 255, 255)), (0.25, (198, 219, 239)), (0.6, (66, 146, 198)), (1.0, (8, 48, 107))]
_DOT = (230, 85, 13, 120)
_OTHER = (150, 150, 150)


def figure_size(panels: int) -> tuple[int, int]:
    return panels * PANEL + (panels + 1) * PAD, TITLE_H + PANEL + TICK_H + CAPTION_H + PAD


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font has one size
        return ImageFont.load_default()


def _colorize(v: Tensor) -> Tensor:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 along _RAMP."""
    out = torch.zeros(*v.shape, 3, dtype=torch.float64)
    for (x0, c0), (x1, c1) in zip(_RAMP, _RAMP[1:]):
        sel = (v >= x0) & (v <= x1)
        f = ((v - x0) / (x1 - x0)).clamp(0, 1)[..., None]
        col = torch.tensor(c0, dtype=torch.float64) * (1 - f) + torch.tensor(c1, dtype=torch.float64) * f
        out = torch.where(sel[..., None], col, out)
    return out.round().to(torch.uint8)


def _to_pixels(xy: Tensor) -> Tensor:
    """Data coordinates -> panel pixel coordinates (y up)."""
    s = PANEL / (2 * VIEW)
    return torch.stack([(xy[:, 0] + VIEW) * s, (VIEW - xy[:, 1]) * s], dim=1)


def density_image(mixture: GaussianMixture):
    from PIL import Image

    c = (torch.arange(PANEL, dtype=torch.float64) + 0.5) * (2 * VIEW / PANEL) - VIEW
    yy, xx = torch.meshgrid(-c, c, indexing="ij")  # row 0 is the top (largest y)
    grid = torch.stack([xx, yy], dim=-1)
    logp = mixture.to(device="cpu", dtype=torch.float64).log_prob(grid)
    v = torch.exp(logp - logp.max()).sqrt()
    return Image.fromarray(_colorize(v).numpy(), "RGB")


def render(result: DemoResult):
    """The figure: target density, exact samples, then each sampler's samples over the density."""
    from PIL import Image, ImageDraw

    panels: list[tuple[str, str, Optional[Tensor]]] = [
        ("target p(x | class 0)", "grey x: class 1 (unconditional only)", None),
        (f"exact samples (n={result.samples})", f"SW1 to a 2nd exact set = {result.floor:.4f}", result.exact),
    ]
    for r in result.runs:
        panels.append((f"{r.label}, {r.steps} steps", f"SW1 = {r.distance:.4f},  {1e3 * r.seconds:.1f} ms ({r.ms_per_step:.2f} ms/step)", r.samples))
    w, h = figure_size(len(panels))
    img = Image.new("RGB", (w, h), _BG)
    draw = ImageDraw.Draw(img)
    title_font, small_font = _font(14), _font(11)
    heat = density_image(result.target)
    others = [i for i in range(result.mixture.num_components) if i not in COND_COMPONENTS]
    for j, (title, sub, pts) in enumerate(panels):
        x0, y0 = PAD + j * (PANEL + PAD), TITLE_H
        panel = heat.copy().convert("RGBA")
        layer = Image.new("RGBA", panel.size, (0, 0, 0, 0))
        ld = ImageDraw.Draw(layer)
        if pts is None:
            for p in _to_pixels(result.mixture.means[others].detach().cpu().double()).tolist():
                ld.line([(p[0] - 5, p[1] - 5), (p[0] + 5, p[1] + 5)], fill=_OTHER + (255,), width=2)
                ld.line([(p[0] - 5, p[1] + 5), (p[0] + 5, p[1] - 5)], fill=_OTHER + (255,), width=2)
        else:
            px = _to_pixels(pts.detach().cpu().double())
            inside = ((px >= 0) & (px < PANEL)).all(1)
            for p in px[inside].tolist():
                ld.rectangle([p[0] - 1, p[1] - 1, p[0] + 0.5, p[1] + 0.5], fill=_DOT)
        panel = Image.alpha_composite(panel, layer).convert("RGB")
        img.paste(panel, (x0, y0))
        draw.rectangle([x0 - 1, y0 - 1, x0 + PANEL, y0 + PANEL], outline=(60, 60, 60))
        draw.text((x0, 6), title, fill=(0, 0, 0), font=title_font)
        draw.text((x0, 24), sub, fill=(70, 70, 70), font=small_font)
        for v in (-2, -1, 0, 1, 2):  # x ticks under the panel
            tx = x0 + (v + VIEW) * PANEL / (2 * VIEW)
            draw.line([(tx, y0 + PANEL), (tx, y0 + PANEL + 3)], fill=(60, 60, 60))
            label = str(v)
            tw = draw.textlength(label, font=small_font)
            draw.text((tx - tw / 2, y0 + PANEL + 3), label, fill=(70, 70, 70), font=small_font)
    caption = (
        f"exact 8-component ring mixture, cond = class 0 (even components), uncond = all; guidance {result.guidance:g} "
        f"folded into fastdiff.ops.sampler_update; backend {result.backend} on {result.device}; "
        f"SD scaled_linear schedule, log-SNR-uniform timesteps; seed {result.seed}"
    )
    draw.text((PAD, TITLE_H + PANEL + TICK_H + 8), caption, fill=(40, 40, 40), font=small_font)
    return img
