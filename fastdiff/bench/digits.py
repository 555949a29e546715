"""Sample quality of the trained digits DiT per sampler and NFE: fastdiff beside diffusers.

A scikit-learn MLP classifier trained on the same 8x8 digits (75% of them; its accuracy on the other
25% is reported) scores the samples two ways, per checkpoint (ddpm, flow), sampler and number of
model evaluations (NFE):

- accuracy: the fraction of samples the classifier recognises as the digit they were asked for
  (N samples, digits 0-9 in turn, classifier-free guidance at the checkpoint's default scale);
- Fréchet distance between the samples and all 1797 real digits in the classifier's hidden-layer
  features (ReLU, 64 units): the FID recipe with a digit classifier in place of Inception. Its
  floor, printed beside it, is the same distance from the held-out real digits (same feature space).

fastdiff = `fastdiff.sample` (guidance and update fused); diffusers = diffusers' scheduler of the same
name and configuration stepping the same model on the same starting noise, guidance combined in
Python. Every `fastdiff.sample` sampler that fits the checkpoint is run (`fastdiff.models.digits
.fitting_samplers`). Needs scikit-learn (and diffusers for its column, matplotlib for the plot).

    fastdiff bench digits --out benchmarks/results/cpu        # JSON + markdown + PNG plot
    fastdiff bench digits --quick                             # dpmpp_2m and ddim/flow_euler, fewer samples
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

import fastdiff
from fastdiff.models import digits as dd

from ._report import finish_study, pyplot
from .sampler_accuracy import _csv, check_implementations, steps_for

NFE = [4, 6, 10, 20, 50]
#: fastdiff.sample name -> diffusers scheduler class and the options that make it that sampler
DIFFUSERS = {
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"solver_order": 2}),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"solver_order": 2, "algorithm_type": "sde-dpmsolver++"}),
    "dpmpp_3m_sde": ("DPMSolverMultistepScheduler", {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}),
}
#: the Done-means check: DPM-Solver++(2M), 20 NFE, default guidance
TARGET = ("dpmpp_2m", 20, 0.90)


# ---------------------------------------------------------------------------------------------
# The judge: a digit classifier on the same data, and the Fréchet distance in its features
# ---------------------------------------------------------------------------------------------
class Scorer:
    """An sklearn MLP (one hidden layer) on the digits in [0, 1], fitted on 75% of them, seeded."""

    def __init__(self, seed: int = 0, hidden: int = 64):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier

        d = load_digits()
        x = d.data.astype(np.float64) / dd.PIXEL_MAX
        xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.25, random_state=seed, stratify=d.target)
        self.clf = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=600, random_state=seed).fit(xtr, ytr)
        self.heldout_accuracy = float(self.clf.score(xte, yte))
        self.real = self.features(x)
        self.floor = frechet(self.features(xte), self.real)

    @staticmethod
    def _flat(images) -> np.ndarray:
        if isinstance(images, Tensor):
            images = images.detach().cpu().double().reshape(images.shape[0], -1).numpy()
        return np.asarray(images, dtype=np.float64)

    def features(self, images) -> np.ndarray:
        """Hidden-layer activations (N, hidden) of images in [0, 1], (N, 1, 8, 8) or (N, 64)."""
        x = self._flat(images)
        return np.maximum(x @ self.clf.coefs_[0] + self.clf.intercepts_[0], 0.0)

    def accuracy(self, images, labels) -> float:
        labels = labels.cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
        return float((self.clf.predict(self._flat(images)) == labels).mean())

    def fd(self, images) -> float:
        return frechet(self.features(images), self.real)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2) between the Gaussians fitted to two feature sets."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr (S_a S_b)^1/2 = sum of sqrt eigenvalues of S_a^1/2 S_b S_a^1/2 (symmetric PSD, so eigh is stable)
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ sb @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * cross)


# ---------------------------------------------------------------------------------------------
# The two implementations, driving the same model from the same noise
# ---------------------------------------------------------------------------------------------
def run_fastdiff(kind: str, name: str, steps: int, labels: Tensor, noise: Tensor, guidance: float, seed: int) -> tuple[Tensor, int]:
    model = dd.digits_dit(kind)
    fn = dd.guided_model_fn(model, labels, True)
    calls = [0]

    def counted(x, t):
        calls[0] += 1
        return fn(x, t)

    x = fastdiff.sample(counted, noise, sampler=name, steps=steps, guidance_scale=guidance, config=dd.scheduler_config(kind),
                        generator=torch.Generator().manual_seed(seed), progress=False)
    return dd.to_unit(x), calls[0]


def diffusers_scheduler(kind: str, name: str):
    import diffusers

    cls_name, options = DIFFUSERS[name]
    cls = getattr(diffusers, cls_name)
    params = inspect.signature(cls.__init__).parameters
    cfg = {k: v for k, v in {**dd.scheduler_config(kind), **options}.items() if k in params}
    return cls.from_config(cfg)


def run_diffusers(kind: str, name: str, steps: int, labels: Tensor, noise: Tensor, guidance: float, seed: int) -> tuple[Tensor, int]:
    model = dd.digits_dit(kind)
    fn = dd.guided_model_fn(model, labels, True)
    sched = diffusers_scheduler(kind, name)
    sched.set_timesteps(steps)
    takes_generator = "generator" in inspect.signature(sched.step).parameters
    gen = torch.Generator().manual_seed(seed)
    x = noise * float(getattr(sched, "init_noise_sigma", 1.0))
    scale_input = getattr(sched, "scale_model_input", lambda x, t: x)
    for t in sched.timesteps:
        xin = scale_input(x, t)
        uncond, cond = fn(torch.cat([xin, xin]), t).chunk(2)
        out = uncond + guidance * (cond - uncond)
        x = sched.step(out, t, x, **({"generator": gen} if takes_generator else {})).prev_sample
    return dd.to_unit(x), len(sched.timesteps)


IMPLEMENTATIONS = {"fastdiff": run_fastdiff, "diffusers": run_diffusers}


def run(kinds: list[str], samplers: Optional[list[str]], nfes: list[int], impls: list[str], n: int, seed: int,
        guidance: Optional[float], scorer: Scorer, log=print) -> list[dict]:
    rows = []
    labels = torch.arange(n) % dd.NUM_CLASSES
    noise = torch.randn((n, 1, dd.IMAGE_SIZE, dd.IMAGE_SIZE), generator=torch.Generator().manual_seed(seed))
    for kind in kinds:
        scale = dd.default_guidance(kind) if guidance is None else guidance
        names = [s for s in dd.fitting_samplers(kind) if samplers is None or s in samplers]
        for name in names:
            for nfe in nfes:
                outs = {}
                for impl in impls:
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        images, calls = IMPLEMENTATIONS[impl](kind, name, steps_for(name, nfe), labels, noise, scale, seed + 1)
                    seconds = time.perf_counter() - t0
                    outs[impl] = images
                    row = dict(kind=kind, sampler=name, implementation=impl, target_nfe=nfe, nfe=calls, guidance=scale,
                               accuracy=scorer.accuracy(images, labels), fd=scorer.fd(images), seconds=round(seconds, 3),
                               finite=bool(torch.isfinite(images).all()))
                    rows.append(row)
                    log(f"fastdiff bench digits: {kind} {name} {impl} NFE {calls}: accuracy {row['accuracy']:.3f}, "
                        f"FD {row['fd']:.2f} ({seconds:.1f} s)")
                if len(outs) == 2:  # the same noise through both: how far apart the two implementations land
                    diff = float((outs["fastdiff"] - outs["diffusers"]).abs().max())
                    for r in rows[-2:]:
                        r["max_abs_diff_vs_other"] = diff
    return rows


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def _present(rows: list[dict], key: str) -> list:
    return list(dict.fromkeys(r[key] for r in rows))


def _find(rows, kind, name, impl, nfe) -> Optional[dict]:
    return next((r for r in rows if (r["kind"], r["sampler"], r["implementation"], r["target_nfe"]) == (kind, name, impl, nfe)), None)


def checks(result: dict) -> list[tuple[str, bool]]:
    name, nfe, want = TARGET
    out = []
    for kind in _present(result["rows"], "kind"):
        r = _find(result["rows"], kind, name, "fastdiff", nfe)
        if r is not None:
            out.append((f"{kind}: {name} at {nfe} NFE, guidance {r['guidance']:g}: accuracy {r['accuracy']:.3f} >= {want:.2f}",
                        r["accuracy"] >= want))
    bad = [r for r in result["rows"] if not r["finite"]]
    out.append((f"every sample finite ({len(bad)} runs with non-finite values)", not bad))
    return out


def markdown(result: dict) -> str:
    rows = result["rows"]
    nfes, impls = _present(rows, "target_nfe"), _present(rows, "implementation")

    def cell(r, key, fmt):
        if r is None:
            return "-"
        return format(r[key], fmt) + ("" if r["nfe"] == r["target_nfe"] else f" ({r['nfe']})")

    lines = [
        f"Digits DiT samples scored by an MLP digit classifier (held-out accuracy {result['classifier_heldout_accuracy']:.3f}); "
        f"N = {result['n']} samples per run (digits 0-9 in turn), seed {result['seed']}, float32 on {result['device']}. "
        "fastdiff = fastdiff.sample; diffusers = its scheduler of the same name and configuration on the same model and "
        "starting noise. Actual NFE in parentheses where it differs (Heun: 2 steps - 1).",
        "",
    ]
    for kind in _present(rows, "kind"):
        names = [n for n in _present(rows, "sampler") if any(r["kind"] == kind and r["sampler"] == n for r in rows)]
        g = next(r["guidance"] for r in rows if r["kind"] == kind)
        sched = json.dumps(result["schedulers"][kind])
        lines += [f"## `{kind}` checkpoint (guidance {g:g}; schedule {sched})", ""]
        for key, fmt, title in (("accuracy", ".3f", "Accuracy: fraction recognised as the requested digit"),
                                ("fd", ".2f", f"Fréchet distance to the real digits in classifier features (real held-out "
                                              f"digits: {result['fd_floor']:.2f})")):
            lines += [f"{title}.", "", "| sampler | impl | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                      "|---|---|" + "---|" * len(nfes)]
            for name in names:
                for impl in impls:
                    lines.append(f"| {name} | {impl} | " + " | ".join(cell(_find(rows, kind, name, impl, n), key, fmt) for n in nfes) + " |")
            lines.append("")
        diffs = [r for r in rows if r["kind"] == kind and "max_abs_diff_vs_other" in r and r["implementation"] == "fastdiff"]
        if diffs:
            worst = max(diffs, key=lambda r: r["max_abs_diff_vs_other"])
            lines += [f"Largest pixel difference (images in [0, 1]) between fastdiff's and diffusers' samples from the same "
                      f"starting noise and seed, over every sampler and NFE above: {worst['max_abs_diff_vs_other']:.2e} "
                      f"({worst['sampler']}, NFE {worst['nfe']}).", ""]
    lines += ["## Checks", ""] + [f"- [{'x' if ok else ' '}] {text}" for text, ok in checks(result)]
    lines += ["", f"Command: `{result['command']}`; {result['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> bool:
    """Accuracy and FD vs NFE, one row of panels per checkpoint. False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    rows = result["rows"]
    kinds = _present(rows, "kind")
    fig, axes = plt.subplots(len(kinds), 2, figsize=(13, 4.8 * len(kinds)), squeeze=False)
    names = list(DIFFUSERS)
    colors = {n: plt.cm.tab20(i / len(names)) for i, n in enumerate(names)}
    for row, kind in zip(axes, kinds):
        for ax, key, title in ((row[0], "accuracy", "accuracy (requested digit recognised)"),
                               (row[1], "fd", "Fréchet distance in classifier features")):
            for name in _present(rows, "sampler"):
                for impl, style in (("fastdiff", dict(ls="-", marker="o", ms=4)), ("diffusers", dict(ls="none", marker="x", ms=9))):
                    pts = sorted((r["nfe"], r[key]) for r in rows if (r["kind"], r["sampler"], r["implementation"]) == (kind, name, impl))
                    if pts:
                        ax.plot(*zip(*pts), color=colors.get(name, "black"), label=name if impl == "fastdiff" else None, **style)
            if key == "fd":
                ax.axhline(result["fd_floor"], color="gray", ls=":", label="real held-out digits")
                ax.set_yscale("log")
            else:
                ax.axhline(TARGET[2], color="gray", ls=":")
            ticks = _present(rows, "target_nfe")
            ax.set(xscale="log", xlabel="model evaluations (NFE)", title=f"{kind}: {title}")
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"digits DiT, fastdiff (lines) and diffusers (x), N = {result['n']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(prog="fastdiff bench digits", description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default=",".join(dd.KINDS), help="checkpoints: ddpm, flow (default: both)")
    ap.add_argument("--samplers", default=None, help="comma-separated fastdiff.sample names (default: every one that fits the checkpoint)")
    ap.add_argument("--nfe", default=",".join(map(str, NFE)), help="comma-separated model-evaluation budgets (default: %(default)s)")
    ap.add_argument("--n", type=int, default=500, help="samples per run, digits 0-9 in turn (default: %(default)s)")
    ap.add_argument("--guidance", type=float, default=None, help="guidance scale (default: each checkpoint's own)")
    ap.add_argument("--implementations", default="fastdiff,diffusers", help="fastdiff, diffusers or both (default: both)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the noise and of the classifier (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads; default: torch's)")
    ap.add_argument("--quick", action="store_true", help="NFE 10 and 20, 200 samples, dpmpp_2m and one first-order sampler")
    ap.add_argument("--out", type=Path, default=None, help="folder for <date>-<commit>-digits.{json,md,png}")
    args = ap.parse_args(argv)
    try:
        kinds, nfes, impls = _csv(args.kinds), _csv(args.nfe, int), _csv(args.implementations)
    except ValueError as e:
        ap.error(f"--nfe: expected comma-separated integers ({e})")
    samplers = _csv(args.samplers) if args.samplers else None
    if args.quick:
        nfes, args.n = [10, 20], min(args.n, 200)
        samplers = samplers or ["dpmpp_2m", "ddim", "flow_euler"]
    for k in kinds:
        if k not in dd.KINDS:
            ap.error(f"--kinds: expected names from {', '.join(dd.KINDS)}, got {k!r}")
    for name in samplers or []:
        if name not in DIFFUSERS:
            ap.error(f"--samplers: expected names from {', '.join(DIFFUSERS)}, got {name!r}")
    check_implementations(ap, impls)
    if any(v < 1 for v in nfes) or args.n < 10:
        ap.error("--nfe values expected positive integers and --n at least 10")
    try:
        import sklearn  # noqa: F401
    except ImportError:
        ap.error("the classifier needs scikit-learn: pip install 'fastdiff[bench]'")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    scorer = Scorer(args.seed)
    rows = run(kinds, samplers, nfes, impls, args.n, args.seed, args.guidance, scorer,
               log=lambda s: print(s, file=sys.stderr, flush=True))
    result = dict(rows=rows, n=args.n, seed=args.seed, device="cpu", classifier_heldout_accuracy=scorer.heldout_accuracy,
                  fd_floor=scorer.floor, schedulers={k: dd.scheduler_config(k) for k in kinds},
                  checkpoints={k: dd.checkpoint_metadata(k)["weights_sha256"] for k in kinds},
                  torch=torch.__version__, fastdiff=fastdiff.__version__, machine=platform.machine(),
                  threads=torch.get_num_threads(), seconds=time.perf_counter() - t0,
                  command="fastdiff bench digits " + " ".join(argv if argv is not None else sys.argv[1:]))
    return finish_study(args.out, "digits", result, markdown, plot, checks)


if __name__ == "__main__":
    sys.exit(main())
