"""The branch's RMSNorm fused into mHC's pre (forward) and its backward.

``pre_norm_fwd`` writes ``RMSNorm(Σ_j h_pre[j] x[j]) · w`` directly, so the branch input is never
written un-normalized and read back by a separate norm kernel; ``pre_norm_bwd`` recomputes the
aggregate h from x, forms the norm's input gradient dh, dH_pre = Σ_c dh·x_j and the weight's
gradient, and writes dh (the linked dx pass's d_in). Together they drop about 4 units of [N, C] per
sub-layer (docs/kernels.md, "Design notes"). Both need whole rows (the norm reduces over C), so a
program owns whole tokens: the row, padded to a power of two BCP, lives in registers.

h is kept in fp32 (the unfused path rounds it to the stream dtype before the norm); the reference
is ``mhc_repro.residual.mhc_ops.mhc_pre_linked`` with ``norm_weight``. The weight's gradient is
reduced per program (persistent programs, fixed token ranges) and summed by the launcher: no
atomics, deterministic.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _row_aggregate(x_ptr, h_ptr, t, N, C, c, cm, n: tl.constexpr, BT: tl.constexpr, BCP: tl.constexpr):
    # h [BT, BCP] = Σ_j h_pre[t, j] x[t, j, :] in fp32 (zero outside N x C)
    tm = t < N
    t64 = t.to(tl.int64)
    msk = tm[:, None] & cm[None, :]
    acc = tl.zeros((BT, BCP), dtype=tl.float32)
    for j in tl.static_range(n):
        hj = tl.load(h_ptr + t * n + j, mask=tm, other=0.0)
        xj = tl.load(x_ptr + (t64[:, None] * n + j) * C + c[None, :], mask=msk, other=0.0)
        acc += hj[:, None] * xj.to(tl.float32)
    return acc


@triton.jit
def pre_norm_fwd(x_ptr, h_ptr, w_ptr, out_ptr, N, C, eps, n: tl.constexpr, BT: tl.constexpr, BCP: tl.constexpr):
    eps = tl.cast(eps, tl.float32)  # Inductor passes a Python float as fp64 (a triton_op's launch)
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    c = tl.arange(0, BCP)
    cm = c < C
    acc = _row_aggregate(x_ptr, h_ptr, t, N, C, c, cm, n, BT, BCP)
    rstd = 1.0 / tl.sqrt(tl.sum(acc * acc, axis=1) / C + eps)
    w = tl.load(w_ptr + c, mask=cm, other=0.0).to(tl.float32)
    y = acc * rstd[:, None] * w[None, :]
    msk = (t < N)[:, None] & cm[None, :]
    tl.store(out_ptr + t.to(tl.int64)[:, None] * C + c[None, :], y.to(out_ptr.dtype.element_ty), mask=msk)


@triton.jit
def _bwd_rows(x_ptr, h_ptr, dy_ptr, t, hi, C, c, cm, j, n: tl.constexpr):
    # the rows of tokens t (< hi) in their stored dtypes: x [BT, NP, BCP], h_pre [BT, NP], dy [BT, BCP]
    tm = t < hi
    t64 = t.to(tl.int64)
    m2 = tm[:, None] & (j < n)[None, :]
    x3 = tl.load(x_ptr + (t64[:, None, None] * n + j[None, :, None]) * C + c[None, None, :],
                 mask=m2[:, :, None] & cm[None, None, :], other=0.0)
    hp = tl.load(h_ptr + t[:, None] * n + j[None, :], mask=m2, other=0.0)
    dy = tl.load(dy_ptr + t64[:, None] * C + c[None, :], mask=tm[:, None] & cm[None, :], other=0.0)
    return x3, hp, dy


@triton.jit
def pre_norm_bwd(x_ptr, h_ptr, w_ptr, dy_ptr, dh_ptr, dhp_ptr, dw_ptr, N, C, eps, tok_per_prog,
                 n: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BCP: tl.constexpr,
                 PREFETCH: tl.constexpr, STAGES: tl.constexpr = 0):
    # Program p owns tokens [p·tok_per_prog, (p+1)·tok_per_prog), BT at a time; writes dh [N, C]
    # (stream dtype), dH_pre [N, n] (fp32) and its partial of the weight's gradient dw_ptr[p, :C].
    # PREFETCH (0, 1, 2): how many steps ahead the rows are loaded (held in registers, so the loads
    # overlap this step's reductions). STAGES > 0 (PREFETCH then unused): tl.range(num_stages=STAGES)
    # instead, Triton's own pipelining of the loop's loads.
    eps = tl.cast(eps, tl.float32)  # Inductor passes a Python float as fp64: dw would turn fp64 in the loop
    pid = tl.program_id(0)
    c = tl.arange(0, BCP)
    cm = c < C
    j = tl.arange(0, NP)
    ar = tl.arange(0, BT)
    w = tl.load(w_ptr + c, mask=cm, other=0.0).to(tl.float32)
    dw = tl.zeros((BCP,), dtype=tl.float32)
    lo = pid * tok_per_prog
    hi = tl.minimum(lo + tok_per_prog, N)
    if STAGES > 0:
        for t0 in tl.range(lo, hi, BT, num_stages=STAGES):
            x3, hp, dy = _bwd_rows(x_ptr, h_ptr, dy_ptr, t0 + ar, hi, C, c, cm, j, n)
            dw = _bwd_step(x3, hp, dy, w, dw, t0 + ar, hi, C, c, cm, j, dh_ptr, dhp_ptr, eps, n)
    else:
        if PREFETCH >= 1:
            x3, hp, dy = _bwd_rows(x_ptr, h_ptr, dy_ptr, lo + ar, hi, C, c, cm, j, n)
        if PREFETCH == 2:
            x3b, hpb, dyb = _bwd_rows(x_ptr, h_ptr, dy_ptr, lo + BT + ar, hi, C, c, cm, j, n)
        for t0 in range(lo, hi, BT):
            t = t0 + ar
            if PREFETCH == 0:
                x3, hp, dy = _bwd_rows(x_ptr, h_ptr, dy_ptr, t, hi, C, c, cm, j, n)
            else:
                x3n, hpn, dyn = _bwd_rows(x_ptr, h_ptr, dy_ptr, t + PREFETCH * BT, hi, C, c, cm, j, n)
            dw = _bwd_step(x3, hp, dy, w, dw, t, hi, C, c, cm, j, dh_ptr, dhp_ptr, eps, n)
            if PREFETCH == 1:
                x3, hp, dy = x3n, hpn, dyn
            elif PREFETCH == 2:
                x3, hp, dy = x3b, hpb, dyb
                x3b, hpb, dyb = x3n, hpn, dyn
    tl.store(dw_ptr + pid * C + c, dw, mask=cm)


@triton.jit
def _bwd_step(x3, hp, dy, w, dw, t, hi, C, c, cm, j, dh_ptr, dhp_ptr, eps, n: tl.constexpr):
    # One step of BT tokens; returns dw + this step's Σ_t dy·ĥ. Every row reduction comes from one
    # round: A_j = Σ_c gy·x_j and B_j = Σ_c h·x_j (h = Σ_j p_j x_j, gy = dy·w) give Σh² = Σ_j p_j B_j,
    # Σ gy·h = Σ_j p_j A_j and dH_pre_j = Σ_c dh·x_j = rstd·A_j − k·B_j (dh = rstd·gy − k·h,
    # k = rstd³ Σ gy·h / C): no reduction waits on another.
    xf = x3.to(tl.float32)
    h = tl.sum(hp[:, :, None] * xf, axis=1)
    dyf = dy.to(tl.float32)
    gy = dyf * w[None, :]
    a = tl.sum(gy[:, None, :] * xf, axis=2)
    b = tl.sum(h[:, None, :] * xf, axis=2)
    rstd = 1.0 / tl.sqrt(tl.sum(hp * b, axis=1) / C + eps)
    k = rstd * rstd * rstd * tl.sum(hp * a, axis=1) / C
    tm = t < hi
    dh = rstd[:, None] * gy - k[:, None] * h
    tl.store(dh_ptr + t.to(tl.int64)[:, None] * C + c[None, :], dh.to(dh_ptr.dtype.element_ty),
             mask=tm[:, None] & cm[None, :])
    tl.store(dhp_ptr + t[:, None] * n + j[None, :], rstd[:, None] * a - k[:, None] * b,
             mask=tm[:, None] & (j < n)[None, :])
    return dw + tl.sum(dyf * h * rstd[:, None], axis=0)
