"""One fused step for every linear diffusion solver.

With the step's scalars known, DDIM, Euler, Euler-ancestral, DPM-Solver++ (multistep, ODE and SDE),
UniPC, LCM and flow-matching Euler all read::

    m      = u + s (c - u)            (guided model output, when model_out is [uncond; cond])
    d      = a x + b m                (prediction type converted: x0 or epsilon)
    x_next = c_x x + c_d d + sum_k c_hk h_k + c_z z
    h[slot] = d                       (ring buffer of earlier converted outputs)

The per-step scalars come as one row of a coefficient table that lives on x's device:
``coeffs = [a, b, c_x, c_d, c_z, slot, c_h0, ..., c_h{K-1}]`` (float32; ``slot`` an integer value,
-1 for no write). A noise or history term whose coefficient is exactly 0 is not read, so unused
slots may hold anything. Reading the row on the device is what keeps a step free of host syncs, so whole
sampling loops can be captured in a CUDA graph.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import _backend
from ._common import FLOAT_DTYPES, acc_dtype, check_tensor, describe, fail, kernel_op, needs_grad, per_sample, register_fake, register_triton
from .guidance import Scale, check_rescale, check_scale, guided_reference, rescale_factor, rescale_factor_reference
# the row layout, defined once for Python (fastdiff/solvers/rows.py; for C++ in csrc/sampler_row.h)
from ..solvers.rows import A, B, CD, CX, CZ, HISTORY, SLOT, row_length



def _coeffs_reason(backend: str, dtypes, *, coeffs_dtype: torch.dtype) -> Optional[str]:
    if coeffs_dtype != torch.float32:
        return f"the kernels take float32 coefficient rows, got {coeffs_dtype}"
    return None


#: The backends of sampler_update and what each serves. A call passes x's and model_out's dtypes and
#: the row's dtype as ``coeffs_dtype``. (Guidance rescale runs guidance_rescale_factor on the same backend.)
_KERNELS = ("sampler_update", "guidance_rescale_factor")
FAMILY = _backend.Family(
    "sampler_update",
    cpu=_backend.Support(kernels=_KERNELS, check=_coeffs_reason),
    cuda=_backend.Support(kernels=_KERNELS, check=_coeffs_reason),
    triton=_backend.Support(check=_coeffs_reason),
)


# ---------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------
def sampler_update_reference(
    x: Tensor,
    model_out: Tensor,
    coeffs: Tensor,
    *,
    history: Optional[Tensor] = None,
    noise: Optional[Tensor] = None,
    guidance_scale: Optional[Scale] = None,
    guidance_rescale: float = 0.0,
) -> Tensor:
    acc = acc_dtype(x, model_out, coeffs)
    cf = coeffs.to(acc)
    if guidance_scale is not None:
        m = guided_reference(model_out, guidance_scale, acc)
        if guidance_rescale:
            m = m * per_sample(rescale_factor_reference(model_out, guidance_scale, guidance_rescale).to(acc), m)
    else:
        m = model_out.to(acc)
    xa = x.to(acc)
    d = cf[A] * xa + cf[B] * m
    out = cf[CX] * xa + cf[CD] * d
    # Terms whose coefficient is exactly zero are not read: an unused noise tensor or history slot
    # may hold anything, NaN included (kernels skip the load).
    if noise is not None:
        out = out + torch.where(cf[CZ] != 0, cf[CZ] * noise.to(acc), 0)
    if history is not None:
        k = history.shape[0]
        ch = cf[HISTORY : HISTORY + k].reshape(k, *([1] * x.dim()))
        out = out + torch.where(ch != 0, ch * history.to(acc), 0).sum(0)
        # Select the slot on the device (no .item()): an out-of-range slot writes nothing.
        hit = (torch.arange(k, device=x.device, dtype=acc) == cf[SLOT]).reshape(k, *([1] * x.dim()))
        history.copy_(torch.where(hit, d.to(history.dtype).unsqueeze(0), history))
    return out.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------
def sampler_update(
    x: Tensor,
    model_out: Tensor,
    coeffs: Tensor,
    *,
    history: Optional[Tensor] = None,
    noise: Optional[Tensor] = None,
    guidance_scale: Optional[Scale] = None,
    guidance_rescale: float = 0.0,
) -> Tensor:
    """Return ``x_next`` for one solver step and write the converted output into ``history[slot]``.

    x: the current sample (B, ...). model_out: the model output (B, ...), or (2B, ...) as
    ``[uncond; cond]`` when ``guidance_scale`` is given (a number or a per-sample (B,) tensor).
    coeffs: this step's coefficient row (see the module docstring), float32 on x's device.
    history: (K, B, ...) ring buffer in x's dtype, updated in place. noise: like x, or None.
    """
    op = "sampler_update"
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES, min_ndim=1)
    dev, bsz, rest = x.device, x.shape[0], tuple(x.shape[1:])
    check_tensor(op, "model_out", model_out, dtypes=FLOAT_DTYPES, device=dev)
    guided = guidance_scale is not None
    want = (2 * bsz if guided else bsz, *rest)
    if tuple(model_out.shape) != want:
        what = "[uncond; cond] batched output" if guided else "model output (pass guidance_scale for a [uncond; cond] output)"
        fail(op, "model_out", f"the {what} of shape {want}", describe(model_out))
    scale_f, scale_t = check_scale(op, "guidance_scale", guidance_scale, bsz, dev) if guided else (0.0, None)
    guidance_rescale = check_rescale(op, "guidance_rescale", guidance_rescale)
    if guidance_rescale and not guided:
        fail(op, "guidance_rescale", "0 without guidance_scale", guidance_rescale)
    k = 0
    if history is not None:
        check_tensor(op, "history", history, dtypes=(x.dtype,), device=dev)
        if history.dim() != x.dim() + 1 or tuple(history.shape[1:]) != tuple(x.shape) or history.shape[0] < 1:
            fail(op, "history", f"a (K, {', '.join(map(str, x.shape))}) buffer with K >= 1", describe(history))
        if not history.is_contiguous():
            fail(op, "history", "a contiguous buffer (it is updated in place)", "a non-contiguous view")
        k = history.shape[0]
    if noise is not None:
        check_tensor(op, "noise", noise, dtypes=(x.dtype,), device=dev, shape=x.shape)
    check_coeffs(op, coeffs, k, dev)

    backend = FAMILY.select(op, dev, (x.dtype, model_out.dtype), coeffs_dtype=coeffs.dtype)
    if backend == "reference" or needs_grad(x, model_out, noise, scale_t, coeffs):
        return sampler_update_reference(
            x, model_out, coeffs, history=history, noise=noise,
            guidance_scale=guidance_scale if scale_t is None else scale_t, guidance_rescale=guidance_rescale,
        )
    if x.numel() == 0:
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    x, model_out = x.contiguous(), model_out.contiguous()
    noise = noise.contiguous() if noise is not None else None
    if scale_t is not None:
        scale_t = scale_t.to(torch.float32).contiguous()
    factor = rescale_factor(op, backend, model_out, scale_f, scale_t, guidance_rescale) if guidance_rescale > 0 else None
    if not guided:
        scale_f = 1.0  # unused by the kernels; keeps the schema's float meaningful
    return kernel_op(op, backend)(x, model_out, coeffs.contiguous(), history, noise, scale_f, scale_t, factor)


class LoopUpdate:
    """`sampler_update` for the steps of one sampling loop, where history and guidance stay fixed.

    The first call (and any call whose shapes, dtypes, devices or forced backend differ from it) goes through
    `sampler_update` with every check; later calls launch the backend chosen then directly. On CPU
    the per-call checks cost 30-80 us, most of a small latent's step. Rows must come from a table
    validated when it was built (a `fastdiff.samplers.Plan`'s): their values are not re-read here.
    A per-sample guidance tensor or guidance_rescale always takes the checked path.
    """

    def __init__(self, history: Optional[Tensor], guidance_scale: Optional[Scale], guidance_rescale: float = 0.0):
        self.history, self.guidance_scale, self.guidance_rescale = history, guidance_scale, guidance_rescale
        plain_scale = guidance_scale is None or (isinstance(guidance_scale, (int, float)) and not isinstance(guidance_scale, bool))
        self._bindable = plain_scale and not guidance_rescale
        self._bound: Optional[tuple] = None  # (signature, kernel, scale)

    @staticmethod
    def _signature(x: Tensor, model_out: Tensor, coeffs: Tensor, noise: Optional[Tensor]) -> tuple:
        return (x.shape, x.dtype, x.device, model_out.shape, model_out.dtype, model_out.device, coeffs.dtype, coeffs.device,
                None if noise is None else (noise.shape, noise.dtype, noise.device), _backend.forced())

    def __call__(self, x: Tensor, model_out: Tensor, coeffs: Tensor, noise: Optional[Tensor] = None) -> Tensor:
        bound = self._bound
        if (bound is not None and bound[0] == self._signature(x, model_out, coeffs, noise) and x.is_contiguous()
                and model_out.is_contiguous() and coeffs.is_contiguous() and (noise is None or noise.is_contiguous())
                and not needs_grad(x, model_out, noise)):
            return bound[1](x, model_out, coeffs, self.history, noise, bound[2], None, None)
        out = sampler_update(x, model_out, coeffs, history=self.history, noise=noise,
                             guidance_scale=self.guidance_scale, guidance_rescale=self.guidance_rescale)
        if self._bindable and x.numel():
            backend = FAMILY.select("sampler_update", x.device, (x.dtype, model_out.dtype), coeffs_dtype=coeffs.dtype)
            if backend != "reference":
                scale = 1.0 if self.guidance_scale is None else float(self.guidance_scale)
                self._bound = (self._signature(x, model_out, coeffs, noise), kernel_op("sampler_update", backend), scale)
        return out


def check_coeffs(op: str, coeffs: Tensor, k: int, device: torch.device) -> None:
    check_tensor(op, "coeffs", coeffs, dtypes=(torch.float32, torch.float64), device=device)
    n = row_length(k)
    if coeffs.dim() != 1 or coeffs.numel() != n:
        fail(op, "coeffs", f"a 1-D row of {n} coefficients [a, b, c_x, c_d, c_z, slot] + {k} history coefficients", describe(coeffs))
    # Values are checked where that costs no device sync (and not while tracing); device-resident tables are validated on
    # the host when they are built (fastdiff.solvers.program).
    if coeffs.device.type == "cpu" and not torch.compiler.is_compiling():
        values = coeffs.tolist()  # a few numbers: far cheaper than tensor ops on the hot path
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            fail(op, "coeffs", "finite coefficients", f"non-finite values at positions {bad}")
        slot = values[SLOT]
        if slot != int(slot) or not -1 <= slot < k:
            fail(op, "coeffs", f"an integer slot in [-1, {k - 1}] at position {SLOT}", slot)


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------
def _update_fake(x, model_out, coeffs, history, noise, scale, scale_per_sample, factor):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


register_fake(["sampler_update", "sampler_update_triton"], _update_fake)
register_triton("sampler_update", "sampler_update", "sampler_update")
