"""Triton kernel of the linked sub-layer's backward (kernels/linked.py): the whole stream gradient.

    dx[t, j] = Σ_i H_res[t, i, j] g[t, i] + h_pre[t, j] d_in[t] + (dm[t] · φᵀ)[j] + c[t] x[t, j]

(g: gradient of the sub-layer's output stream, d_in: of the branch input, dm / c: of the projection
and of the RMS factor.) One program owns a channel chunk and a run of tokens; per token tile it loads
the n incoming gradient rows g[t, :, chunk] and d_in[t, chunk] once and writes all n output streams
from them, so every input byte is read once (a per-stream program would read g n times). dφ is not
reduced here: it is one GEMM (fused._dphi_gemm).

Measured on the H200 (reports/kernels/RESULTS.md, run 10): 541 µs ("bf16") / 777 µs ("bf16x2") at
C = 2048, 16k tokens — 27-38 % of copy, far from its 13-unit floor (≈ 205 µs). Two other layouts
were slower: (token, stream) rows with every term an MMA (run 11, 623 / 707 µs) and [tokens,
(stream, channel)] tiles re-reading g from L1 (run 12, 1.43 ms). This one is kept as the fastest.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .coef_kernels import _mma


@triton.jit
def linked_dx(x_ptr, phi_ptr, phi_lo_ptr, dm_ptr, c_ptr, g_ptr, hres_ptr, hpre_ptr, din_ptr, dx_ptr,
              N, C, M, tok_per_prog,
              n: tl.constexpr, NP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, MP: tl.constexpr,
              PREC: tl.constexpr, SPLIT: tl.constexpr, LO: tl.constexpr, INTERP: tl.constexpr):
    # SPLIT / LO / PREC: as coef_kernels.proj_bwd (bf16 stream: bf16 MMAs, with LO hi + lo parts of
    # dm and φ; fp32 stream: one dot at PREC).
    cb = tl.program_id(0)
    sp = tl.program_id(1)
    ch = cb * BK + tl.arange(0, BK)
    chm = ch < C
    cols = tl.arange(0, MP)
    colm = cols < M
    ii = tl.arange(0, NP)
    im = ii < n
    lo = sp * tok_per_prog
    hi = tl.minimum(lo + tok_per_prog, N)
    for t0 in range(lo, hi, BN):
        t = t0 + tl.arange(0, BN)
        tm = t < hi
        t64 = t.to(tl.int64)
        m2 = tm[:, None] & chm[None, :]
        dm = tl.load(dm_ptr + t[:, None] * M + cols[None, :], mask=tm[:, None] & colm[None, :], other=0.0)
        if SPLIT:
            dm_hi = dm.to(tl.bfloat16)
            if LO:
                dm_lo = (dm - dm_hi.to(tl.float32)).to(tl.bfloat16)
        c = tl.load(c_ptr + t, mask=tm, other=0.0)
        d_in = tl.load(din_ptr + t64[:, None] * C + ch[None, :], mask=m2, other=0.0).to(tl.float32)
        # g[t, i, chunk] for every incoming stream i: [BN, NP, BK], read once for all n outputs.
        g3 = tl.load(g_ptr + (t64[:, None, None] * n + ii[None, :, None]) * C + ch[None, None, :],
                     mask=tm[:, None, None] & im[None, :, None] & chm[None, None, :], other=0.0)
        for j in tl.static_range(n):
            k = j * C + ch
            xo = (t64[:, None] * n + j) * C + ch[None, :]
            v = tl.load(x_ptr + xo, mask=m2, other=0.0).to(tl.float32)
            po = k[None, :] * M + cols[:, None]  # φ[k, :]ᵀ as [MP, BK]
            pm = chm[None, :] & colm[:, None]
            pt = tl.load(phi_ptr + po, mask=pm, other=0.0)
            if SPLIT:
                dv = _mma(dm_hi, pt, INTERP)
                if LO:
                    dv += _mma(dm_lo, pt, INTERP) + _mma(dm_hi, tl.load(phi_lo_ptr + po, mask=pm, other=0.0), INTERP)
            else:
                dv = tl.dot(dm, pt, input_precision=PREC)
            hr = tl.load(hres_ptr + t[:, None] * (n * n) + ii[None, :] * n + j, mask=tm[:, None] & im[None, :], other=0.0)
            hp = tl.load(hpre_ptr + t * n + j, mask=tm, other=0.0)
            dv += tl.sum(hr[:, :, None] * g3.to(tl.float32), axis=1) + hp[:, None] * d_in + c[:, None] * v
            tl.store(dx_ptr + xo, dv.to(dx_ptr.dtype.element_ty), mask=m2)
