"""The branch's RMSNorm fused into mHC's pre (forward) and its backward (not yet timed on a GPU).

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
def pre_norm_bwd(x_ptr, h_ptr, w_ptr, dy_ptr, dh_ptr, dhp_ptr, dw_ptr, N, C, eps, tok_per_prog,
                 n: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BCP: tl.constexpr):
    # Program p owns tokens [p·tok_per_prog, (p+1)·tok_per_prog), BT at a time; writes dh [N, C]
    # (stream dtype), dH_pre [N, n] (fp32) and its partial of the weight's gradient dw_ptr[p, :C].
    pid = tl.program_id(0)
    c = tl.arange(0, BCP)
    cm = c < C
    j = tl.arange(0, NP)
    w = tl.load(w_ptr + c, mask=cm, other=0.0).to(tl.float32)
    dw = tl.zeros((BCP,), dtype=tl.float32)
    lo = pid * tok_per_prog
    hi = tl.minimum(lo + tok_per_prog, N)
    for t0 in range(lo, hi, BT):
        t = t0 + tl.arange(0, BT)
        tm = t < hi
        t64 = t.to(tl.int64)
        msk = tm[:, None] & cm[None, :]
        m2 = tm[:, None] & (j < n)[None, :]
        m3 = m2[:, :, None] & cm[None, None, :]
        x3 = tl.load(x_ptr + (t64[:, None, None] * n + j[None, :, None]) * C + c[None, None, :], mask=m3,
                     other=0.0).to(tl.float32)  # [BT, NP, BCP]: the tokens' rows, read once
        hp = tl.load(h_ptr + t[:, None] * n + j[None, :], mask=m2, other=0.0)
        h = tl.sum(hp[:, :, None] * x3, axis=1)
        rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=1) / C + eps)
        hn = h * rstd[:, None]
        dy = tl.load(dy_ptr + t64[:, None] * C + c[None, :], mask=msk, other=0.0).to(tl.float32)
        dw += tl.sum(dy * hn, axis=0)
        gy = dy * w[None, :]
        dh = rstd[:, None] * (gy - hn * (tl.sum(gy * hn, axis=1) / C)[:, None])
        tl.store(dh_ptr + t64[:, None] * C + c[None, :], dh.to(dh_ptr.dtype.element_ty), mask=msk)
        tl.store(dhp_ptr + t[:, None] * n + j[None, :], tl.sum(x3 * dh[:, None, :], axis=2), mask=m2)
    tl.store(dw_ptr + pid * C + c, dw, mask=cm)
