"""The projection backward's dx pass with TMA tiles (Hopper tensor descriptors).

``proj_dx_tma`` computes what ``coef_kernels.proj_bwd`` computes on a bf16 stream — dx = dm·φᵀ + c·x,
plus, for the linked sub-layer ("add"), g + h_pre ⊗ d_in, and (``DPHI``, the default) dφ's per-split
partials — but moves the [BN, BK] stream tiles (x, g, d_in, dx) with tensor descriptors instead of
pointer tensors.
Why: the pointer version keeps a [BN, BK] int64 offset tile and the loaded tiles in registers
(254 per thread, 2 blocks per SM; ncu run 20: 41 % of stalls waiting on global loads) and runs at
~64 % of copy in the step, the one mHC kernel far from it (RESULTS.md, session 8). Descriptor loads
go through shared memory asynchronously (the loop pipeliner overlaps them with the MMAs), and the
store is an asynchronous bulk copy. Measured (run 44, H200, C = 2048): 4 % faster than the pointer
kernel with identical results: address arithmetic was not what kept the pointer kernel from copy
speed.

Contract (checked by ``launch._dx_tma_ok``): C % BK == 0 (a K tile lies in one stream), K and C
multiples of 8 and 16-byte aligned bases (TMA's stride / address rules), tokens per split a multiple
of BN (so a tile never crosses into the next split; the last one is clipped at N by the descriptor).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .coef_kernels import _mma


@triton.jit
def proj_dx_tma(x_desc, g_desc, din_desc, dx_desc, phi_ptr, dm_ptr, c_ptr, hpre_ptr, part_ptr,
                N, K, M, C, tok_per_split, phi_ld, phi_lo,
                BN: tl.constexpr, BK: tl.constexpr, MP: tl.constexpr, LO: tl.constexpr,
                LINK: tl.constexpr, n: tl.constexpr, INTERP: tl.constexpr, ACC: tl.constexpr,
                LOOP_STAGES: tl.constexpr = 0, DPHI: tl.constexpr = 0):
    # LINK: 0 = dx = dm·φᵀ + c·x (three ops); 2 = + g + h_pre ⊗ d_in (linked "add", g = H_resᵀ g).
    # LO ("bf16x2"): dm and φ as bf16 hi + lo parts, three MMAs (≈ fp32 products); else one MMA.
    # ACC: the elementwise terms first, the MMAs then accumulate into them (one live [BN, BK] fp32
    # tile instead of one per MMA: compiled for sm_90 the linked bf16x2 pass drops from 210 to 168
    # registers, 2 -> 3 blocks per SM; other rounding order than proj_bwd; the default since run 46).
    # Otherwise the same products in the same order as proj_bwd (bit-identical results).
    # LOOP_STAGES: 0 = a plain loop, which Triton 3.6 software-pipelines only for the dm load: the x, g
    # and d_in tiles are single-buffered (compiled for sm_90: 64.5 KB of shared memory at the default
    # tile whatever num_stages); > 0 = tl.range(num_stages=LOOP_STAGES) (at 3: 2 buffers per tile,
    # 145 KB, 1 block per SM). Same results either way. 2 (the default since run 55) keeps one buffer
    # per tile yet ran 10-12 % faster than the plain loop (runs 52, 54).
    # DPHI: also dφ = xᵀ·dm for this K tile from the x tiles the pass loads anyway (MMAs per tile, dm
    # as the dφ GEMM's bf16 parts), accumulated over the split's tokens in registers and written as the
    # split's partial part[sp, k, :M]; the launcher sums the partials (no atomics). 1: acc [BK, MP] +=
    # xᵀ·dm (x transposed as the A operand; 1.6-1.7x slower, runs 52, 54); 2: acc [MP, BK] += dmᵀ·x (x
    # as the B operand as stored; the default since run 55). Saves the dφ GEMM's second read of the
    # stream (4 units of [N, C] per sub-layer at n = 4).
    kb = tl.program_id(0)
    sp = tl.program_id(1)
    k0 = kb * BK
    k = k0 + tl.arange(0, BK)
    cols = tl.arange(0, MP)
    cm = cols < M
    pm = (k < K)[:, None] & cm[None, :]
    pp = k[:, None] * phi_ld + cols[None, :]
    pt = tl.trans(tl.load(phi_ptr + pp, mask=pm, other=0.0))  # [MP, BK] bf16
    pt_lo = pt  # unused unless LO
    if LO:
        pt_lo = tl.trans(tl.load(phi_ptr + phi_lo + pp, mask=pm, other=0.0))
    j0 = k0 // C  # the stream this K tile lies in (C % BK == 0)
    ch0 = k0 - j0 * C
    lo = sp * tok_per_split
    hi = tl.minimum(lo + tok_per_split, N)
    if DPHI == 2:
        dphi = tl.zeros((MP, BK), dtype=tl.float32)
    else:
        dphi = tl.zeros((BK, MP), dtype=tl.float32)  # unused unless DPHI
    if LOOP_STAGES == 0:
        for t0 in range(lo, hi, BN):
            dphi = _dx_tile(t0, hi, x_desc, g_desc, din_desc, dx_desc, pt, pt_lo, dm_ptr, c_ptr, hpre_ptr, M,
                            cols, cm, k0, ch0, j0, dphi, BN, LO, LINK, n, INTERP, ACC, DPHI)
    else:
        for t0 in tl.range(lo, hi, BN, num_stages=LOOP_STAGES):
            dphi = _dx_tile(t0, hi, x_desc, g_desc, din_desc, dx_desc, pt, pt_lo, dm_ptr, c_ptr, hpre_ptr, M,
                            cols, cm, k0, ch0, j0, dphi, BN, LO, LINK, n, INTERP, ACC, DPHI)
    if DPHI == 1:
        tl.store(part_ptr + sp * K * M + k[:, None] * M + cols[None, :], dphi, mask=pm)
    elif DPHI == 2:
        tl.store(part_ptr + sp * K * M + k[None, :] * M + cols[:, None], dphi, mask=(k < K)[None, :] & cm[:, None])


@triton.jit
def _dx_tile(t0, hi, x_desc, g_desc, din_desc, dx_desc, pt, pt_lo, dm_ptr, c_ptr, hpre_ptr, M, cols, cm, k0, ch0, j0,
             dphi, BN: tl.constexpr, LO: tl.constexpr, LINK: tl.constexpr, n: tl.constexpr, INTERP: tl.constexpr,
             ACC: tl.constexpr, DPHI: tl.constexpr):
    # one [BN, BK] tile of dx at tokens t0.., columns k0..; returns dphi (+ this tile's xᵀ·dm if DPHI).
    # dm's lo part is formed where each use needs it: hoisted once it compiles (Triton 3.6, sm_90)
    # to other register counts than the kernels runs 52-56 timed (kernel_resources.py).
    t = t0 + tl.arange(0, BN)
    tm = t < hi
    dm = tl.load(dm_ptr + t[:, None] * M + cols[None, :], mask=tm[:, None] & cm[None, :], other=0.0)
    dm_hi = dm.to(tl.bfloat16)
    c = tl.load(c_ptr + t, mask=tm, other=0.0)
    xt = x_desc.load([t0, k0])  # [BN, BK] bf16; zero past N (the descriptor clips), dm zero past hi
    if DPHI == 1:  # the dφ GEMM's products: bf16 x times dm's bf16 hi (+ lo for LO) part, fp32 sums
        dphi = _mma_acc(tl.trans(xt), dm_hi, dphi, INTERP)
        if LO:
            dphi = _mma_acc(tl.trans(xt), (dm - dm_hi.to(tl.float32)).to(tl.bfloat16), dphi, INTERP)
    elif DPHI == 2:
        dphi = _mma_acc(tl.trans(dm_hi), xt, dphi, INTERP)
        if LO:
            dphi = _mma_acc(tl.trans((dm - dm_hi.to(tl.float32)).to(tl.bfloat16)), xt, dphi, INTERP)
    if ACC:
        dv = c[:, None] * xt.to(tl.float32)
        if LINK == 2:
            dv = _add_link(dv, g_desc, din_desc, hpre_ptr, t, tm, t0, k0, ch0, j0, n)
        dv = _mma_acc(dm_hi, pt, dv, INTERP)
        if LO:
            dm_lo = (dm - dm_hi.to(tl.float32)).to(tl.bfloat16)
            dv = _mma_acc(dm_lo, pt, dv, INTERP)
            dv = _mma_acc(dm_hi, pt_lo, dv, INTERP)
    else:
        if LO:  # same products, same order as proj_bwd
            dm_lo = (dm - dm_hi.to(tl.float32)).to(tl.bfloat16)
            dv = _mma(dm_hi, pt, INTERP) + _mma(dm_lo, pt, INTERP) + _mma(dm_hi, pt_lo, INTERP)
        else:
            dv = _mma(dm_hi, pt, INTERP)
        dv += c[:, None] * xt.to(tl.float32)
        if LINK == 2:
            dv = _add_link(dv, g_desc, din_desc, hpre_ptr, t, tm, t0, k0, ch0, j0, n)
    dx_desc.store([t0, k0], dv.to(tl.bfloat16))  # bf16 stream (launch._dx_tma_ok)
    return dphi


@triton.jit
def _add_link(dv, g_desc, din_desc, hpre_ptr, t, tm, t0, k0, ch0, j0, n: tl.constexpr):
    # dv + h_pre ⊗ d_in, then + g (= H_resᵀ g): proj_bwd's order of the adds
    hp = tl.load(hpre_ptr + t * n + j0, mask=tm, other=0.0)
    dv += hp[:, None] * din_desc.load([t0, ch0]).to(tl.float32)
    return dv + g_desc.load([t0, k0]).to(tl.float32)


@triton.jit
def _mma_acc(a, b, acc, INTERP: tl.constexpr):
    # acc + a·b with the MMA accumulating into acc (bf16 operands; fp32 on the interpreter, see _mma)
    if INTERP:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)
