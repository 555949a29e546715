"""Triton flash attention for diffusion shapes: forward, and a deterministic backward.

Contract: the ``attention_fwd`` / ``attention_bwd`` schemas in csrc/ops.cpp. Tensors are (B, N, H, D)
read through strides (head dim contiguous); fp16/bf16; D a multiple of 8 up to 256.

Head dims that are not powers of two. ``tl.arange`` and ``tl.dot`` take power-of-two extents, and
padding D=72 to 128 would spend 44% of the matmul work on zeros. Instead D is split into at most
three power-of-two column chunks of at least 16, largest first (80 = 64 + 16, 160 = 128 + 32,
112 = 64 + 32 + 16), each held in its own register tile; a product over D is the sum of the chunks'
products, a product that yields D columns is computed chunk by chunk. Every D whose D/16 has at
most three set bits is served with no padding; the rest round only their smallest chunk up (72 =
64 + 16 with 8 padded columns, 40 = 32 + 16, 120 = 64 + 32 + 32). Why 16: Triton 3.6 (the GPU
machines' version) rejects a ``tl.dot`` of reduction depth below 16 for every input type, TF32
included, and a padded 16-wide 16-bit product costs the tensor cores what an 8-wide TF32 one did.
Padded columns are loaded as zeros (masked) and never stored, so they change no result.

Two forward paths: keys that fit one block (Nk <= SHORT_KV_MAX, cross-attention on 77 text tokens)
are attended in a single step per query block, a plain softmax with no rescaling; longer key
sequences (self-attention) loop over key blocks with the online softmax. Statistics are float32, in
base-2 units inside the kernels (exp2 is the native instruction); the saved log-sum-exp is natural.

Backward (recomputation, no N^2 storage): delta = rowsum(dO * O); one kernel per key block
accumulates dK and dV over all query blocks, another per query block accumulates dQ over all key
blocks. No atomics, so gradients are bitwise reproducible.

Under the CPU interpreter (TRITON_INTERPRET=1) with bfloat16 the kernels take an EMULATE_BF16
branch: Triton 3.9's interpreter multiplies bf16 bit patterns as integers in tl.dot and truncates
float32 -> bf16 casts, so there products run in float32 (exact for bf16 inputs, float32
accumulation as on the GPU) and downcasts round to nearest even in integer arithmetic. Compiled
GPU kernels never take that branch.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
#: Key sequences up to this length take the one-block forward path.
SHORT_KV_MAX = 256
#: Narrowest head-dim chunk: the smallest reduction depth every supported Triton takes in tl.dot.
MIN_CHUNK = 16


def head_dim_chunks(d: int, min_chunk: int = MIN_CHUNK) -> tuple[int, int, int]:
    """Split head dim `d` into up to three power-of-two widths (0 = absent); see the module docstring."""
    chunks: list[int] = []
    rest = d
    while rest > 0 and len(chunks) < 2:
        w = 1 << (rest.bit_length() - 1)
        if w < min_chunk:
            break
        chunks.append(w)
        rest -= w
    if rest > 0:
        chunks.append(max(triton.next_power_of_2(rest), min_chunk))
    return tuple(chunks + [0] * (3 - len(chunks)))  # type: ignore[return-value]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------
@triton.jit
def _load_chunk(base, rows, row_stride, n_rows, OFF: tl.constexpr, W: tl.constexpr, D: tl.constexpr):
    """Rows `rows` (masked to < n_rows) and columns [OFF, OFF + W) (masked to < D) of a strided matrix."""
    cols = OFF + tl.arange(0, W)
    ptrs = base + rows.to(tl.int64)[:, None] * row_stride + cols[None, :]
    mask = rows[:, None] < n_rows
    if OFF + W > D:  # only a padded last chunk needs the column mask
        mask = mask & (cols[None, :] < D)
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _to(x, dtype: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """Round float32 `x` to `dtype` to nearest even.

    Under EMULATE_BF16 the rounding is done in integer arithmetic first: Triton 3.9's interpreter
    truncates float32 -> bfloat16 casts, where a GPU rounds to nearest even.
    """
    if EMULATE_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _store_chunk(
    base, val, rows, row_stride, n_rows, OFF: tl.constexpr, W: tl.constexpr, D: tl.constexpr, EMULATE_BF16: tl.constexpr,
):
    cols = OFF + tl.arange(0, W)
    ptrs = base + rows.to(tl.int64)[:, None] * row_stride + cols[None, :]
    mask = rows[:, None] < n_rows
    if OFF + W > D:
        mask = mask & (cols[None, :] < D)
    tl.store(ptrs, _to(val, base.dtype.element_ty, EMULATE_BF16), mask=mask)


@triton.jit
def _mm(a, b, EMULATE_BF16: tl.constexpr):
    """a @ b with float32 accumulation (EMULATE_BF16: multiplied in float32, exact for bf16 inputs)."""
    if EMULATE_BF16:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _dot_nt(a, b, W: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """a @ b^T (float32) for a (M, W) and b (N, W): a product reduced over a head-dim chunk."""
    tl.static_assert(W >= 16, "head-dim chunks are at least 16 wide (Triton 3.6's tl.dot depth)")
    if EMULATE_BF16:
        out = tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)), input_precision="ieee")
    else:
        out = tl.dot(a, tl.trans(b))
    return out


@triton.jit
def _dot3_nt(a0, a1, a2, b0, b1, b2, D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """sum over the head-dim chunks of a_c @ b_c^T."""
    out = _dot_nt(a0, b0, D0, EMULATE_BF16)
    if D1 > 0:
        out += _dot_nt(a1, b1, D1, EMULATE_BF16)
    if D2 > 0:
        out += _dot_nt(a2, b2, D2, EMULATE_BF16)
    return out


@triton.jit
def _scores(
    s, rows, cols, Nq, Nk, scale2, kmask_base, bias_base, sbq, sbk,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, TRANSPOSED: tl.constexpr,
):
    """Scale raw q.k products to base-2 logits, add the bias, and set excluded keys to -inf.

    `rows` index queries and `cols` keys of s (BLOCK_Q, BLOCK_K); TRANSPOSED: s is (BLOCK_K, BLOCK_Q)
    with `rows` the keys and `cols` the queries (the dK/dV kernel's orientation).
    """
    s = s * scale2
    if TRANSPOSED:
        q_idx = cols[None, :]
        k_idx = rows[:, None]
    else:
        q_idx = rows[:, None]
        k_idx = cols[None, :]
    if HAS_BIAS:
        b_ptrs = bias_base + q_idx.to(tl.int64) * sbq + k_idx.to(tl.int64) * sbk
        bias = tl.load(b_ptrs, mask=(q_idx < Nq) & (k_idx < Nk), other=0.0)
        s += bias.to(tl.float32) * 1.4426950408889634
    keep = k_idx < Nk
    if HAS_MASK:
        keep = keep & (tl.load(kmask_base + k_idx, mask=k_idx < Nk, other=0) != 0)
    return tl.where(keep, s, float("-inf"))


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------
@triton.jit
def _attn_fwd(
    Q, K, V, O, LSE, KMASK, BIAS,
    sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sob, son, soh,
    sbb, sbh, sbq, sbk,
    H, Nq, Nk, scale2,
    D: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, ONE_PASS: tl.constexpr, EMULATE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q_base = Q + b * sqb + h * sqh
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    kmask_base = KMASK + b * Nk
    bias_base = BIAS + b * sbb + h * sbh

    # The query block stays in registers, one tile per head-dim chunk (absent chunks alias q0 and
    # are never read: every use sits under a compile-time `if Dc > 0`).
    q0 = _load_chunk(q_base, rows, sqn, Nq, 0, D0, D)
    q1 = q0
    q2 = q0
    if D1 > 0:
        q1 = _load_chunk(q_base, rows, sqn, Nq, D0, D1, D)
    if D2 > 0:
        q2 = _load_chunk(q_base, rows, sqn, Nq, D0 + D1, D2, D)
    acc0 = tl.zeros([BLOCK_M, D0], dtype=tl.float32)
    acc1 = acc0
    acc2 = acc0
    if D1 > 0:
        acc1 = tl.zeros([BLOCK_M, D1], dtype=tl.float32)
    if D2 > 0:
        acc2 = tl.zeros([BLOCK_M, D2], dtype=tl.float32)

    if ONE_PASS:
        # Every key in one block: a plain softmax, no running max to rescale against.
        cols = tl.arange(0, BLOCK_N)
        k0 = _load_chunk(k_base, cols, skn, Nk, 0, D0, D)
        k1 = k0
        k2 = k0
        if D1 > 0:
            k1 = _load_chunk(k_base, cols, skn, Nk, D0, D1, D)
        if D2 > 0:
            k2 = _load_chunk(k_base, cols, skn, Nk, D0 + D1, D2, D)
        s = _dot3_nt(q0, q1, q2, k0, k1, k2, D0, D1, D2, EMULATE_BF16)
        s = _scores(s, rows, cols, Nq, Nk, scale2, kmask_base, bias_base, sbq, sbk, HAS_MASK, HAS_BIAS, False)
        m_i = tl.max(s, 1)
        m_use = tl.where(m_i == float("-inf"), 0.0, m_i)  # fully masked row: every p is 0
        p = tl.exp2(s - m_use[:, None])
        l_i = tl.sum(p, 1)
        p = _to(p, V.dtype.element_ty, EMULATE_BF16)
        acc0 = _mm(p, _load_chunk(v_base, cols, svn, Nk, 0, D0, D), EMULATE_BF16)
        if D1 > 0:
            acc1 = _mm(p, _load_chunk(v_base, cols, svn, Nk, D0, D1, D), EMULATE_BF16)
        if D2 > 0:
            acc2 = _mm(p, _load_chunk(v_base, cols, svn, Nk, D0 + D1, D2, D), EMULATE_BF16)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start_n in range(0, Nk, BLOCK_N):
            cols = start_n + tl.arange(0, BLOCK_N)
            k0 = _load_chunk(k_base, cols, skn, Nk, 0, D0, D)
            k1 = k0
            k2 = k0
            if D1 > 0:
                k1 = _load_chunk(k_base, cols, skn, Nk, D0, D1, D)
            if D2 > 0:
                k2 = _load_chunk(k_base, cols, skn, Nk, D0 + D1, D2, D)
            s = _dot3_nt(q0, q1, q2, k0, k1, k2, D0, D1, D2, EMULATE_BF16)
            s = _scores(s, rows, cols, Nq, Nk, scale2, kmask_base, bias_base, sbq, sbk, HAS_MASK, HAS_BIAS, False)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # Rows with no attended key so far keep m = -inf; measuring from 0 keeps p = 0, not NaN.
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_use)
            p = tl.exp2(s - m_use[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            p = _to(p, V.dtype.element_ty, EMULATE_BF16)
            acc0 = acc0 * alpha[:, None] + _mm(p, _load_chunk(v_base, cols, svn, Nk, 0, D0, D), EMULATE_BF16)
            if D1 > 0:
                acc1 = acc1 * alpha[:, None] + _mm(p, _load_chunk(v_base, cols, svn, Nk, D0, D1, D), EMULATE_BF16)
            if D2 > 0:
                acc2 = acc2 * alpha[:, None] + _mm(p, _load_chunk(v_base, cols, svn, Nk, D0 + D1, D2, D), EMULATE_BF16)
            m_i = m_new

    alive = l_i > 0.0
    inv_l = tl.where(alive, 1.0 / tl.where(alive, l_i, 1.0), 0.0)  # fully masked rows write zeros
    o_base = O + b * sob + h * soh
    _store_chunk(o_base, acc0 * inv_l[:, None], rows, son, Nq, 0, D0, D, EMULATE_BF16)
    if D1 > 0:
        _store_chunk(o_base, acc1 * inv_l[:, None], rows, son, Nq, D0, D1, D, EMULATE_BF16)
    if D2 > 0:
        _store_chunk(o_base, acc2 * inv_l[:, None], rows, son, Nq, D0 + D1, D2, D, EMULATE_BF16)
    # Natural-log lse; +inf marks a fully masked row so the backward's exp(s - lse) is 0 there.
    lse = tl.where(alive, (m_i + tl.log2(tl.where(alive, l_i, 1.0))) * 0.6931471805599453, float("inf"))
    tl.store(LSE + pid_bh.to(tl.int64) * Nq + rows, lse, mask=rows < Nq)


# ---------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------
@triton.jit
def _attn_bwd_delta(
    O, DO, DELTA, sob, son, soh, sdb, sdn, sdh, H, Nq,
    D: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta[b, h, i] = sum_d dO[b, i, h, d] * O[b, i, h, d] in float32."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_base = O + b * sob + h * soh
    do_base = DO + b * sdb + h * sdh
    o = _load_chunk(o_base, rows, son, Nq, 0, D0, D).to(tl.float32)
    do = _load_chunk(do_base, rows, sdn, Nq, 0, D0, D).to(tl.float32)
    delta = tl.sum(o * do, 1)
    if D1 > 0:
        o = _load_chunk(o_base, rows, son, Nq, D0, D1, D).to(tl.float32)
        do = _load_chunk(do_base, rows, sdn, Nq, D0, D1, D).to(tl.float32)
        delta += tl.sum(o * do, 1)
    if D2 > 0:
        o = _load_chunk(o_base, rows, son, Nq, D0 + D1, D2, D).to(tl.float32)
        do = _load_chunk(do_base, rows, sdn, Nq, D0 + D1, D2, D).to(tl.float32)
        delta += tl.sum(o * do, 1)
    tl.store(DELTA + pid_bh.to(tl.int64) * Nq + rows, delta, mask=rows < Nq)


@triton.jit
def _attn_bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV, KMASK, BIAS,
    sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sdb, sdn, sdh, sgb, sgn, sgh,
    sbb, sbh, sbq, sbk,
    H, Nq, Nk, scale, scale2,
    D: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, EMULATE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One key block per program: dV = P^T dO and dK = scale * dS^T Q, summed over every query block.

    Works in the transposed orientation (keys on rows) so the sums land in registers of this
    program alone: no atomics. DK and DV are contiguous (B, Nk, H, D) with strides sg*.
    """
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    keys = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    q_base = Q + b * sqb + h * sqh
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    do_base = DO + b * sdb + h * sdh
    kmask_base = KMASK + b * Nk
    bias_base = BIAS + b * sbb + h * sbh
    stat_base = pid_bh.to(tl.int64) * Nq

    k0 = _load_chunk(k_base, keys, skn, Nk, 0, D0, D)
    v0 = _load_chunk(v_base, keys, svn, Nk, 0, D0, D)
    k1 = k0
    k2 = k0
    v1 = v0
    v2 = v0
    dk0 = tl.zeros([BLOCK_N, D0], dtype=tl.float32)
    dv0 = tl.zeros([BLOCK_N, D0], dtype=tl.float32)
    dk1 = dk0
    dk2 = dk0
    dv1 = dv0
    dv2 = dv0
    if D1 > 0:
        k1 = _load_chunk(k_base, keys, skn, Nk, D0, D1, D)
        v1 = _load_chunk(v_base, keys, svn, Nk, D0, D1, D)
        dk1 = tl.zeros([BLOCK_N, D1], dtype=tl.float32)
        dv1 = tl.zeros([BLOCK_N, D1], dtype=tl.float32)
    if D2 > 0:
        k2 = _load_chunk(k_base, keys, skn, Nk, D0 + D1, D2, D)
        v2 = _load_chunk(v_base, keys, svn, Nk, D0 + D1, D2, D)
        dk2 = tl.zeros([BLOCK_N, D2], dtype=tl.float32)
        dv2 = tl.zeros([BLOCK_N, D2], dtype=tl.float32)

    for start_m in range(0, Nq, BLOCK_M):
        qs = start_m + tl.arange(0, BLOCK_M)
        q0 = _load_chunk(q_base, qs, sqn, Nq, 0, D0, D)
        do0 = _load_chunk(do_base, qs, sdn, Nq, 0, D0, D)
        q1 = q0
        q2 = q0
        do1 = do0
        do2 = do0
        if D1 > 0:
            q1 = _load_chunk(q_base, qs, sqn, Nq, D0, D1, D)
            do1 = _load_chunk(do_base, qs, sdn, Nq, D0, D1, D)
        if D2 > 0:
            q2 = _load_chunk(q_base, qs, sqn, Nq, D0 + D1, D2, D)
            do2 = _load_chunk(do_base, qs, sdn, Nq, D0 + D1, D2, D)
        # lse = +inf (fully masked rows, and padding rows past Nq) makes their probabilities 0.
        lse2 = tl.load(LSE + stat_base + qs, mask=qs < Nq, other=float("inf")) * 1.4426950408889634
        delta = tl.load(DELTA + stat_base + qs, mask=qs < Nq, other=0.0)
        s_t = _dot3_nt(k0, k1, k2, q0, q1, q2, D0, D1, D2, EMULATE_BF16)
        s_t = _scores(s_t, keys, qs, Nq, Nk, scale2, kmask_base, bias_base, sbq, sbk, HAS_MASK, HAS_BIAS, True)
        p_t = tl.exp2(s_t - lse2[None, :])
        dp_t = _dot3_nt(v0, v1, v2, do0, do1, do2, D0, D1, D2, EMULATE_BF16)
        ds_t = _to(p_t * (dp_t - delta[None, :]), Q.dtype.element_ty, EMULATE_BF16)
        p_t = _to(p_t, DO.dtype.element_ty, EMULATE_BF16)
        dv0 += _mm(p_t, do0, EMULATE_BF16)
        dk0 += _mm(ds_t, q0, EMULATE_BF16)
        if D1 > 0:
            dv1 += _mm(p_t, do1, EMULATE_BF16)
            dk1 += _mm(ds_t, q1, EMULATE_BF16)
        if D2 > 0:
            dv2 += _mm(p_t, do2, EMULATE_BF16)
            dk2 += _mm(ds_t, q2, EMULATE_BF16)

    dk_base = DK + b * sgb + h * sgh
    dv_base = DV + b * sgb + h * sgh
    _store_chunk(dk_base, dk0 * scale, keys, sgn, Nk, 0, D0, D, EMULATE_BF16)
    _store_chunk(dv_base, dv0, keys, sgn, Nk, 0, D0, D, EMULATE_BF16)
    if D1 > 0:
        _store_chunk(dk_base, dk1 * scale, keys, sgn, Nk, D0, D1, D, EMULATE_BF16)
        _store_chunk(dv_base, dv1, keys, sgn, Nk, D0, D1, D, EMULATE_BF16)
    if D2 > 0:
        _store_chunk(dk_base, dk2 * scale, keys, sgn, Nk, D0 + D1, D2, D, EMULATE_BF16)
        _store_chunk(dv_base, dv2, keys, sgn, Nk, D0 + D1, D2, D, EMULATE_BF16)


@triton.jit
def _attn_bwd_dq(
    Q, K, V, DO, LSE, DELTA, DQ, KMASK, BIAS,
    sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sdb, sdn, sdh, sgb, sgn, sgh,
    sbb, sbh, sbq, sbk,
    H, Nq, Nk, scale, scale2,
    D: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, EMULATE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One query block per program: dQ = scale * dS K summed over every key block (no atomics)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q_base = Q + b * sqb + h * sqh
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    do_base = DO + b * sdb + h * sdh
    kmask_base = KMASK + b * Nk
    bias_base = BIAS + b * sbb + h * sbh
    stat_base = pid_bh.to(tl.int64) * Nq

    q0 = _load_chunk(q_base, rows, sqn, Nq, 0, D0, D)
    do0 = _load_chunk(do_base, rows, sdn, Nq, 0, D0, D)
    q1 = q0
    q2 = q0
    do1 = do0
    do2 = do0
    dq0 = tl.zeros([BLOCK_M, D0], dtype=tl.float32)
    dq1 = dq0
    dq2 = dq0
    if D1 > 0:
        q1 = _load_chunk(q_base, rows, sqn, Nq, D0, D1, D)
        do1 = _load_chunk(do_base, rows, sdn, Nq, D0, D1, D)
        dq1 = tl.zeros([BLOCK_M, D1], dtype=tl.float32)
    if D2 > 0:
        q2 = _load_chunk(q_base, rows, sqn, Nq, D0 + D1, D2, D)
        do2 = _load_chunk(do_base, rows, sdn, Nq, D0 + D1, D2, D)
        dq2 = tl.zeros([BLOCK_M, D2], dtype=tl.float32)
    lse2 = tl.load(LSE + stat_base + rows, mask=rows < Nq, other=float("inf")) * 1.4426950408889634
    delta = tl.load(DELTA + stat_base + rows, mask=rows < Nq, other=0.0)

    for start_n in range(0, Nk, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k0 = _load_chunk(k_base, cols, skn, Nk, 0, D0, D)
        v0 = _load_chunk(v_base, cols, svn, Nk, 0, D0, D)
        k1 = k0
        k2 = k0
        v1 = v0
        v2 = v0
        if D1 > 0:
            k1 = _load_chunk(k_base, cols, skn, Nk, D0, D1, D)
            v1 = _load_chunk(v_base, cols, svn, Nk, D0, D1, D)
        if D2 > 0:
            k2 = _load_chunk(k_base, cols, skn, Nk, D0 + D1, D2, D)
            v2 = _load_chunk(v_base, cols, svn, Nk, D0 + D1, D2, D)
        s = _dot3_nt(q0, q1, q2, k0, k1, k2, D0, D1, D2, EMULATE_BF16)
        s = _scores(s, rows, cols, Nq, Nk, scale2, kmask_base, bias_base, sbq, sbk, HAS_MASK, HAS_BIAS, False)
        p = tl.exp2(s - lse2[:, None])
        dp = _dot3_nt(do0, do1, do2, v0, v1, v2, D0, D1, D2, EMULATE_BF16)
        ds = _to(p * (dp - delta[:, None]), K.dtype.element_ty, EMULATE_BF16)
        dq0 += _mm(ds, k0, EMULATE_BF16)
        if D1 > 0:
            dq1 += _mm(ds, k1, EMULATE_BF16)
        if D2 > 0:
            dq2 += _mm(ds, k2, EMULATE_BF16)

    dq_base = DQ + b * sgb + h * sgh
    _store_chunk(dq_base, dq0 * scale, rows, sgn, Nq, 0, D0, D, EMULATE_BF16)
    if D1 > 0:
        _store_chunk(dq_base, dq1 * scale, rows, sgn, Nq, D0, D1, D, EMULATE_BF16)
    if D2 > 0:
        _store_chunk(dq_base, dq2 * scale, rows, sgn, Nq, D0 + D1, D2, D, EMULATE_BF16)


# ---------------------------------------------------------------------------------------------
# Launch configurations. On a GPU each kernel is autotuned per (Nq, Nk, D) over a few block
# shapes (configs that exceed the chip's registers or shared memory are skipped by the tuner);
# under the interpreter small fixed blocks keep tests fast while still crossing block edges.
# ---------------------------------------------------------------------------------------------
_KEY = ["Nq", "Nk", "D", "HAS_MASK", "HAS_BIAS"]


def _configs(shapes: list[tuple[dict, int, int]]) -> list[triton.Config]:
    return [triton.Config(kw, num_warps=w, num_stages=s) for kw, w, s in shapes]


_fwd_tiled = triton.autotune(
    _configs([
        ({"BLOCK_M": 128, "BLOCK_N": 64}, 4, 3),
        ({"BLOCK_M": 128, "BLOCK_N": 64}, 8, 3),
        ({"BLOCK_M": 64, "BLOCK_N": 64}, 4, 3),
        ({"BLOCK_M": 128, "BLOCK_N": 128}, 8, 2),
        ({"BLOCK_M": 64, "BLOCK_N": 32}, 4, 2),
    ]),
    key=_KEY,
)(_attn_fwd)
# BLOCK_N is the key length rounded up to a power of two, passed by the launcher.
_fwd_short = triton.autotune(
    _configs([({"BLOCK_M": 64}, 4, 2), ({"BLOCK_M": 128}, 8, 2), ({"BLOCK_M": 64}, 8, 2), ({"BLOCK_M": 32}, 4, 2)]),
    key=_KEY,
)(_attn_fwd)
_bwd_dkdv = triton.autotune(
    _configs([
        ({"BLOCK_M": 64, "BLOCK_N": 64}, 4, 2),
        ({"BLOCK_M": 64, "BLOCK_N": 64}, 8, 2),
        ({"BLOCK_M": 32, "BLOCK_N": 64}, 4, 2),
        ({"BLOCK_M": 64, "BLOCK_N": 128}, 8, 2),
        ({"BLOCK_M": 32, "BLOCK_N": 32}, 4, 2),
    ]),
    key=_KEY,
)(_attn_bwd_dkdv)
_bwd_dq = triton.autotune(
    _configs([
        ({"BLOCK_M": 64, "BLOCK_N": 64}, 4, 2),
        ({"BLOCK_M": 128, "BLOCK_N": 64}, 8, 2),
        ({"BLOCK_M": 64, "BLOCK_N": 32}, 4, 2),
        ({"BLOCK_M": 32, "BLOCK_N": 64}, 4, 2),
    ]),
    key=_KEY,
)(_attn_bwd_dq)

#: Fixed blocks under TRITON_INTERPRET=1 (small, so tiny test shapes span several blocks).
INTERPRET_BLOCK_M = 16
INTERPRET_BLOCK_N = 16

#: FASTDIFF_TRITON_AUTOTUNE=0 launches one fixed configuration per kernel and head dim instead of
#: autotuning: one compile per specialisation rather than one per candidate config (the GPU runbook
#: sets it; a first call then costs seconds, not a minute). The fixed choice is a config of each
#: tuner's own list, so the compile checks cover it.
AUTOTUNE_ENV = "FASTDIFF_TRITON_AUTOTUNE"


def autotuning() -> bool:
    return os.environ.get(AUTOTUNE_ENV, "1").strip() not in ("0", "false", "no", "off")


def fixed_config(tuner: triton.runtime.Autotuner, d: int) -> triton.Config:
    """The config used with autotuning off: the tuner's first (its best guess) for D <= 128; for
    wider heads the one with the smallest tile (fewest registers and shared memory a program)."""
    if d <= 128:
        return tuner.configs[0]
    return min(tuner.configs, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs.get("BLOCK_N", 1), c.num_warps))


def _launch(tuner: triton.runtime.Autotuner, grid, args: tuple, meta: dict) -> None:
    """Run `tuner` (autotuned), or its kernel with `fixed_config` when autotuning is off."""
    if autotuning():
        tuner[grid](*args, **meta)
        return
    cfg = fixed_config(tuner, meta["D"])
    tuner.fn[grid](*args, **meta, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


# ---------------------------------------------------------------------------------------------
# Launchers: the implementations of fastdiff::attention_fwd_triton / attention_bwd_triton
# ---------------------------------------------------------------------------------------------
def _head_dim_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _mask_args(q: torch.Tensor, key_mask: Optional[torch.Tensor], bias: Optional[torch.Tensor]):
    kmask = key_mask.contiguous().view(torch.uint8) if key_mask is not None else q  # q: never read
    if bias is not None:
        bias_t, bias_strides = bias, tuple(bias.stride())
    else:
        bias_t, bias_strides = q, (0, 0, 0, 0)
    return kmask, bias_t, bias_strides


def _emulate_bf16(q: torch.Tensor) -> bool:
    # Triton 3.9's interpreter multiplies bfloat16 bit patterns as integers in tl.dot and truncates
    # float32 -> bfloat16 casts. There the kernels multiply in float32 (exact for bf16 inputs) and
    # round in integer arithmetic, so the interpreted kernels compute what a GPU computes.
    return _interpreting() and q.dtype == torch.bfloat16


def _device_guard(t: torch.Tensor):
    import contextlib

    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    key_mask: Optional[torch.Tensor], bias: Optional[torch.Tensor], scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = _head_dim_last(q), _head_dim_last(k), _head_dim_last(v)
    b, nq, h, d = q.shape
    nk = k.shape[1]
    out = torch.empty((b, nq, h, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, h, nq), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    d0, d1, d2 = head_dim_chunks(d)
    kmask, bias_t, bs = _mask_args(q, key_mask, bias)
    one_pass = nk <= SHORT_KV_MAX
    args = (
        q, k, v, out, lse, kmask, bias_t,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        *bs, h, nq, nk, scale * LOG2E,
    )
    meta = dict(
        D=d, D0=d0, D1=d1, D2=d2, HAS_MASK=key_mask is not None, HAS_BIAS=bias is not None, ONE_PASS=one_pass,
        EMULATE_BF16=_emulate_bf16(q),
    )
    short_n = max(16, triton.next_power_of_2(nk))
    with _device_guard(q):
        if _interpreting():
            bn = short_n if one_pass else INTERPRET_BLOCK_N
            _attn_fwd[(triton.cdiv(nq, INTERPRET_BLOCK_M), b * h)](*args, **meta, BLOCK_M=INTERPRET_BLOCK_M, BLOCK_N=bn)
        elif one_pass:
            _launch(_fwd_short, lambda m: (triton.cdiv(nq, m["BLOCK_M"]), b * h), args, dict(meta, BLOCK_N=short_n))
        else:
            _launch(_fwd_tiled, lambda m: (triton.cdiv(nq, m["BLOCK_M"]), b * h), args, meta)
    return out, lse


def attention_bwd(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    key_mask: Optional[torch.Tensor], bias: Optional[torch.Tensor], scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_out, q, k, v, out = (_head_dim_last(t) for t in (grad_out, q, k, v, out))
    lse = lse.contiguous()
    b, nq, h, d = q.shape
    nk = k.shape[1]
    dq = torch.empty((b, nq, h, d), dtype=q.dtype, device=q.device)
    dk = torch.empty((b, nk, h, d), dtype=k.dtype, device=q.device)
    dv = torch.empty((b, nk, h, d), dtype=v.dtype, device=q.device)
    if dq.numel() == 0 or dk.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    d0, d1, d2 = head_dim_chunks(d)
    kmask, bias_t, bs = _mask_args(q, key_mask, bias)
    delta = torch.empty((b, h, nq), dtype=torch.float32, device=q.device)
    chunks = dict(D=d, D0=d0, D1=d1, D2=d2)
    meta = dict(**chunks, HAS_MASK=key_mask is not None, HAS_BIAS=bias is not None, EMULATE_BF16=_emulate_bf16(q))
    common = (
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
    )
    interp = _interpreting()
    with _device_guard(q):
        bm = INTERPRET_BLOCK_M if interp else 64
        _attn_bwd_delta[(triton.cdiv(nq, bm), b * h)](
            out, grad_out, delta, out.stride(0), out.stride(1), out.stride(2),
            grad_out.stride(0), grad_out.stride(1), grad_out.stride(2), h, nq, **chunks, BLOCK_M=bm,
        )
        kv_args = (
            q, k, v, grad_out, lse, delta, dk, dv, kmask, bias_t, *common,
            dk.stride(0), dk.stride(1), dk.stride(2), *bs, h, nq, nk, scale, scale * LOG2E,
        )
        q_args = (
            q, k, v, grad_out, lse, delta, dq, kmask, bias_t, *common,
            dq.stride(0), dq.stride(1), dq.stride(2), *bs, h, nq, nk, scale, scale * LOG2E,
        )
        if interp:
            blocks = dict(BLOCK_M=INTERPRET_BLOCK_M, BLOCK_N=INTERPRET_BLOCK_N)
            _attn_bwd_dkdv[(triton.cdiv(nk, INTERPRET_BLOCK_N), b * h)](*kv_args, **meta, **blocks)
            _attn_bwd_dq[(triton.cdiv(nq, INTERPRET_BLOCK_M), b * h)](*q_args, **meta, **blocks)
        else:
            _launch(_bwd_dkdv, lambda m: (triton.cdiv(nk, m["BLOCK_N"]), b * h), kv_args, meta)
            _launch(_bwd_dq, lambda m: (triton.cdiv(nq, m["BLOCK_M"]), b * h), q_args, meta)
    return dq, dk, dv
