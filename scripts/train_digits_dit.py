#!/usr/bin/env python
"""Train the digits DiT checkpoints shipped in fastdiff/models/ (``fastdiff.models.digits_dit``).

    python scripts/train_digits_dit.py                 # both checkpoints, written into fastdiff/models/
    python scripts/train_digits_dit.py --kind flow --out-dir /tmp/retrain

Data: scikit-learn's 8x8 handwritten digits (1797 images, ``sklearn.datasets.load_digits``), pixel
values 0..16 mapped to [-1, 1]. ``ddpm``: noise prediction under a linear-beta DDPM schedule
(1e-4..0.02, 1000 steps), timesteps drawn uniformly. ``flow``: rectified flow, ``x_t = (1 - s) x0 +
s noise`` with s uniform in [0, 1], the model predicting ``noise - x0`` at timestep ``1000 s``.
Labels are dropped to the null class 10% of the time (classifier-free guidance). AdamW with a cosine
learning rate; the weights saved are an exponential moving average.

Every forward and backward pass runs through fastdiff's ops (adaLN modulation, gated residuals,
attention) and their autograd. Seeded: the same command on the same machine and torch version gives
the same weights (one intra-op thread by default; other thread counts change float summation order,
not the result's quality). The safetensors metadata records this command, the data's SHA-256, the
weights' SHA-256 and the sampler configuration.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fastdiff  # noqa: E402
from fastdiff.models.digits import KINDS, NULL_CLASS, PIXEL_MAX, DigitsDiT, weights_sha256  # noqa: E402

SCHEDULES = {
    "ddpm": dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                 prediction_type="epsilon", timestep_spacing="trailing", clip_sample=False),
    "flow": dict(num_train_timesteps=1000, shift=1.0, prediction_type="flow_prediction", use_flow_sigmas=True,
                 flow_shift=1.0),
}


def load_data() -> tuple[torch.Tensor, torch.Tensor, str]:
    """Images (N, 1, 8, 8) in [-1, 1], labels (N,), and the SHA-256 of the raw pixels and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = d.images.astype(np.uint8)
    target = d.target.astype(np.int64)
    sha = hashlib.sha256(pixels.tobytes() + target.tobytes()).hexdigest()
    x = torch.from_numpy(pixels).float().div(PIXEL_MAX / 2).sub(1).unsqueeze(1)
    return x, torch.from_numpy(target), sha


def noised(kind: str, x0: torch.Tensor, gen: torch.Generator, alphas_cumprod: torch.Tensor):
    """(x_t, timestep, target) for one batch."""
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=gen)
    if kind == "ddpm":
        t = torch.randint(0, alphas_cumprod.numel(), (b,), generator=gen)
        ac = alphas_cumprod[t].view(b, 1, 1, 1)
        return ac.sqrt() * x0 + (1 - ac).sqrt() * noise, t.float(), noise
    s = torch.rand(b, generator=gen)
    sv = s.view(b, 1, 1, 1)
    return (1 - sv) * x0 + sv * noise, s * 1000, noise - x0


def train(kind: str, args: argparse.Namespace, command: str) -> Path:
    torch.manual_seed(args.seed)  # parameter init and the class dropout draw from the global generator
    gen = torch.Generator().manual_seed(args.seed + 1)
    x, y, data_sha = load_data()
    model = DigitsDiT(patch_size=args.patch_size, dim=args.dim, depth=args.depth, heads=args.heads,
                      mlp_ratio=args.mlp_ratio)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    warmup = max(args.steps // 50, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min((i + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(i / args.steps, 1.0)))))
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1 - betas, 0).float()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{kind}] {n_params} parameters, {args.steps} steps of batch {args.batch}, {len(x)} images", flush=True)
    t0 = time.perf_counter()
    running = None
    for step in range(args.steps):
        idx = torch.randint(0, len(x), (args.batch,), generator=gen)
        xt, t, target = noised(kind, x[idx], gen, alphas_cumprod)
        loss = torch.nn.functional.mse_loss(model(xt, t, y[idx]), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % max(args.steps // 10, 1) == 0:
            print(f"[{kind}] step {step + 1}/{args.steps} loss {running:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    seconds = time.perf_counter() - t0

    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in ema.state_dict().items()}
    meta = {
        "format": "pt",
        "name": f"fastdiff digits DiT ({kind})",
        "kind": kind,
        "model": json.dumps(model.config),
        "scheduler": json.dumps(SCHEDULES[kind]),
        "guidance_scale": repr(args.guidance),
        "null_class": str(NULL_CLASS),
        "pixel_range": f"[-1, 1] <- sklearn digits 0..{int(PIXEL_MAX)}",
        "train_command": command,
        "data": "sklearn.datasets.load_digits (images uint8 8x8 then target int64, bytes concatenated)",
        "data_sha256": data_sha,
        "weights_sha256": weights_sha256(state),
        "training": json.dumps(dict(seed=args.seed, steps=args.steps, batch=args.batch, lr=args.lr, ema=args.ema,
                                    threads=torch.get_num_threads(), seconds=round(seconds, 1),
                                    final_loss=round(running or float("nan"), 5), torch=torch.__version__,
                                    fastdiff=fastdiff.__version__, machine=platform.machine())),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"digits_dit_{kind}.safetensors"
    save_file(state, str(path), metadata=meta)
    print(f"[{kind}] {seconds:.0f} s; wrote {path} ({path.stat().st_size} bytes), weights sha256 {meta['weights_sha256']}")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=KINDS + ("both",), default="both", help="which checkpoint to train (default: both)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "fastdiff" / "models", help="where to write digits_dit_<kind>.safetensors")
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps (default: %(default)s)")
    p.add_argument("--batch", type=int, default=128, help="batch size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: %(default)s)")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    p.add_argument("--patch-size", type=int, default=2, help="patch size (default: %(default)s)")
    p.add_argument("--dim", type=int, default=64, help="transformer width (default: %(default)s)")
    p.add_argument("--depth", type=int, default=4, help="transformer blocks (default: %(default)s)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default: %(default)s)")
    p.add_argument("--mlp-ratio", type=int, default=2, help="MLP width / dim (default: %(default)s)")
    p.add_argument("--guidance", type=float, default=2.0, help="default guidance scale recorded in the checkpoint (default: %(default)s)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python scripts/train_digits_dit.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    for kind in (KINDS if args.kind == "both" else (args.kind,)):
        train(kind, args, command.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
