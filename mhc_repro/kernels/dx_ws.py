"""The linked dx pass with every in-loop load a tensor descriptor, so that Triton's Hopper automatic
warp specialization (``tl.range(warp_specialize=True)``, Triton >= 3.5) can give the loads to a
producer warp group and the MMAs and elementwise work to consumer warp groups. Experimental: not
selected by the launchers; ``benchmarks/ws_probe.py`` times it against ``dx_kernels.proj_dx_tma``.

Two modes (``GATHER``):
- "add" (False): what ``proj_dx_tma`` computes with LINK = 2, ACC, DPHI = 2 — per [BN, BK] tile of
  one stream, dx = g + h_pre ⊗ d_in + c·x + dm·φᵀ with g = H_resᵀ g already formed by post_res_bwd;
- "gather" (True): a program owns channels [ch0, ch0 + BK) of all n <= 4 streams, loads the n tiles
  of g once and forms H_resᵀ g itself, so post_res's backward need not write it (post_res_bwd_red):
  4 units of [N, C] less per sub-layer at n = 4 than "add". The per-tile weighted sum over streams is
  what made the one-stream-per-program versions lose (RESULTS.md runs 62, 66); warp specialization is
  meant to hide it behind the loads.

Why descriptors everywhere: Triton 3.6's Hopper warp specialization fails to compile a loop that
mixes pointer loads with ``tl.dot`` (triton-lang/triton#9728) and cannot capture tensors loaded
before the loop (φ's tiles are re-loaded per token tile; they come from L2). Per-token scalars come
as one coefficient tile ``co`` [N, RP] per token tile (columns 0..n-1 = h_pre, n + j·n + i =
H_res[:, j, i] for gather; RP a power of two >= 4 for TMA's 16-byte rows), read out column by column
with masked row sums.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .dx_kernels import _mma_acc


@triton.jit
def proj_dx_ws(x_desc, g_desc, din_desc, dx_desc, phi_desc, dm_desc, c_desc, co_desc, part_ptr,
               N, K, M, C, tok_per_split,
               BN: tl.constexpr, BK: tl.constexpr, MP: tl.constexpr, RP: tl.constexpr, n: tl.constexpr, GATHER: tl.constexpr,
               LO: tl.constexpr, STAGES: tl.constexpr, WS: tl.constexpr, INTERP: tl.constexpr):
    cb = tl.program_id(0)
    sp = tl.program_id(1)
    lo = sp * tok_per_split
    hi = tl.minimum(lo + tok_per_split, N)
    ch0 = cb * BK  # gather: channel offset in every stream; add: K offset (k0), split below
    d0 = tl.zeros((MP, BK), dtype=tl.float32)
    if GATHER:
        d1 = tl.zeros((MP, BK), dtype=tl.float32)
        d2 = tl.zeros((MP, BK), dtype=tl.float32)
        d3 = tl.zeros((MP, BK), dtype=tl.float32)
    for t0 in tl.range(lo, hi, BN, num_stages=STAGES, warp_specialize=WS):
        dm = dm_desc.load([t0, 0])  # [BN, MP] fp32, zero-padded past M (and past N: descriptor)
        dm_hi = dm.to(tl.bfloat16)
        dm_lo = (dm - dm_hi.to(tl.float32)).to(tl.bfloat16)
        c = c_desc.load([t0])
        if GATHER:
            din = din_desc.load([t0, ch0]).to(tl.float32)
            g0 = g_desc.load([t0, ch0]).to(tl.float32)
            g1 = g0
            g2 = g0
            g3 = g0
            if n > 1:
                g1 = g_desc.load([t0, C + ch0]).to(tl.float32)
            if n > 2:
                g2 = g_desc.load([t0, 2 * C + ch0]).to(tl.float32)
            if n > 3:
                g3 = g_desc.load([t0, 3 * C + ch0]).to(tl.float32)
            d0 = _out_tile(x_desc, dx_desc, phi_desc, co_desc, t0, 0, ch0, C, din, c, dm_hi, dm_lo,
                           g0, g1, g2, g3, d0, RP, BN, MP, n, True, LO, INTERP)
            if n > 1:
                d1 = _out_tile(x_desc, dx_desc, phi_desc, co_desc, t0, 1, ch0, C, din, c, dm_hi, dm_lo,
                               g0, g1, g2, g3, d1, RP, BN, MP, n, True, LO, INTERP)
            if n > 2:
                d2 = _out_tile(x_desc, dx_desc, phi_desc, co_desc, t0, 2, ch0, C, din, c, dm_hi, dm_lo,
                               g0, g1, g2, g3, d2, RP, BN, MP, n, True, LO, INTERP)
            if n > 3:
                d3 = _out_tile(x_desc, dx_desc, phi_desc, co_desc, t0, 3, ch0, C, din, c, dm_hi, dm_lo,
                               g0, g1, g2, g3, d3, RP, BN, MP, n, True, LO, INTERP)
        else:
            j0 = ch0 // C
            d0 = _out_tile(x_desc, dx_desc, phi_desc, co_desc, t0, j0, ch0 - j0 * C, C, din_desc, c, dm_hi, dm_lo,
                           g_desc, g_desc, g_desc, g_desc, d0, RP, BN, MP, n, False, LO, INTERP)
    # dφ partials stored inline: the same store in a helper function fails Triton 3.6's warp specialization
    cols = tl.arange(0, MP)
    k = ch0 + tl.arange(0, BK)
    pm = (k < K)[None, :] & (cols < M)[:, None]
    tl.store(part_ptr + sp * K * M + k[None, :] * M + cols[:, None], d0, mask=pm)
    if GATHER:
        if n > 1:
            tl.store(part_ptr + sp * K * M + (k + C)[None, :] * M + cols[:, None], d1, mask=pm)
        if n > 2:
            tl.store(part_ptr + sp * K * M + (k + 2 * C)[None, :] * M + cols[:, None], d2, mask=pm)
        if n > 3:
            tl.store(part_ptr + sp * K * M + (k + 3 * C)[None, :] * M + cols[:, None], d3, mask=pm)


@triton.jit
def _col(co, q, RP: tl.constexpr):
    # column q of a [BN, RP] coefficient tile (a masked row sum: Triton has no column gather)
    return tl.sum(tl.where(tl.arange(0, RP)[None, :] == q, co, 0.0), 1)


@triton.jit
def _out_tile(x_desc, dx_desc, phi_desc, co_desc, t0, i, ch, C, din, c, dm_hi, dm_lo, g0, g1, g2, g3, dphi,
              RP: tl.constexpr, BN: tl.constexpr, MP: tl.constexpr, n: tl.constexpr, GATHER: tl.constexpr,
              LO: tl.constexpr, INTERP: tl.constexpr):
    # stream i's tile at channels ch.. of tokens t0..: writes dx, returns dphi + dmᵀ·x (proj_dx_tma's
    # DPHI = 2 products, dm as bf16 hi + lo). GATHER: din and g0..g3 are loaded tiles (fp32);
    # otherwise din and g0 are the descriptors, loaded here (proj_dx_tma's order of the adds).
    k0 = i * C + ch
    pt = tl.trans(phi_desc.load([k0, 0]))  # [MP, BK] bf16, from L2 (see the module docstring)
    pt_lo = pt
    if LO:
        pt_lo = tl.trans(phi_desc.load([k0, MP]))
    co = co_desc.load([t0, 0])  # [BN, RP]
    xt = x_desc.load([t0, k0])
    dphi = _mma_acc(tl.trans(dm_hi), xt, dphi, INTERP)
    if LO:
        dphi = _mma_acc(tl.trans(dm_lo), xt, dphi, INTERP)
    acc = c[:, None] * xt.to(tl.float32)
    if GATHER:  # + h_pre ⊗ d_in + H_resᵀ g (column n + j·n + i = H_res[:, j, i])
        acc += _col(co, i, RP)[:, None] * din
        acc += _col(co, n + i, RP)[:, None] * g0
        if n > 1:
            acc += _col(co, n + n + i, RP)[:, None] * g1
        if n > 2:
            acc += _col(co, n + 2 * n + i, RP)[:, None] * g2
        if n > 3:
            acc += _col(co, n + 3 * n + i, RP)[:, None] * g3
    else:
        acc += _col(co, i, RP)[:, None] * din.load([t0, ch]).to(tl.float32)
        acc += g0.load([t0, k0]).to(tl.float32)
    acc = _mma_acc(dm_hi, pt, acc, INTERP)
    if LO:
        acc = _mma_acc(dm_lo, pt, acc, INTERP)
        acc = _mma_acc(dm_hi, pt_lo, acc, INTERP)
    dx_desc.store([t0, k0], acc.to(tl.bfloat16))
    return dphi


def launch_dx_ws(x, p, lo_off: int, lo: bool, dm, c, dx, link, gather: bool, tiles=(64, 128, 1024, 2, 4),
                 ws: bool = True):
    """dx [N, K] (written) and dφ's per-split partials [splits, K, M] (returned) for the linked pass:
    ``link = (g [N, n, C], h_res [N, n, n], h_pre [N, n], d_in [N, C])`` with g = H_resᵀ g ("add") or
    the post op's incoming gradient ("gather"). ``p``: φ's bf16 parts [K, MP or 2·MP] (hi | lo at
    ``lo_off`` = MP, as launch._phi_parts writes them). ``tiles`` = (BN, BK, tokens per split, loop
    stages, warps); C % BK == 0."""
    import torch
    from triton.tools.tensor_descriptor import TensorDescriptor

    from .launch import _cdiv, _interpreted, _k, _p2

    bn, bk, tok, stages, warps = tiles
    g, h_res, h_pre, d_in = link
    N, K = x.shape
    n, C = g.shape[1], g.shape[2]
    M, MP = dm.shape[1], _p2(dm.shape[1], 16)
    if C % bk or lo_off != MP or (gather and n > 4):
        raise ValueError(f"launch_dx_ws: C={C} % BK={bk}, lo_off={lo_off} (MP={MP}), n={n} (gather: <= 4)")
    dmp = torch.zeros(N, MP, device=x.device, dtype=torch.float32)
    dmp[:, :M] = dm
    RP = _p2(n + n * n if gather else n, 4)  # 16-byte rows for TMA
    co = torch.zeros(N, RP, device=x.device, dtype=torch.float32)
    co[:, :n] = h_pre
    if gather:
        co[:, n:n + n * n] = h_res.reshape(N, n * n)
    tok = _cdiv(tok, bn) * bn
    splits = _cdiv(N, tok)
    part = torch.empty(splits, K, M, device=x.device, dtype=torch.float32)

    def desc(t, box):
        return TensorDescriptor.from_tensor(t, box)

    _k(proj_dx_ws)[((C if gather else K) // bk, splits)](
        desc(x, [bn, bk]), desc(g.contiguous().view(N, K), [bn, bk]), desc(d_in.contiguous(), [bn, bk]),
        desc(dx, [bn, bk]), desc(p, [bk, MP]), desc(dmp, [bn, MP]), desc(c.float().contiguous(), [bn]),
        desc(co, [bn, RP]), part, N, K, M, C, tok,
        BN=bn, BK=bk, MP=MP, RP=RP, n=n, GATHER=gather, LO=lo, STAGES=stages, WS=ws, INTERP=_interpreted(),
        num_warps=warps)
    return part
