"""Triton kernel of the linked sub-layer's backward (kernels/linked.py): the whole stream gradient.

    dx[t, j] = Σ_i H_res[t, i, j] g[t, i] + h_pre[t, j] d_in[t] + (dm[t] · φᵀ)[j] + c[t] x[t, j]

(g: gradient of the sub-layer's output stream, d_in: of the branch input, dm / c: of the projection
and of the RMS factor.) Like ``stream_kernels.post_res_bwd_mma`` it works on rows (token, stream) of
the [N·n, C] stream matrix, so every term but c·x is one MMA on [rows, channels] tiles and each input
byte is read once:

    dx = Hbd·G + Pd·D + A·B + c ⊙ X,
    Hbd[(t,j), (t,i)] = H_res[t,i,j]           (block-diagonal, [R, R])
    Pd[(t,j), t]      = h_pre[t,j]              ([R, TP]; D = d_in rows)
    A[(t,j), (j,m)]   = dm[t,m]                 ([R, NP·MP]; B[(j,m), c] = φ[j·C + c, m])

A program owns one channel chunk (B loaded once) and a run of tokens. dφ is one GEMM (fused._dphi_gemm).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .coef_kernels import _mma
from .stream_kernels import _mma_any


@triton.jit
def linked_dx(x_ptr, phit_ptr, phit_lo_ptr, dm_ptr, c_ptr, g_ptr, hres_ptr, hpre_ptr, din_ptr, dx_ptr,
              N, C, M, tok_per_prog,
              n: tl.constexpr, BT: tl.constexpr, R: tl.constexpr, TP: tl.constexpr, MP: tl.constexpr,
              QP: tl.constexpr, BC: tl.constexpr, HILO: tl.constexpr, PREC: tl.constexpr,
              LO: tl.constexpr, INTERP: tl.constexpr):
    # phit: φ rearranged as [n, M, C] (B above, contiguous along channels); bf16 stream: bf16 (with
    # LO its hi / lo parts, A split likewise: ≈ fp32 products), fp32 stream: fp32 at PREC.
    # HILO: bf16 stream (coefficient matrices as hi + lo bf16 MMAs, as post_res_bwd_mma).
    cb = tl.program_id(0)
    sp = tl.program_id(1)
    ch = cb * BC + tl.arange(0, BC)
    chm = ch < C
    q = tl.arange(0, QP)
    qj = q // MP
    qm = q % MP
    qv = (qj < n) & (qm < M)
    bo = (qj[:, None] * M + qm[:, None]).to(tl.int64) * C + ch[None, :]
    bm = qv[:, None] & chm[None, :]
    b_hi = tl.load(phit_ptr + bo, mask=bm, other=0.0)
    if LO:
        b_lo = tl.load(phit_lo_ptr + bo, mask=bm, other=0.0)
    r = tl.arange(0, R)
    rs = r % n
    s = tl.arange(0, TP)
    same = (r[:, None] // n) == (r[None, :] // n)
    own = (r[:, None] // n) == s[None, :]
    lo = sp * tok_per_prog
    hi = tl.minimum(lo + tok_per_prog, N)
    for t0 in range(lo, hi, BT):
        rt = t0 + r // n
        rv = (r < BT * n) & (rt < hi)
        st = t0 + s
        sv = (s < BT) & (st < hi)
        hb = tl.load(hres_ptr + rt[:, None] * (n * n) + rs[None, :] * n + rs[:, None],
                     mask=same & rv[:, None] & rv[None, :], other=0.0)
        pd = tl.load(hpre_ptr + rt[:, None] * n + rs[:, None] + 0 * s[None, :],
                     mask=own & rv[:, None] & sv[None, :], other=0.0)
        a = tl.load(dm_ptr + rt[:, None] * M + qm[None, :],
                    mask=(qj[None, :] == rs[:, None]) & qv[None, :] & rv[:, None], other=0.0)
        c = tl.load(c_ptr + rt, mask=rv, other=0.0)
        ro = (t0 * n + r).to(tl.int64)[:, None] * C + ch[None, :]
        m2 = rv[:, None] & chm[None, :]
        g = tl.load(g_ptr + ro, mask=m2, other=0.0)
        x = tl.load(x_ptr + ro, mask=m2, other=0.0)
        d = tl.load(din_ptr + st.to(tl.int64)[:, None] * C + ch[None, :], mask=sv[:, None] & chm[None, :], other=0.0)
        dv = _mma_any(hb, g, HILO, INTERP) + _mma_any(pd, d, HILO, INTERP) + c[:, None] * x.to(tl.float32)
        if HILO:
            a_hi = a.to(tl.bfloat16)
            dv += _mma(a_hi, b_hi, INTERP)
            if LO:
                dv += _mma((a - a_hi.to(tl.float32)).to(tl.bfloat16), b_hi, INTERP) + _mma(a_hi, b_lo, INTERP)
        else:
            dv += tl.dot(a, b_hi, input_precision=PREC)
        tl.store(dx_ptr + ro, dv.to(dx_ptr.dtype.element_ty), mask=m2)
