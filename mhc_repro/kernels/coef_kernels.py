"""Triton kernels for the mHC coefficients (PAPER.md §1, §5 kernels 1–3).

Forward: ``proj_fwd`` reads the stream ``v = x_flat [N, K=nC]`` once and produces both the projection
``m = v·φ [N, M=n²+2n]`` (tensor cores, tf32 by default, fp32 accumulate) and the sum of squares;
``coef_fwd`` is the small epilogue (1/r, α, bias, sigmoid, 2·sigmoid, exp, Sinkhorn in registers;
``SHIFT``: exp of the H_res logits minus their column max, ``residual.sinkhorn_shift``).

Backward: ``coef_bwd`` recomputes the Sinkhorn iterations on-chip, keeping only the 2·t_max
denominator vectors (n floats each) in a per-token scratch row, and runs back through all of them —
the exact gradient of the unrolled loop. It emits ``dm = ∂L/∂m`` (and its bf16 parts for the dφ
GEMM), the per-token RMS term and per-program partial sums of dbias and dα (``sum_rows`` reduces
them). ``proj_bwd`` makes one pass over ``v``: ``dv = dm·φᵀ + c·v`` and a deterministic per-split
partial of ``dφ = vᵀ·dm`` (summed over splits by the caller, no atomics). ``phi_split`` writes φ's
bf16 parts (hi | lo) once per call for both projections.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _mma(a, b, INTERP: tl.constexpr):
    # bf16 x bf16 -> fp32 MMA. The CPU interpreter mishandles bf16 dot operands; there the same
    # products are formed in fp32 (bf16 products are exact in fp32).
    if INTERP:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def phi_split(phi_ptr, out_ptr, K, M, ld, lo_off, MP: tl.constexpr, BK: tl.constexpr, LO: tl.constexpr):
    # φ [K, M] fp32 -> its bf16 parts in one buffer of row stride ld: hi in columns [0, MP), with LO
    # lo = bf16(φ - hi) in [lo_off, lo_off + MP); columns M..MP zero (the MMA operands' padding).
    k = tl.program_id(0) * BK + tl.arange(0, BK)
    cols = tl.arange(0, MP)
    km = (k < K)[:, None]
    p = tl.load(phi_ptr + k[:, None] * M + cols[None, :], mask=km & (cols < M)[None, :], other=0.0)
    hi = p.to(tl.bfloat16)
    o = out_ptr + k[:, None].to(tl.int64) * ld + cols[None, :]
    tl.store(o, hi, mask=km)
    if LO:
        tl.store(o + lo_off, (p - hi.to(tl.float32)).to(tl.bfloat16), mask=km)


@triton.jit
def proj_fwd(x_ptr, phi_ptr, m_ptr, ss_ptr, N, K, M, k_per_split, phi_ld, phi_lo,
             BN: tl.constexpr, BK: tl.constexpr, MP: tl.constexpr, PREC: tl.constexpr,
             SPLIT: tl.constexpr, LO: tl.constexpr, INTERP: tl.constexpr, SS: tl.constexpr,
             MERGED: tl.constexpr):
    # Grid (token blocks, K splits): split s covers K range [s·k_per_split, (s+1)·k_per_split) and
    # writes its partial m / Σv² to slot s of [splits, N, M] / [splits, N] (summed by the caller:
    # deterministic, no atomics). More programs in flight when N alone does not fill the device.
    # SS, how Σv² is formed: "reg" from the loaded tile in registers; "reload" from a second (L2-hit)
    # load, so the first feeds only the MMAs; "diag" (bf16 stream only) as the diagonal of v·vᵀ
    # accumulated on the tensor cores (exact bf16 products, fp32 sums) — the tile then feeds nothing
    # but MMAs, which lets it stay in shared memory, at BN² extra MMA work per tile.
    # SPLIT (bf16 stream): bf16 MMAs straight from the loaded tiles (no fp32 staging of v); with LO
    # φ = φ_hi + φ_lo (two bf16 parts, two MMAs: ~16-bit-mantissa products), without LO φ is
    # rounded to bf16 (one MMA, issue 6's "bf16 inputs, fp32 accumulate").
    # MERGED (with LO): φ_hi and φ_lo side by side in phi_ptr ([K, 2·MP], zero-padded): one MMA of
    # twice the width per K tile instead of two, the stream tile read once from shared memory for
    # both; the two column halves are summed at the end.
    # Otherwise (fp32 stream): one fp32 dot at PREC (tf32 on tensor cores by default).
    pid = tl.program_id(0)
    sp = tl.program_id(1)
    t = pid * BN + tl.arange(0, BN)
    tm = t < N
    cols = tl.arange(0, MP)
    cm = cols < M
    if MERGED:
        cols2 = tl.arange(0, 2 * MP)
        acc2 = tl.zeros((BN, 2 * MP), dtype=tl.float32)
    else:
        acc = tl.zeros((BN, MP), dtype=tl.float32)
    ss = tl.zeros((BN,), dtype=tl.float32)
    if SS == "diag":
        gram = tl.zeros((BN, BN), dtype=tl.float32)
    k_lo = sp * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    for k0 in range(k_lo, k_hi, BK):
        k = k0 + tl.arange(0, BK)
        km = k < k_hi
        xo = t[:, None].to(tl.int64) * K + k[None, :]
        xm = tm[:, None] & km[None, :]
        v = tl.load(x_ptr + xo, mask=xm, other=0.0)
        if SS == "diag":
            gram += _mma(v, tl.trans(v), INTERP)
        elif SS == "reload":
            vs = tl.load(x_ptr + xo, mask=xm, other=0.0).to(tl.float32)
            ss += tl.sum(vs * vs, axis=1)
        else:
            vf = v.to(tl.float32)
            ss += tl.sum(vf * vf, axis=1)
        po = k[:, None] * phi_ld + cols[None, :]
        pm = km[:, None] & cm[None, :]
        if MERGED:
            p2 = tl.load(phi_ptr + k[:, None] * phi_ld + cols2[None, :], mask=km[:, None], other=0.0)
            acc2 += _mma(v, p2, INTERP)
        elif SPLIT:
            acc += _mma(v, tl.load(phi_ptr + po, mask=pm, other=0.0), INTERP)
            if LO:
                acc += _mma(v, tl.load(phi_ptr + phi_lo + po, mask=pm, other=0.0), INTERP)
        else:
            acc += tl.dot(v.to(tl.float32), tl.load(phi_ptr + po, mask=pm, other=0.0), input_precision=PREC)
    if MERGED:
        acc = tl.sum(tl.reshape(acc2, (BN, 2, MP)), axis=1)
    if SS == "diag":
        eye = tl.arange(0, BN)[:, None] == tl.arange(0, BN)[None, :]
        ss = tl.sum(tl.where(eye, gram, 0.0), axis=1)
    out = sp.to(tl.int64) * N
    tl.store(m_ptr + (out + t[:, None]) * M + cols[None, :], acc, mask=tm[:, None] & cm[None, :])
    tl.store(ss_ptr + out + t, ss, mask=tm)


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _res_exp(z, m3, SHIFT: tl.constexpr):
    # exp of the H_res logits [BT, NP(i), NP(j)], exactly 0 outside m3. SHIFT (residual.sinkhorn_shift):
    # exp(z - c_j), c_j the max over the real rows i of column j (the first Sinkhorn step normalises
    # columns, so the shift cancels up to eps; no fp32 overflow, column sums >= 1 against eps).
    if SHIFT:
        c = tl.max(tl.where(m3, z, float("-inf")), axis=1)  # -inf where a column has no real entry
        z = tl.where(m3, z - c[:, None, :], 0.0)  # padded lanes: exp(0), never exp(z + inf)
    return tl.where(m3, tl.exp(z), 0.0)


@triton.jit
def coef_fwd(m_ptr, ss_ptr, alpha_ptr, bias_ptr, hpre_ptr, hpost_ptr, hres_ptr, r_ptr,
             N, inv_k, rms_eps, eps, t_max,
             n: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, SHIFT: tl.constexpr):
    # Inductor passes Python floats as fp64 (a triton_op's launch): computed in fp32 as in eager
    inv_k, rms_eps, eps = tl.cast(inv_k, tl.float32), tl.cast(rms_eps, tl.float32), tl.cast(eps, tl.float32)
    M = n * n + 2 * n
    pid = tl.program_id(0)
    t = pid * BT + tl.arange(0, BT)
    tm = t < N
    r = tl.sqrt(tl.load(ss_ptr + t, mask=tm, other=0.0) * inv_k + rms_eps)
    tl.store(r_ptr + t, r, mask=tm)
    a_pre = tl.load(alpha_ptr + 0)
    a_post = tl.load(alpha_ptr + 1)
    a_res = tl.load(alpha_ptr + 2)
    # pre / post: [BT, NP]
    j = tl.arange(0, NP)
    jm = j < n
    m2 = tm[:, None] & jm[None, :]
    base = m_ptr + t[:, None] * M + j[None, :]
    z = a_pre * tl.load(base, mask=m2, other=0.0) / r[:, None] + tl.load(bias_ptr + j, mask=jm, other=0.0)[None, :]
    tl.store(hpre_ptr + t[:, None] * n + j[None, :], _sigmoid(z) + eps, mask=m2)
    z = a_post * tl.load(base + n, mask=m2, other=0.0) / r[:, None] + tl.load(bias_ptr + n + j, mask=jm, other=0.0)[None, :]
    tl.store(hpost_ptr + t[:, None] * n + j[None, :], 2.0 * _sigmoid(z), mask=m2)
    # res: [BT, NP(i), NP(j)], Sinkhorn in registers; padded entries stay exactly 0.
    ii = tl.arange(0, NP)[None, :, None]
    jj = tl.arange(0, NP)[None, None, :]
    m3 = tm[:, None, None] & (ii < n) & (jj < n)
    off = ii * n + jj
    z = a_res * tl.load(m_ptr + t[:, None, None] * M + 2 * n + off, mask=m3, other=0.0) / r[:, None, None]
    z += tl.load(bias_ptr + 2 * n + off, mask=(ii < n) & (jj < n), other=0.0)
    h = _res_exp(z, m3, SHIFT)
    for _ in range(t_max):
        h = h / (tl.sum(h, axis=1)[:, None, :] + eps)  # columns
        h = h / (tl.sum(h, axis=2)[:, :, None] + eps)  # rows
    tl.store(hres_ptr + t[:, None, None] * (n * n) + off, h, mask=m3)


@triton.jit
def sum_rows(part_ptr, a_ptr, b_ptr, R, W, SPLIT, BR: tl.constexpr, WP: tl.constexpr):
    # Column sums of part [R, W] (fp32), fixed order: columns [0, SPLIT) to a, [SPLIT, W) to b.
    cols = tl.arange(0, WP)
    acc = tl.zeros((WP,), dtype=tl.float32)
    for r0 in range(0, R, BR):
        r = r0 + tl.arange(0, BR)
        acc += tl.sum(tl.load(part_ptr + r[:, None] * W + cols[None, :],
                              mask=(r < R)[:, None] & (cols < W)[None, :], other=0.0), axis=0)
    tl.store(a_ptr + cols, acc, mask=cols < SPLIT)
    tl.store(b_ptr + tl.where(cols >= SPLIT, cols - SPLIT, 0), acc, mask=(cols >= SPLIT) & (cols < W))


@triton.jit
def _store_parts(ptr, offs, v, mask, M, PARTS: tl.constexpr):
    hi = v.to(tl.bfloat16)
    tl.store(ptr + offs, hi, mask=mask)
    if PARTS == 2:
        tl.store(ptr + offs + M, (v - hi.to(tl.float32)).to(tl.bfloat16), mask=mask)


@triton.jit
def coef_bwd(m_ptr, r_ptr, alpha_ptr, bias_ptr, gpre_ptr, gpost_ptr, gres_ptr, scr_ptr,
             part_ptr, dm_ptr, c_ptr, dmp_ptr,
             N, inv_k, eps, t_max,
             n: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, PARTS: tl.constexpr,
             SHIFT: tl.constexpr):
    # part_ptr: this program's row of [programs, M + 3] partial sums over its tokens — dbias (= Σ dh~)
    # in columns [0, M), dα in [M, M + 3) — summed by the caller (deterministic; a per-token [N, M]
    # buffer summed over N by torch took ~10 µs per reduction, run 38).
    # PARTS: also dm's bf16 parts for the dφ GEMM in dmp_ptr, [N, PARTS·M]: hi, then (PARTS = 2) lo.
    # SHIFT: as coef_fwd; the column max is a constant here (d exp(z - c)/dz = exp(z - c)), as in
    # residual.sinkhorn's backward.
    M = n * n + 2 * n
    pid = tl.program_id(0)
    t = pid * BT + tl.arange(0, BT)
    tm = t < N
    r = tl.load(r_ptr + t, mask=tm, other=1.0)
    a_pre = tl.load(alpha_ptr + 0)
    a_post = tl.load(alpha_ptr + 1)
    a_res = tl.load(alpha_ptr + 2)
    j = tl.arange(0, NP)
    jm = j < n
    m2 = tm[:, None] & jm[None, :]
    base = m_ptr + t[:, None] * M + j[None, :]
    # pre: h = sigmoid(z) + eps
    mp = tl.load(base, mask=m2, other=0.0)
    s = _sigmoid(a_pre * mp / r[:, None] + tl.load(bias_ptr + j, mask=jm, other=0.0)[None, :])
    d_pre = tl.load(gpre_ptr + t[:, None] * n + j[None, :], mask=m2, other=0.0) * s * (1.0 - s)
    # post: h = 2 sigmoid(z)
    mq = tl.load(base + n, mask=m2, other=0.0)
    s = _sigmoid(a_post * mq / r[:, None] + tl.load(bias_ptr + n + j, mask=jm, other=0.0)[None, :])
    d_post = tl.load(gpost_ptr + t[:, None] * n + j[None, :], mask=m2, other=0.0) * 2.0 * s * (1.0 - s)
    # res: recompute Sinkhorn, keeping the denominators in this program's scratch rows.
    ii = tl.arange(0, NP)[None, :, None]
    jj = tl.arange(0, NP)[None, None, :]
    m3 = tm[:, None, None] & (ii < n) & (jj < n)
    off = ii * n + jj
    mr = tl.load(m_ptr + t[:, None, None] * M + 2 * n + off, mask=m3, other=0.0)
    z = a_res * mr / r[:, None, None]
    z += tl.load(bias_ptr + 2 * n + off, mask=(ii < n) & (jj < n), other=0.0)
    h0 = _res_exp(z, m3, SHIFT)
    h = h0
    srow = scr_ptr + t.to(tl.int64)[:, None] * (2 * t_max * NP) + j[None, :]
    for k in range(t_max):
        sc = tl.sum(h, axis=1) + eps  # [BT, NP] indexed by column
        tl.store(srow + (2 * k) * NP, sc)
        h = h / sc[:, None, :]
        sr = tl.sum(h, axis=2) + eps  # [BT, NP] indexed by row
        tl.store(srow + (2 * k + 1) * NP, sr)
        h = h / sr[:, :, None]
    tl.debug_barrier()
    g = tl.load(gres_ptr + t[:, None, None] * (n * n) + off, mask=m3, other=0.0)
    y = h
    for kk in range(t_max):
        k = t_max - 1 - kk
        sr = tl.load(srow + (2 * k + 1) * NP)
        g = tl.where(m3, (g - tl.sum(g * y, axis=2)[:, :, None]) / sr[:, :, None], 0.0)
        y = y * sr[:, :, None]  # input of the row step = output of the column step
        sc = tl.load(srow + (2 * k) * NP)
        g = tl.where(m3, (g - tl.sum(g * y, axis=1)[:, None, :]) / sc[:, None, :], 0.0)
        y = y * sc[:, None, :]
    d_res = g * h0
    # dm = α dh~ / r, the 1/r term: dr = -Σ α m dh~ / r², c = dr / (K r); partial sums of dh~ and dα.
    ob = t[:, None] * M + j[None, :]
    o3 = t[:, None, None] * M + 2 * n + off
    dm_pre = a_pre * d_pre / r[:, None]
    dm_post = a_post * d_post / r[:, None]
    dm_res = a_res * d_res / r[:, None, None]
    tl.store(dm_ptr + ob, dm_pre, mask=m2)
    tl.store(dm_ptr + ob + n, dm_post, mask=m2)
    tl.store(dm_ptr + o3, dm_res, mask=m3)
    if PARTS > 0:
        _store_parts(dmp_ptr, t[:, None] * (PARTS * M) + j[None, :], dm_pre, m2, M, PARTS)
        _store_parts(dmp_ptr, t[:, None] * (PARTS * M) + n + j[None, :], dm_post, m2, M, PARTS)
        _store_parts(dmp_ptr, t[:, None, None] * (PARTS * M) + 2 * n + off, dm_res, m3, M, PARTS)
    p_pre = tl.sum(mp * d_pre, axis=1) / r
    p_post = tl.sum(mq * d_post, axis=1) / r
    p_res = tl.sum(tl.sum(mr * d_res, axis=2), axis=1) / r
    row = part_ptr + pid * (M + 3)
    jm1 = j < n
    tl.store(row + j, tl.sum(d_pre, axis=0), mask=jm1)  # masked tokens carry zero gradients
    tl.store(row + n + j, tl.sum(d_post, axis=0), mask=jm1)
    i2 = tl.arange(0, NP)[:, None]
    j2 = tl.arange(0, NP)[None, :]
    tl.store(row + 2 * n + i2 * n + j2, tl.sum(tl.where(m3, d_res, 0.0), axis=0), mask=(i2 < n) & (j2 < n))
    tl.store(row + M, tl.sum(p_pre, axis=0))
    tl.store(row + M + 1, tl.sum(p_post, axis=0))
    tl.store(row + M + 2, tl.sum(p_res, axis=0))
    dr = -(a_pre * p_pre + a_post * p_post + a_res * p_res) / r
    tl.store(c_ptr + t, dr * inv_k / r, mask=tm)


@triton.jit
def proj_bwd(x_ptr, phi_ptr, dm_ptr, c_ptr, dx_ptr, dphi_ptr, N, K, M, tok_per_split, phi_ld, phi_lo,
             g_ptr, hres_ptr, hpre_ptr, din_ptr, C,
             BN: tl.constexpr, BK: tl.constexpr, MP: tl.constexpr, PREC: tl.constexpr,
             SPLIT: tl.constexpr, LO: tl.constexpr, INTERP: tl.constexpr, RELOAD: tl.constexpr,
             TRANS: tl.constexpr, LINK: tl.constexpr, n: tl.constexpr, DPHI: tl.constexpr,
             ALIGNED: tl.constexpr):
    # LINK (the linked sub-layer, kernels.linked): dx also gets the other two stream-gradient parts,
    # so the whole stream gradient is written once. Column k of the flat stream is stream k // C,
    # channel k % C. LINK=1 ("gather"): + H_resᵀ g + h_pre ⊗ d_in (g: the gradient of the sub-layer's
    # output stream, each g row read n times); LINK=2 ("add"): + g + h_pre ⊗ d_in where g is already
    # H_resᵀ g (written by post_res_bwd), read once at the stream tile's own offsets.
    # ALIGNED (C % BK == 0): a K tile lies inside one stream, so the coefficients are per-token
    # vectors; otherwise each column's stream is looked up (k // C), a slow gather.
    # DPHI=False: dx only (dφ is then a separate GEMM, launch.launch_proj_bwd).
    # TRANS: accumulate dφᵀ = dmᵀ·v ([MP, BK]; the stream tile is the MMA's B operand as loaded)
    # instead of dφ = vᵀ·dm ([BK, MP]; needs the big tile transposed); stored transposed at the end.
    kb = tl.program_id(0)
    sp = tl.program_id(1)
    k = kb * BK + tl.arange(0, BK)
    km = k < K
    cols = tl.arange(0, MP)
    cm = cols < M
    po = k[:, None] * M + cols[None, :]
    pm = km[:, None] & cm[None, :]
    pp = k[:, None] * phi_ld + cols[None, :]  # φ's rows (parts at offsets 0 and phi_lo, see launch._phi_parts)
    pt = tl.trans(tl.load(phi_ptr + pp, mask=pm, other=0.0))  # [MP, BK]
    if SPLIT and LO:
        pt_lo = tl.trans(tl.load(phi_ptr + phi_lo + pp, mask=pm, other=0.0))
    if TRANS:
        acc = tl.zeros((MP, BK), dtype=tl.float32)
    else:
        acc = tl.zeros((BK, MP), dtype=tl.float32)
    lo = sp * tok_per_split
    hi = tl.minimum(lo + tok_per_split, N)
    for t0 in range(lo, hi, BN):
        t = t0 + tl.arange(0, BN)
        tm = t < hi
        xo = t[:, None].to(tl.int64) * K + k[None, :]
        xm = tm[:, None] & km[None, :]
        v = tl.load(x_ptr + xo, mask=xm, other=0.0)
        dm = tl.load(dm_ptr + t[:, None] * M + cols[None, :], mask=tm[:, None] & cm[None, :], other=0.0)
        c = tl.load(c_ptr + t, mask=tm, other=0.0)
        if SPLIT and LO:
            # bf16 MMAs with hi/lo splits of the fp32 operands (dm, φ): ~16-bit-mantissa products.
            dm_hi = dm.to(tl.bfloat16)
            dm_lo = (dm - dm_hi.to(tl.float32)).to(tl.bfloat16)
            # Measured slower and removed: dm's hi|lo joined into one MMA against (φ_hi, φ_lo, φ_hi, 0)
            # rows (254 -> 213 registers, 2x slower, run 30, code at 09452cf); dm·φᵀ as fp32 outer
            # products on the CUDA cores (3.8x slower, run 31, code at dfb3216).
            dv = _mma(dm_hi, pt, INTERP) + _mma(dm_lo, pt, INTERP) + _mma(dm_hi, pt_lo, INTERP)
            if DPHI and TRANS:
                acc += _mma(tl.trans(dm_hi), v, INTERP) + _mma(tl.trans(dm_lo), v, INTERP)
            elif DPHI:
                vt = tl.trans(v)
                acc += _mma(vt, dm_hi, INTERP) + _mma(vt, dm_lo, INTERP)
        elif SPLIT:
            # bf16 operands (dm and φ rounded once), fp32 accumulate: one MMA each.
            dm_hi = dm.to(tl.bfloat16)
            dv = _mma(dm_hi, pt, INTERP)
            if DPHI and TRANS:
                acc += _mma(tl.trans(dm_hi), v, INTERP)
            elif DPHI:
                acc += _mma(tl.trans(v), dm_hi, INTERP)
        else:
            dv = tl.dot(dm, pt, input_precision=PREC)
            if DPHI and TRANS:
                acc += tl.dot(tl.trans(dm), v.to(tl.float32), input_precision=PREC)
            elif DPHI:
                acc += tl.dot(tl.trans(v), dm, input_precision=PREC)
        if RELOAD:
            dv += c[:, None] * tl.load(x_ptr + xo, mask=xm, other=0.0).to(tl.float32)
        else:
            dv += c[:, None] * v.to(tl.float32)
        if LINK:
            t64 = t.to(tl.int64)[:, None]
            if ALIGNED:
                j0 = (kb * BK) // C
                ch = k - j0 * C
                hp = tl.load(hpre_ptr + t * n + j0, mask=tm, other=0.0)[:, None]
            else:
                js = k // C
                ch = k % C
                hp = tl.load(hpre_ptr + t[:, None] * n + js[None, :], mask=xm, other=0.0)
            dv += hp * tl.load(din_ptr + t64 * C + ch[None, :], mask=xm, other=0.0).to(tl.float32)
            if LINK == 2:
                dv += tl.load(g_ptr + xo, mask=xm, other=0.0).to(tl.float32)
            else:
                for i in tl.static_range(n):
                    if ALIGNED:
                        hr = tl.load(hres_ptr + t * (n * n) + i * n + j0, mask=tm, other=0.0)[:, None]
                    else:
                        hr = tl.load(hres_ptr + t[:, None] * (n * n) + i * n + js[None, :], mask=xm, other=0.0)
                    gi = tl.load(g_ptr + (t64 * n + i) * C + ch[None, :], mask=xm, other=0.0)
                    dv += hr * gi.to(tl.float32)
        tl.store(dx_ptr + xo, dv.to(dx_ptr.dtype.element_ty), mask=xm)
    if DPHI and TRANS:
        tl.store(dphi_ptr + sp.to(tl.int64) * K * M + k[None, :] * M + cols[:, None], acc,
                 mask=km[None, :] & cm[:, None])
    elif DPHI:
        tl.store(dphi_ptr + sp.to(tl.int64) * K * M + po, acc, mask=pm)

