#!/usr/bin/env python3
"""Compile every Triton kernel specialisation the fastdiff wrappers can launch, for CUDA, without a GPU.

    python scripts/triton_compile_check.py [--arch 80 --arch 90] [--ptx-stats]

Lowers each kernel through Triton's full CUDA pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin with
the bundled ptxas) for the given compute capabilities, so type errors, unsupported ops and
int64/constexpr corner cases (sizes of 1 specialise to constants, sizes >= 2**31 to int64) show up
on a machine with no GPU. --ptx-stats prints how many vector (v2/v4) global loads and stores each
kernel got, to check that the elementwise kernels stay vectorised. Exit status 1 if any fails.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)  # the interpreter would replace the compiler
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fastdiff.solvers.rows import A, B, CD, CX, CZ, HISTORY, SLOT  # noqa: E402
from fastdiff.triton import _common  # noqa: E402
from fastdiff.triton import geglu as GG  # noqa: E402
from fastdiff.triton import group_norm as GN  # noqa: E402
from fastdiff.triton import adaln as AD  # noqa: E402
from fastdiff.triton import guidance as G  # noqa: E402
from fastdiff.triton import sampler_update as S  # noqa: E402

PTR = {"f32": "*fp32", "f16": "*fp16", "bf16": "*bf16"}
DTYPES = tuple(PTR)
ALIGNED = "aligned"  # pointers and sizes divisible by 16 (Triton's usual specialisation)
DIVISIBLE = (ALIGNED, "huge")
SIZES = {
    ALIGNED: {"n": "i32", "bn": "i32"},
    "odd": {"n": "i32", "bn": "i32"},
    "one": {"n": 1, "bn": 1},  # B = 1, one element per sample: both sizes become constants
    "huge": {"n": "i64", "bn": "i64"},  # a sample of 2**31 elements or more: WIDE offsets
}


def cases():
    """(kernel, argument types or constant values, num_warps, size label) for each specialisation."""

    def block(size, default):  # what the wrappers pick: one-element samples get the smallest block
        return _common.block_for(1, None, default) if size == "one" else default

    for dt, has_s, has_f, size in itertools.product(DTYPES, (False, True), (False, True), SIZES):
        blk = block(size, _common.BLOCK)
        yield G._combine_kernel, dict(
            m_ptr=PTR[dt], out_ptr=PTR[dt], scale_ptr="*fp32", factor_ptr="*fp32", scale="fp32", **SIZES[size],
            HAS_SCALE=has_s, HAS_FACTOR=has_f, BLOCK=blk, WIDE=size == "huge",
        ), _common.warps_for(blk), size
    for dt, has_s, size in itertools.product(DTYPES, (False, True), SIZES):
        blk = block(size, _common.REDUCE_BLOCK)
        yield G._moments_kernel, dict(
            m_ptr=PTR[dt], part_ptr="*fp32", scale_ptr="*fp32", scale="fp32", parts=1 if size == "one" else "i32", **SIZES[size],
            HAS_SCALE=has_s, BLOCK=blk, WIDE=size == "huge",
        ), _common.warps_for(blk), size
    for size, nblk in (("odd", "i32"), ("one", 1), ("huge", "i32")):
        yield G._factor_kernel, dict(
            part_ptr="*fp32", out_ptr="*fp32", rescale="fp32", n=SIZES[size]["n"], nblk=nblk, parts=1 if size == "one" else "i32",
            REDUCE=block(size, _common.REDUCE_BLOCK), PBLOCK=1 if nblk == 1 else _common.COMBINE_BLOCK,
        ), 1, size

    idx = dict(I_A=A, I_B=B, I_CX=CX, I_CD=CD, I_CZ=CZ, I_SLOT=SLOT, I_HIST=HISTORY)

    def update(xdt, mdt, k, guided, noise, has_s, has_f, size):
        blk = block(size, _common.BLOCK)
        return S._update_kernel, dict(
            x_ptr=PTR[xdt], m_ptr=PTR[mdt], coeff_ptr="*fp32", hist_ptr=PTR[xdt], noise_ptr=PTR[xdt],
            out_ptr=PTR[xdt], scale_ptr="*fp32", factor_ptr="*fp32", scale="fp32", **SIZES[size],
            K=k, GUIDED=guided, HAS_NOISE=noise, HAS_SCALE=has_s, HAS_FACTOR=has_f, **idx,
            BLOCK=blk, WIDE=size == "huge",
        ), _common.warps_for(blk), size

    for xdt, mdt in itertools.product(DTYPES, DTYPES):  # every dtype pair, on the common guided path
        yield update(xdt, mdt, 2, True, True, False, False, ALIGNED)
    for k, guided, noise in itertools.product((0, 1, 3, S.MAX_HISTORY), (False, True), (False, True)):
        yield update("f32", "f32", k, guided, noise, guided, guided, ALIGNED)
    for size in SIZES:
        yield update("bf16", "f16", 3, True, True, True, True, size)
    for dt, tanh, size in itertools.product(DTYPES, (False, True), SIZES):  # geglu: h is the row's half-width
        blk = block(size, _common.BLOCK)
        common = dict(h=SIZES[size]["n"], TANH=tanh, BLOCK=blk, WIDE=size == "huge")
        yield GG._forward_kernel, dict(x_ptr=PTR[dt], out_ptr=PTR[dt], **common), _common.warps_for(blk), size
        yield GG._backward_kernel, dict(go_ptr=PTR[dt], x_ptr=PTR[dt], gx_ptr=PTR[dt], **common), _common.warps_for(blk), size
    yield from adaln_cases()
    yield from group_norm_cases()


#: adaln row widths the launchers turn into BLOCK_D (next power of two of D): a tiny row, DiT's
#: 1152 (2048) and the largest, 8192, where the warps (forward 16, backward 32) change too.
ADALN_BLOCKS = (16, 2048, 8192)


def adaln_cases():
    """The adaln row kernels: every flag pattern at one width, every dtype and width with all flags on."""
    sizes = {ALIGNED: "i32", "odd": "i32", "one": 1}

    def row_kernels(dt, block, flags, size):
        p, n = PTR[dt], sizes[size]
        fwd = dict(X=p, GATE=p, H=p, SHIFT=p, SCALE=p, W=p, B=p, XOUT=p, OUT=p, MEAN="*fp32", RSTD="*fp32",
                   N=n, D="i32", eps="fp32", **flags, BLOCK_D=block)
        yield AD._forward_kernel, fwd, AD._warps(block), size
        bwd = dict(GO=p, GXO=p, X=p, GATE=p, H=p, SCALE=p, W=p, B=p, MEAN="*fp32", RSTD="*fp32",
                   GX=p, GH=p, GGATE=p, GSHIFT=p, GSCALE=p, P="*fp32", N=n, D="i32", ROWS=n, CHUNKS=n,
                   **flags, BLOCK_D=block)
        yield AD._backward_kernel, bwd, AD._backward_warps(block), size

    names = ("FUSED", "RMS", "HAS_W", "HAS_B", "GATE_PS", "SHIFT_PS", "SCALE_PS")
    for fused, rms, affine, per_sample in itertools.product((False, True), repeat=4):
        flags = dict(zip(names, (fused, rms, affine, affine, fused and per_sample, per_sample, per_sample)))
        yield from row_kernels("bf16", 2048, flags, ALIGNED)
    full = dict(zip(names, (True, False, True, True, True, True, True)))
    for dt, block in itertools.product(DTYPES, ADALN_BLOCKS):
        yield from row_kernels(dt, block, full, ALIGNED)
    for size in ("odd", "one"):
        yield from row_kernels("f16", 2048, full, size)
    for dt, gate_ps, size in itertools.product(DTYPES, (False, True), (ALIGNED, "odd")):
        p = PTR[dt]
        blk = AD._RESIDUAL_BLOCK
        yield AD._residual_kernel, dict(X=p, GATE=p, H=p, OUT=p, N="i32", D="i32", GATE_PS=gate_ps, BLOCK=blk), 4, size
        yield AD._residual_backward_kernel, dict(
            GO=p, GATE=p, H=p, GH=p, GGATE=p, P="*fp32", N="i32", D="i32", ROWS="i32", CHUNKS="i32",
            GATE_PS=gate_ps, BLOCK=blk,
        ), 4, size



def group_norm_cases():
    """The group_norm kernels (launched with the default 4 warps): every dtype, affine or not, SiLU or not."""
    for dt, affine, silu in itertools.product(DTYPES, (False, True), (False, True)):
        p = PTR[dt]
        dims = dict(C="i32", S="i32", CG="i32", G="i32", sN="i32", sC="i32", sS="i32")
        flags = dict(HAS_W=affine, HAS_B=affine, SILU=silu)
        if not affine and not silu:
            yield GN._stats_kernel, dict(X=p, PART="*fp32", C="i32", S="i32", sN="i32", sC="i32", sS="i32", BLOCKS="i32",
                                         BLOCK_LEN=GN.BLOCK_LEN, TILE=GN.TILE), 4, ALIGNED
        yield GN._apply_kernel, dict(X=p, OUT=p, MEAN="*fp32", RSTD="*fp32", W=p, B=p, **dims, **flags, TILE=GN.TILE), 4, ALIGNED
        yield GN._grad_sums_kernel, dict(X=p, GO=p, PART="*fp32", MEAN="*fp32", RSTD="*fp32", W=p, B=p, **dims, BLOCKS="i32",
                                         **flags, BLOCK_LEN=GN.BLOCK_LEN, TILE=GN.TILE), 4, ALIGNED
        yield GN._grad_x_kernel, dict(X=p, GO=p, GX=p, COEF="*fp32", MEAN="*fp32", RSTD="*fp32", W=p, B=p, **dims,
                                      **flags, TILE=GN.TILE), 4, ALIGNED


def compile_one(fn, args, num_warps, size, arch):
    sig, consts, attrs = {}, {}, {}
    for name in fn.arg_names:
        v = args[name]
        if isinstance(v, str):
            sig[name] = v
            if size in DIVISIBLE and (v.startswith("*") or v in ("i32", "i64")):
                attrs[(fn.arg_names.index(name),)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "constexpr"
            consts[name] = v
    src = ASTSource(fn, sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, action="append", help="compute capability, e.g. 80 or 90 (repeatable)")
    ap.add_argument("--ptx-stats", action="store_true", help="print vector load/store counts per kernel")
    opts = ap.parse_args()
    archs = opts.arch or [80, 90]
    failed, done, t0 = 0, 0, time.time()
    for arch in archs:
        for fn, args, warps, size in cases():
            label = f"sm_{arch} {fn.__name__} {size} " + " ".join(
                f"{k}={v}" for k, v in args.items() if (k.isupper() and not isinstance(v, str)) or k in ("x_ptr", "m_ptr", "X", "GO")
            )
            try:
                kernel = compile_one(fn, args, warps, size, arch)
            except Exception as e:  # report every failure, not just the first
                failed += 1
                print(f"FAIL {label}\n     {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                continue
            done += 1
            if opts.ptx_stats:
                ptx = kernel.asm["ptx"]
                stats = " ".join(f"{op}.{w}={ptx.count(f'{op}.global.{w}')}" for op in ("ld", "st") for w in ("v4", "v2"))
                print(f"ok   {label}  [{stats}]")
    print(f"triton {triton.__version__}: {done} specialisations compiled for sm_{', sm_'.join(map(str, archs))}, "
          f"{failed} failed, {time.time() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
