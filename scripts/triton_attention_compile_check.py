#!/usr/bin/env python3
"""Compile every attention Triton kernel specialisation for CUDA without a GPU.

    python scripts/triton_attention_compile_check.py [--arch 80 --arch 90] [--quick | --ci | --dims 72,160]

Lowers each kernel of fastdiff/triton/attention.py through Triton's whole CUDA pipeline (TTIR ->
TTGIR -> LLVM -> PTX -> cubin with the bundled ptxas) for the given compute capabilities and every
launch configuration the autotuner may pick, over the head dims the kernels split differently
(one, two and three power-of-two chunks, padded chunks), with and without masks, on both forward
paths. Type errors, dot shapes the GPU backend rejects (Triton 3.6: no tl.dot shallower than 16),
and configurations that exceed shared memory show up here. Exit status 1 if any fails; an autotune
config that needs more shared memory than the chip has is reported but not counted (the autotuner
skips it at run time), unless it is the fixed config FASTDIFF_TRITON_AUTOTUNE=0 launches.
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

from fastdiff.triton import attention as A  # noqa: E402

HEAD_DIMS = (40, 64, 72, 80, 96, 128, 160, 8, 104, 112, 120, 256)
QUICK_DIMS = (40, 72, 160)
#: --ci: every autotune config for head dims that give one padded 16-wide chunk after a 32-wide one
#: (40) and three chunks of 64, 32, 16 (112); the fixed FASTDIFF_TRITON_AUTOTUNE=0 configs for a lone
#: padded chunk (8), a 128-wide chunk (160) and the widest head (256), in fp16 only: D = 256 compiles
#: take ~10 s each.
CI_ALL_CONFIG_DIMS = (40, 112)
CI_FIXED_DIMS = (8, 160, 256)
PTR = {"f16": "*fp16", "bf16": "*bf16"}
ALL_MASKS = ((False, False), (True, False), (False, True))
#: Dynamic shared memory a block may use (bytes): sm_80 (A100) and sm_90 (H100).
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}


def _sig(fn, ptr_types, ints, floats, consts):
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name in ptr_types:
            sig[name] = ptr_types[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in floats:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if name in ints:  # strides and sizes the launcher passes as multiples of 8/16
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def cases(dims, *, fixed_only=False, masks=ALL_MASKS, dtypes=tuple(PTR)):
    """(label, kernel, pointer types, constexprs, num_warps, num_stages, fixed) per specialisation.

    `fixed`: the config is the one launched with FASTDIFF_TRITON_AUTOTUNE=0, which must fit the
    chip (the autotuner skips configs that do not; a fixed launch cannot)."""
    for d, dt, (mask, bias) in itertools.product(dims, dtypes, masks):
        d0, d1, d2 = A.head_dim_chunks(d)
        chunks = dict(D=d, D0=d0, D1=d1, D2=d2)
        p = PTR[dt]
        fwd_ptrs = dict(Q=p, K=p, V=p, O=p, LSE="*fp32", KMASK="*u8", BIAS=p)
        flags = dict(HAS_MASK=mask, HAS_BIAS=bias, EMULATE_BF16=False)
        for one_pass, tuner in ((True, A._fwd_short), (False, A._fwd_tiled)):
            fixed_cfg = A.fixed_config(tuner, d)
            for cfg in tuner.configs:
                if fixed_only and cfg is not fixed_cfg:
                    continue
                kw = dict(cfg.kwargs)
                if one_pass:
                    kw["BLOCK_N"] = A.SHORT_KV_MAX  # the widest key block the launcher passes
                yield (f"fwd {'short' if one_pass else 'tiled'} D={d} {dt} mask={mask} bias={bias} {kw}", A._attn_fwd,
                       fwd_ptrs, dict(**chunks, **flags, ONE_PASS=one_pass, **kw), cfg.num_warps, cfg.num_stages,
                       cfg is fixed_cfg)
        if mask or bias:  # masks do not change the backward's dot shapes: one variant is enough
            continue
        bwd_ptrs = dict(Q=p, K=p, V=p, DO=p, LSE="*fp32", DELTA="*fp32", DK=p, DV=p, DQ=p, KMASK="*u8", BIAS=p)
        for tuner in (A._bwd_dkdv, A._bwd_dq):
            fixed_cfg = A.fixed_config(tuner, d)
            for cfg in tuner.configs:
                if fixed_only and cfg is not fixed_cfg:
                    continue
                yield (f"{tuner.fn.__name__} D={d} {dt} {cfg.kwargs}", tuner.fn, bwd_ptrs,
                       dict(**chunks, **flags, **cfg.kwargs), cfg.num_warps, cfg.num_stages, cfg is fixed_cfg)
        yield (f"bwd_delta D={d} {dt}", A._attn_bwd_delta, dict(O=p, DO=p, DELTA="*fp32"),
               dict(**chunks, BLOCK_M=64), 4, 1, True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, action="append", help="compute capability, e.g. 80 or 90 (repeatable)")
    ap.add_argument("--quick", action="store_true", help=f"head dims {QUICK_DIMS} only")
    ap.add_argument("--ci", action="store_true", help=f"every config for head dims {CI_ALL_CONFIG_DIMS}, the fixed "
                    f"configs for {CI_FIXED_DIMS} (fp16); masks and bias only together")
    ap.add_argument("--dims", help="comma-separated head dims (overrides --quick)")
    opts = ap.parse_args()
    archs = opts.arch or [80, 90]
    dims = QUICK_DIMS if opts.quick else HEAD_DIMS
    if opts.dims:
        dims = tuple(int(d) for d in opts.dims.split(","))

    def all_cases():
        if not opts.ci:
            yield from cases(dims)
            return
        masks = ((False, False), (True, True))
        yield from cases(CI_ALL_CONFIG_DIMS, masks=masks)
        yield from cases(CI_FIXED_DIMS, fixed_only=True, masks=masks, dtypes=("f16",))

    failed = skipped = done = 0
    t0 = time.time()
    strides = {"sqb", "sqn", "sqh", "skb", "skn", "skh", "svb", "svn", "svh", "sob", "son", "soh",
               "sdb", "sdn", "sdh", "sgb", "sgn", "sgh"}
    for arch in archs:
        for label, fn, ptrs, consts, warps, stages, fixed in all_cases():
            sig, attrs = _sig(fn, ptrs, strides, {"scale", "scale2"}, consts)
            src = ASTSource(fn, sig, constexprs=consts, attrs=attrs)
            problem, resources = None, False
            try:
                kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages})
                shared, limit = kernel.metadata.shared, SHARED_LIMIT.get(arch)
                if limit is not None and shared > limit:
                    problem, resources = f"needs {shared} bytes of shared memory > {limit}", True
            except Exception as e:  # report every failure, not just the first
                problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                resources = "out of resource" in problem.lower() or "OutOfResources" in problem
            if problem is None:
                done += 1
            elif resources and not fixed:  # the autotuner skips such a config at run time
                skipped += 1
                print(f"skip sm_{arch} {label}: {problem}", flush=True)
            else:  # a fixed launch has no other config to fall back to
                failed += 1
                print(f"FAIL sm_{arch} {label}\n     {problem}", flush=True)
    print(f"triton {triton.__version__}: {done} attention specialisations compiled for sm_{', sm_'.join(map(str, archs))}, "
          f"{failed} failed, {skipped} over resources, {time.time() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
