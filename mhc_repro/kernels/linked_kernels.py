"""Triton kernel of the linked sub-layer's backward (kernels/linked.py): the whole stream gradient.

    dx[t, j] = Σ_i H_res[t, i, j] g[t, i] + h_pre[t, j] d_in[t] + (dm[t] · φᵀ)[j] + c[t] x[t, j]

(g: gradient of the sub-layer's output stream, d_in: of the branch input, dm / c: of the projection
and of the RMS factor.) A program owns one channel chunk [c0, c0 + BK) of every stream and a run of
tokens. Its tiles are [tokens, (stream j, channel)] (W = NP·BK columns), so the projection term is one
MMA, dm [BN, MP] · B [MP, W] with B[m, (j, c)] = φ[j·C + c, m] loaded once per program, and every
other term is elementwise on the same tile. The n stream rows of g and the row of d_in that a token
needs are re-read per output stream from L1 within the tile, so each byte comes from DRAM once.
dφ is one GEMM (fused._dphi_gemm).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .coef_kernels import _mma


@triton.jit
def linked_dx(x_ptr, phit_ptr, phit_lo_ptr, dm_ptr, c_ptr, g_ptr, hres_ptr, hpre_ptr, din_ptr, dx_ptr,
              N, C, M, tok_per_prog,
              n: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, W: tl.constexpr, MP: tl.constexpr,
              PREC: tl.constexpr, SPLIT: tl.constexpr, LO: tl.constexpr, INTERP: tl.constexpr):
    # phit: φ as [n, M, C] (B's rows contiguous along channels). SPLIT (bf16 stream): bf16 MMAs, with
    # LO dm and φ as hi + lo parts (≈ fp32 products); fp32 stream: one dot at PREC.
    cb = tl.program_id(0)
    sp = tl.program_id(1)
    w = tl.arange(0, W)
    wj = w // BK
    wc = cb * BK + w % BK
    wm = (wj < n) & (wc < C)
    cols = tl.arange(0, MP)
    colm = cols < M
    bo = (wj[None, :] * M + cols[:, None]).to(tl.int64) * C + wc[None, :]
    bm = colm[:, None] & wm[None, :]
    b_hi = tl.load(phit_ptr + bo, mask=bm, other=0.0)
    if LO:
        b_lo = tl.load(phit_lo_ptr + bo, mask=bm, other=0.0)
    lo = sp * tok_per_prog
    hi = tl.minimum(lo + tok_per_prog, N)
    for t0 in range(lo, hi, BN):
        t = t0 + tl.arange(0, BN)
        tm = t < hi
        t64 = t.to(tl.int64)[:, None]
        m2 = tm[:, None] & wm[None, :]
        dm = tl.load(dm_ptr + t[:, None] * M + cols[None, :], mask=tm[:, None] & colm[None, :], other=0.0)
        if SPLIT:
            dm_hi = dm.to(tl.bfloat16)
            dv = _mma(dm_hi, b_hi, INTERP)
            if LO:
                dv += _mma((dm - dm_hi.to(tl.float32)).to(tl.bfloat16), b_hi, INTERP) + _mma(dm_hi, b_lo, INTERP)
        else:
            dv = tl.dot(dm, b_hi, input_precision=PREC)
        xo = (t64 * n + wj[None, :]) * C + wc[None, :]
        c = tl.load(c_ptr + t, mask=tm, other=0.0)
        dv += c[:, None] * tl.load(x_ptr + xo, mask=m2, other=0.0).to(tl.float32)
        hp = tl.load(hpre_ptr + t[:, None] * n + wj[None, :], mask=m2, other=0.0)
        dv += hp * tl.load(din_ptr + t64 * C + wc[None, :], mask=m2, other=0.0).to(tl.float32)
        for i in tl.static_range(n):
            hr = tl.load(hres_ptr + t[:, None] * (n * n) + i * n + wj[None, :], mask=m2, other=0.0)
            gi = tl.load(g_ptr + (t64 * n + i) * C + wc[None, :], mask=m2, other=0.0)
            dv += hr * gi.to(tl.float32)
        tl.store(dx_ptr + xo, dv.to(dx_ptr.dtype.element_ty), mask=m2)
