"""The linked sub-layer's stream gradient from programs that own all n streams of a channel chunk
(``linked.LINK_MODE = "streams"``; not yet timed on a GPU).

The "add" pass (``dx_kernels.proj_dx_tma``) owns one stream's K stripe, so the post_res part of the
gradient, H_resᵀ g, has to be written by post_res_bwd and read back (4 + 4 units of [N, C] at n = 4),
and the fused norm's backward writes dh for it to read (1 + 1). A program of ``proj_dx_streams``
holds the tiles of every stream at the same channels, so it forms both in registers:

    (H_resᵀ g)_i = Σ_j H_res[j, i] g_j         g read once (post_res_bwd only reduces: post_res_bwd_red)
    h = Σ_j h_pre[j] x_j,  dh = rstd·dy·w − k·h (rstd, k per token from the norm's row sums; no norm:
                                                 dh = dy, the branch input's gradient)
    dx_i = c·x_i + (H_resᵀ g)_i + h_pre[i]·dh + dm·φ_iᵀ,   dφ_i += dmᵀ·x_i  (per-split partials)

Per sub-layer that drops 5 units of the default's 46 (``reports/kernels/traffic_floor.py``). bf16
streams only (φ and dm as bf16 hi + lo parts for "bf16x2", like the other passes); the launcher
falls back to "gather" elsewhere. Batched [n, ·, ·] MMAs, one per stream.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch as L
from .dx_kernels import _mma_acc  # acc + a·b, bf16 operands (fp32 on the interpreter); batched for 3-D


@triton.jit
def proj_dx_streams(x_ptr, g_ptr, dy_ptr, dx_ptr, phi_ptr, dm_ptr, c_ptr, hpre_ptr, hres_ptr, rk_ptr, w_ptr,
                    part_ptr, N, C, M, tok_per_split, phi_ld, phi_lo,
                    n: tl.constexpr, NP: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, MP: tl.constexpr,
                    LO: tl.constexpr, NORM: tl.constexpr, INTERP: tl.constexpr):
    # Program (cb, sp): channels [cb·BC, (cb+1)·BC) of every stream, tokens of split sp, BN at a time.
    # x, g, dx [N, n, C]; dy [N, C]; dm [N, M] fp32; c [N]; h_pre [N, n]; H_res [N, n, n] (fp32);
    # rk [N, 2] = (rstd, k) when NORM; φ as bf16 parts (row stride phi_ld, lo part at phi_lo);
    # writes dφ's partial part[sp, i·C + ch, :M].
    cb = tl.program_id(0)
    sp = tl.program_id(1)
    ch = cb * BC + tl.arange(0, BC)
    chm = ch < C
    s = tl.arange(0, NP)
    sm = s < n
    cols = tl.arange(0, MP)
    colm = cols < M
    pk = s[:, None, None] * C + ch[None, None, :]  # φ's rows (K index) of this chunk in every stream
    pmask = sm[:, None, None] & colm[None, :, None] & chm[None, None, :]
    ph = tl.load(phi_ptr + pk * phi_ld + cols[None, :, None], mask=pmask, other=0.0)  # [NP, MP, BC]
    pl = ph  # unused unless LO
    if LO:
        pl = tl.load(phi_ptr + phi_lo + pk * phi_ld + cols[None, :, None], mask=pmask, other=0.0)
    w = _norm_weight(w_ptr, ch, chm, BC, NORM)
    dphi = tl.zeros((NP, MP, BC), dtype=tl.float32)
    lo = sp * tok_per_split
    hi = tl.minimum(lo + tok_per_split, N)
    for t0 in range(lo, hi, BN):
        t = t0 + tl.arange(0, BN)
        tm = t < hi
        t64 = t.to(tl.int64)
        m2 = tm[:, None] & chm[None, :]
        st = sm[:, None] & tm[None, :]  # [NP, BN]
        m3 = st[:, :, None] & chm[None, None, :]
        off3 = (t64[None, :, None] * n + s[:, None, None]) * C + ch[None, None, :]  # [NP, BN, BC]
        x3 = tl.load(x_ptr + off3, mask=m3, other=0.0)
        xf = x3.to(tl.float32)
        hp = tl.load(hpre_ptr + t[None, :] * n + s[:, None], mask=st, other=0.0)  # h_pre as [NP, BN]
        dh = _branch_grad(dy_ptr, rk_ptr, w, hp[:, :, None] * xf, t, tm, t64, ch, m2, C, 0, NORM)
        c = tl.load(c_ptr + t, mask=tm, other=0.0)
        dv = c[None, :, None] * xf + hp[:, :, None] * dh[None, :, :]
        for j in tl.static_range(n):  # + (H_resᵀ g)_i, each g_j tile read once
            gj = tl.load(g_ptr + (t64[:, None] * n + j) * C + ch[None, :], mask=m2, other=0.0).to(tl.float32)
            hr = tl.load(hres_ptr + t[None, :] * (n * n) + j * n + s[:, None], mask=st, other=0.0)  # H_res[t, j, i]
            dv += hr[:, :, None] * gj[None, :, :]
        dm = tl.load(dm_ptr + t[:, None] * M + cols[None, :], mask=tm[:, None] & colm[None, :], other=0.0)
        dm_hi = dm.to(tl.bfloat16)
        dv = _mma_acc(tl.broadcast_to(dm_hi[None, :, :], (NP, BN, MP)), ph, dv, INTERP)
        dphi = _mma_acc(tl.broadcast_to(tl.trans(dm_hi)[None, :, :], (NP, MP, BN)), x3, dphi, INTERP)
        if LO:
            dm_lo = (dm - dm_hi.to(tl.float32)).to(tl.bfloat16)
            dv = _mma_acc(tl.broadcast_to(dm_lo[None, :, :], (NP, BN, MP)), ph, dv, INTERP)
            dv = _mma_acc(tl.broadcast_to(dm_hi[None, :, :], (NP, BN, MP)), pl, dv, INTERP)
            dphi = _mma_acc(tl.broadcast_to(tl.trans(dm_lo)[None, :, :], (NP, MP, BN)), x3, dphi, INTERP)
        tl.store(dx_ptr + off3, dv.to(dx_ptr.dtype.element_ty), mask=m3)
    tl.store(part_ptr + sp * (n * C) * M + pk * M + cols[None, :, None], dphi, mask=pmask)



@triton.jit
def proj_dx_streams_flat(x_ptr, g_ptr, dy_ptr, dx_ptr, phi_ptr, dm_ptr, c_ptr, hpre_ptr, hres_ptr, rk_ptr, w_ptr,
                         part_ptr, N, C, M, tok_per_split, phi_ld, phi_lo,
                         n: tl.constexpr, NP: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr,
                         MP: tl.constexpr, LO: tl.constexpr, NORM: tl.constexpr, INTERP: tl.constexpr):
    # proj_dx_streams with the tiles token-major, [BN, NP, BC], and every MMA one 2-D product over
    # the streams' columns side by side: dm [BN, MP] · φ [MP, NP·BC] and dmᵀ [MP, BN] · x [BN, NP·BC]
    # (instead of [NP, ·, ·] batched MMAs on a broadcast dm). Same arguments and results; kept beside
    # the batched form until the sweep (_DX_STREAMS, DX_STREAMS_FLAT) has timed both on a GPU.
    cb = tl.program_id(0)
    sp = tl.program_id(1)
    ch = cb * BC + tl.arange(0, BC)
    chm = ch < C
    s = tl.arange(0, NP)
    sm = s < n
    cols = tl.arange(0, MP)
    colm = cols < M
    kk = tl.reshape(s[:, None] * C + ch[None, :], (NP * BC,))  # K index of each flat column
    km = tl.reshape(sm[:, None] & chm[None, :], (NP * BC,))
    pmask = colm[:, None] & km[None, :]
    ph = tl.load(phi_ptr + kk[None, :] * phi_ld + cols[:, None], mask=pmask, other=0.0)  # [MP, NP·BC]
    pl = ph  # unused unless LO
    if LO:
        pl = tl.load(phi_ptr + phi_lo + kk[None, :] * phi_ld + cols[:, None], mask=pmask, other=0.0)
    w = _norm_weight(w_ptr, ch, chm, BC, NORM)
    dphi = tl.zeros((MP, NP * BC), dtype=tl.float32)
    lo = sp * tok_per_split
    hi = tl.minimum(lo + tok_per_split, N)
    for t0 in range(lo, hi, BN):
        t = t0 + tl.arange(0, BN)
        tm = t < hi
        t64 = t.to(tl.int64)
        m2 = tm[:, None] & chm[None, :]
        ts = tm[:, None] & sm[None, :]  # [BN, NP]
        m3 = ts[:, :, None] & chm[None, None, :]
        off3 = t64[:, None, None] * (n * C) + s[None, :, None] * C + ch[None, None, :]  # [BN, NP, BC]
        x3 = tl.load(x_ptr + off3, mask=m3, other=0.0)
        xf = x3.to(tl.float32)
        hp = tl.load(hpre_ptr + t[:, None] * n + s[None, :], mask=ts, other=0.0)  # [BN, NP]
        dh = _branch_grad(dy_ptr, rk_ptr, w, hp[:, :, None] * xf, t, tm, t64, ch, m2, C, 1, NORM)
        c = tl.load(c_ptr + t, mask=tm, other=0.0)
        dv = c[:, None, None] * xf + hp[:, :, None] * dh[:, None, :]
        for j in tl.static_range(n):  # + (H_resᵀ g)_i, each g_j tile read once
            gj = tl.load(g_ptr + (t64[:, None] * n + j) * C + ch[None, :], mask=m2, other=0.0).to(tl.float32)
            hr = tl.load(hres_ptr + t[:, None] * (n * n) + j * n + s[None, :], mask=ts, other=0.0)  # H_res[t, j, i]
            dv += hr[:, :, None] * gj[:, None, :]
        dm = tl.load(dm_ptr + t[:, None] * M + cols[None, :], mask=tm[:, None] & colm[None, :], other=0.0)
        dm_hi = dm.to(tl.bfloat16)
        x2 = tl.reshape(x3, (BN, NP * BC))
        mm = _mma_acc(dm_hi, ph, tl.zeros((BN, NP * BC), dtype=tl.float32), INTERP)
        dphi = _mma_acc(tl.trans(dm_hi), x2, dphi, INTERP)
        if LO:
            dm_lo = (dm - dm_hi.to(tl.float32)).to(tl.bfloat16)
            mm = _mma_acc(dm_lo, ph, mm, INTERP)
            mm = _mma_acc(dm_hi, pl, mm, INTERP)
            dphi = _mma_acc(tl.trans(dm_lo), x2, dphi, INTERP)
        dv += tl.reshape(mm, (BN, NP, BC))
        tl.store(dx_ptr + off3, dv.to(dx_ptr.dtype.element_ty), mask=m3)
    tl.store(part_ptr + sp * (n * C) * M + kk[None, :] * M + cols[:, None], dphi, mask=pmask)


@triton.jit
def _norm_weight(w_ptr, ch, chm, BC: tl.constexpr, NORM: tl.constexpr):
    # the norm weight's chunk in fp32 (zeros, unused, without the norm)
    w = tl.zeros((BC,), dtype=tl.float32)
    if NORM:
        w = tl.load(w_ptr + ch, mask=chm, other=0.0).to(tl.float32)
    return w


@triton.jit
def _branch_grad(dy_ptr, rk_ptr, w, hpx, t, tm, t64, ch, m2, C, AXIS: tl.constexpr, NORM: tl.constexpr):
    # the branch input's gradient dh [BN, BC]: dy, or through the fused norm rstd·dy·w − k·h with
    # h = Σ over the streams' axis AXIS of hpx = h_pre ⊙ x
    dh = tl.load(dy_ptr + t64[:, None] * C + ch[None, :], mask=m2, other=0.0).to(tl.float32)
    if NORM:
        rstd = tl.load(rk_ptr + t * 2, mask=tm, other=0.0)
        k = tl.load(rk_ptr + t * 2 + 1, mask=tm, other=0.0)
        dh = rstd[:, None] * dh * w[None, :] - k[:, None] * tl.sum(hpx, axis=AXIS)
    return dh


def streams_ok(x) -> bool:
    """Whether the "streams" dx pass runs for stream x [N, n, C] (bf16; elsewhere "gather" does it)."""
    return x.dtype == torch.bfloat16 and x.shape[0] > 0 and (x.is_cuda or L._interpreted())


def launch_dx_streams(x, phi, dm, c, g, h_res, h_pre, dy, rk, w, precision: str):
    """(dx [N, n, C] in x's dtype, dφ [K, M] fp32) of the linked sub-layer from x, g [N, n, C], the
    branch input's gradient dy [N, C] (the normalized input's, with ``rk`` = (rstd, k) [N, 2] and the
    norm weight ``w``; or the un-normalized input's, rk and w None), dm [N, M] and c [N]."""
    N, n, C = x.shape
    M = dm.shape[1]
    MP = L._p2(M, 16)
    p, ld, lo_off, _, lo = L._phi_parts(phi, x.view(N, n * C), precision, MP)
    bn, bc, tok, warps = L._DX_STREAMS
    bc = min(bc, L._p2(C, 16))
    tok = triton.cdiv(tok, bn) * bn
    splits = triton.cdiv(N, tok)
    dx = torch.empty_like(x)
    part = torch.empty(splits, n * C, M, device=x.device, dtype=torch.float32)
    norm = rk is not None
    kernel = proj_dx_streams_flat if L.DX_STREAMS_FLAT else proj_dx_streams
    kernel[(triton.cdiv(C, bc), splits)](
        x, g.contiguous(), dy.contiguous(), dx, p, dm.contiguous(), c.contiguous(), h_pre.float().contiguous(),
        h_res.float().contiguous(), rk if norm else c, w.contiguous() if norm else c, part, N, C, M, tok, ld, lo_off,
        n=n, NP=L._np(n), BN=bn, BC=bc, MP=MP, LO=lo, NORM=norm, INTERP=L._interpreted(), num_warps=warps)
    return dx, part.sum(0)
