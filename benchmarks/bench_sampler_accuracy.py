"""Sampler accuracy on an analytic Gaussian mixture: solver error alone.

The model is the mixture's exact posterior prediction at the sampler's own noise level
(fastdiff.models.gaussian_mixture), so a sampler's distance to the target distribution is its
discretisation error. Distance: sliced 1-Wasserstein between N sampler outputs and N exact samples;
the floor is the same distance between two independent exact samples.

    python benchmarks/bench_sampler_accuracy.py --out benchmarks/results/cpu   # JSON + markdown
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastdiff  # noqa: E402
from fastdiff.models.gaussian_mixture import GaussianMixture, sliced_wasserstein  # noqa: E402
from fastdiff.samplers import loop, make_sampler  # noqa: E402

SAMPLERS = ["ddim", "ddpm", "euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "dpmpp_3m_sde",
            "unipc", "lcm", "flow_euler"]
STEPS = [5, 10, 20, 50]


def ring(dim: int = 2, components: int = 8, radius: float = 3.0, std: float = 0.3) -> GaussianMixture:
    ang = torch.arange(components, dtype=torch.float64) * (2 * math.pi / components)
    means = torch.zeros(components, dim, dtype=torch.float64)
    means[:, 0], means[:, 1] = radius * ang.cos(), radius * ang.sin()
    weights = torch.linspace(1.0, 2.0, components, dtype=torch.float64)
    return GaussianMixture(means, torch.full((components,), std, dtype=torch.float64), weights)


def exact_model(mix: GaussianMixture, plan, prediction_type: str):
    """model_fn returning the exact prediction at the level of the state it is handed (plan.levels[j])."""
    calls = {"n": 0}

    def fn(x, t):
        p, q = plan.levels[calls["n"]]
        calls["n"] += 1
        if prediction_type == "flow_prediction":
            eps, x0 = mix.predict_many(x, p, q, "epsilon")[0], mix.predict_many(x, p, q, "sample")[0]
            return eps - x0
        return mix.predict(x, p, q, prediction_type)

    return fn


def run(n: int, seed: int, dtype: torch.dtype) -> dict:
    mix = ring().to(dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    exact = mix.sample(n, gen)
    floor = sliced_wasserstein(exact, mix.sample(n, gen), generator=torch.Generator().manual_seed(0))
    rows = []
    for name in SAMPLERS:
        opts = {"shift": 3.0} if name == "flow_euler" else {}
        sampler = make_sampler(name, **opts)
        for steps in STEPS:
            if name == "lcm" and steps > 50:
                continue
            plan = sampler.plan(steps, torch.device("cpu"))
            noise = torch.randn(n, mix.dim, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
            t0 = time.perf_counter()
            out = loop.run(plan, exact_model(mix, plan, sampler.prediction_type), noise * plan.init_scale,
                           generator=torch.Generator().manual_seed(seed + 2), progress=False)
            dt = time.perf_counter() - t0
            w1 = sliced_wasserstein(out, exact, generator=torch.Generator().manual_seed(0))
            rows.append({"sampler": name, "steps": steps, "nfe": len(plan), "sliced_w1": w1, "finite": bool(torch.isfinite(out).all()),
                         "seconds": dt})
            print(f"{name:16s} steps={steps:3d} nfe={len(plan):3d}  W1={w1:.4f}  (floor {floor:.4f})", flush=True)
    return {"floor_sliced_w1": floor, "rows": rows}


def markdown(result: dict) -> str:
    steps = sorted({r["steps"] for r in result["rows"]})
    lines = [f"Sliced W1 to the target (N = {result['n']}, exact-sample floor {result['floor_sliced_w1']:.4f}); "
             "NFE in parentheses where it differs from the step count.", "",
             "| sampler | " + " | ".join(f"{s} steps" for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for name in SAMPLERS:
        cells = []
        for s in steps:
            r = next((r for r in result["rows"] if r["sampler"] == name and r["steps"] == s), None)
            cells.append("-" if r is None else f"{r['sliced_w1']:.4f}" + (f" ({r['nfe']})" if r["nfe"] != s else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="folder for <date>-<commit>-sampler_accuracy.{json,md}")
    args = ap.parse_args()
    result = run(args.n, args.seed, torch.float32)
    result.update(n=args.n, dtype="float32", torch=torch.__version__, fastdiff=fastdiff.__version__, machine=platform.machine(),
                  defaults="scaled_linear 0.00085..0.012, trailing spacing; flow_euler shift 3")
    md = markdown(result)
    print(md)
    if args.out is not None:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
        stem = f"{time.strftime('%Y-%m-%d')}-{commit}-sampler_accuracy"
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
        (args.out / f"{stem}.md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
