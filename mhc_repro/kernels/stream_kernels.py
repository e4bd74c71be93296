"""Triton kernels that apply the mHC coefficients to the stream (PAPER.md §5 kernels 4–5).

Layouts: x [N, n, C], f / branch input [N, C], h_pre / h_post [N, n], h_res [N, n, n] (fp32), all
contiguous. Arithmetic in fp32, outputs in the stream dtype (as the reference does).

Bytes per token (elements of C, forward): pre reads nC, writes C; post_res reads (n+1)C, writes nC.
The backward kernels own whole tokens (loop over C inside the program) so the per-token reductions
dH_res = Σ_c g xᵀ, dH_post = Σ_c g f, dH_pre = Σ_c x d_in are plain register sums: no atomics and
bit-for-bit deterministic.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def pre_fwd(x_ptr, h_ptr, out_ptr, N, C, n: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    tm = t < N
    msk = tm[:, None] & (c < C)[None, :]
    t64 = t.to(tl.int64)
    acc = tl.zeros((BT, BC), dtype=tl.float32)
    for j in tl.static_range(n):
        hj = tl.load(h_ptr + t * n + j, mask=tm, other=0.0)
        xj = tl.load(x_ptr + (t64[:, None] * n + j) * C + c[None, :], mask=msk, other=0.0)
        acc += hj[:, None] * xj.to(tl.float32)
    tl.store(out_ptr + t64[:, None] * C + c[None, :], acc.to(out_ptr.dtype.element_ty), mask=msk)


@triton.jit
def post_res_fwd(x_ptr, f_ptr, hp_ptr, hr_ptr, out_ptr, N, C,
                 n: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    tm = t < N
    cm = c < C
    msk = tm[:, None] & cm[None, :]
    t64 = t.to(tl.int64)
    i = tl.arange(0, NP)
    m2 = tm[:, None] & (i < n)[None, :]
    acc = tl.zeros((BT, NP, BC), dtype=tl.float32)
    for j in tl.static_range(n):
        xj = tl.load(x_ptr + (t64[:, None] * n + j) * C + c[None, :], mask=msk, other=0.0).to(tl.float32)
        hcol = tl.load(hr_ptr + t[:, None] * (n * n) + i[None, :] * n + j, mask=m2, other=0.0)
        acc += hcol[:, :, None] * xj[:, None, :]
    hp = tl.load(hp_ptr + t[:, None] * n + i[None, :], mask=m2, other=0.0)
    f = tl.load(f_ptr + t64[:, None] * C + c[None, :], mask=msk, other=0.0).to(tl.float32)
    acc += hp[:, :, None] * f[:, None, :]
    o = (t64[:, None, None] * n + i[None, :, None]) * C + c[None, None, :]
    tl.store(out_ptr + o, acc.to(out_ptr.dtype.element_ty), mask=m2[:, :, None] & cm[None, None, :])


@triton.jit
def _post_res_bwd_chunk(x_ptr, f_ptr, hp_ptr, hr_ptr, g_ptr, dx_ptr, df_ptr, t, c0, N, C, sgt, sgs,
                        n: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """One [BT tokens, BC channels] chunk: stores dx = H_resᵀ g and df = Σ_i H_post[i] g[i], returns
    this chunk's parts of dH_res [BT, NP(i), NP(j)] and dH_post [BT, NP]. g is read through its token
    and stream strides (sgt, sgs): a stream-broadcast g (stride 0) needs no copy."""
    tm = t < N
    t64 = t.to(tl.int64)
    j = tl.arange(0, NP)
    m2 = tm[:, None] & (j < n)[None, :]
    i3 = tl.arange(0, NP)[None, :, None]
    c = c0 + tl.arange(0, BC)
    cm = c < C
    msk = tm[:, None] & cm[None, :]
    o3 = (t64[:, None, None] * n + j[None, :, None]) * C + c[None, None, :]
    m3 = m2[:, :, None] & cm[None, None, :]
    x3 = tl.load(x_ptr + o3, mask=m3, other=0.0).to(tl.float32)  # [token, j, c]
    f = tl.load(f_ptr + t64[:, None] * C + c[None, :], mask=msk, other=0.0).to(tl.float32)
    dx = tl.zeros((BT, NP, BC), dtype=tl.float32)
    df = tl.zeros((BT, BC), dtype=tl.float32)
    dh = tl.zeros((BT, NP, NP), dtype=tl.float32)
    dhp = tl.zeros((BT, NP), dtype=tl.float32)
    for i in tl.static_range(n):
        gi = tl.load(g_ptr + t64[:, None] * sgt + i * sgs + c[None, :], mask=msk, other=0.0).to(tl.float32)
        hrow = tl.load(hr_ptr + t[:, None] * (n * n) + i * n + j[None, :], mask=m2, other=0.0)
        dx += hrow[:, :, None] * gi[:, None, :]
        df += tl.load(hp_ptr + t * n + i, mask=tm, other=0.0)[:, None] * gi
        part = tl.sum(x3 * gi[:, None, :], axis=2)  # [token, j]
        dh += tl.where(i3 == i, part[:, None, :], 0.0)
        dhp += tl.where(j[None, :] == i, tl.sum(gi * f, axis=1)[:, None], 0.0)
    tl.store(dx_ptr + o3, dx.to(dx_ptr.dtype.element_ty), mask=m3)
    tl.store(df_ptr + t64[:, None] * C + c[None, :], df.to(df_ptr.dtype.element_ty), mask=msk)
    return dh, dhp


@triton.jit
def _store_dh(dhp_ptr, dhr_ptr, t, N, dh, dhp, n: tl.constexpr, NP: tl.constexpr):
    tm = t < N
    j = tl.arange(0, NP)
    i3 = tl.arange(0, NP)[None, :, None]
    jj = tl.arange(0, NP)[None, None, :]
    tl.store(dhp_ptr + t[:, None] * n + j[None, :], dhp, mask=tm[:, None] & (j < n)[None, :])
    tl.store(dhr_ptr + t[:, None, None] * (n * n) + i3 * n + jj, dh,
             mask=tm[:, None, None] & (i3 < n) & (jj < n))


@triton.jit
def post_res_bwd(x_ptr, f_ptr, hp_ptr, hr_ptr, g_ptr, dx_ptr, df_ptr, dhp_ptr, dhr_ptr, N, C, sgt, sgs,
                 n: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    # Token-owning programs loop over C: the per-token reductions stay in registers.
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    dh = tl.zeros((BT, NP, NP), dtype=tl.float32)  # [token, i, j]
    dhp = tl.zeros((BT, NP), dtype=tl.float32)
    for c0 in range(0, C, BC):
        pdh, pdhp = _post_res_bwd_chunk(x_ptr, f_ptr, hp_ptr, hr_ptr, g_ptr, dx_ptr, df_ptr, t, c0, N, C,
                                        sgt, sgs, n, NP, BT, BC)
        dh += pdh
        dhp += pdhp
    _store_dh(dhp_ptr, dhr_ptr, t, N, dh, dhp, n, NP)


@triton.jit
def post_res_bwd_split(x_ptr, f_ptr, hp_ptr, hr_ptr, g_ptr, dx_ptr, df_ptr, dhp_ptr, dhr_ptr, N, C,
                       sgt, sgs, n: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    # 2-D grid (tokens, C chunks), no loop: each program writes its chunk's partial reductions to
    # slot program_id(1) of [chunks, N, n(, n)]; the caller sums the slots (deterministic, no atomics).
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    ch = tl.program_id(1)
    dh, dhp = _post_res_bwd_chunk(x_ptr, f_ptr, hp_ptr, hr_ptr, g_ptr, dx_ptr, df_ptr, t, ch * BC, N, C,
                                  sgt, sgs, n, NP, BT, BC)
    o = ch.to(tl.int64) * N
    _store_dh(dhp_ptr + o * n, dhr_ptr + o * (n * n), t, N, dh, dhp, n, NP)


@triton.jit
def _mma_any(a, b, HILO: tl.constexpr, INTERP: tl.constexpr):
    # a: fp32 coefficients, b: stream tile. bf16 stream (HILO): a = a_hi + a_lo as two bf16 MMAs
    # (~16-bit products, fp32 accumulate). fp32 stream: "tf32x3" (three tf32 MMAs, ~fp32 products);
    # "ieee" runs without tensor cores: 899 µs per call at C = 1280, 8k tokens in the 3B training
    # step (run 69), ~6x its bytes at copy speed. The interpreter mishandles bf16 dot operands and
    # knows no tf32, so there everything is fp32.
    if INTERP:
        return tl.dot(a, b.to(tl.float32), input_precision="ieee")
    elif not HILO:
        return tl.dot(a, b.to(tl.float32), input_precision="tf32x3")
    else:
        a_hi = a.to(tl.bfloat16)
        a_lo = (a - a_hi.to(tl.float32)).to(tl.bfloat16)
        return tl.dot(a_hi, b) + tl.dot(a_lo, b)


@triton.jit
def _mma_tt(a, b, HILO: tl.constexpr, INTERP: tl.constexpr):
    # a·bᵀ of two stream tiles (bf16: exact products in fp32, fp32 accumulate; fp32: "tf32x3", see
    # _mma_any).
    if INTERP:
        return tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)), input_precision="ieee")
    elif not HILO:
        return tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)), input_precision="tf32x3")
    else:
        return tl.dot(a, tl.trans(b))


@triton.jit
def post_res_bwd_mma(x_ptr, f_ptr, hp_ptr, hr_ptr, g_ptr, dx_ptr, df_ptr, dhp_ptr, dhr_ptr, N, C, sgt, sgs,
                     n: tl.constexpr, BT: tl.constexpr, R: tl.constexpr, TP: tl.constexpr, BC: tl.constexpr,
                     HILO: tl.constexpr, INTERP: tl.constexpr, WRITE_DX: tl.constexpr):
    # BT tokens = R rows (token, stream) of the [N·n, C] stream matrix (R = pow2 >= max(16, BT·n),
    # TP = pow2 >= max(16, BT) token slots). Per C chunk everything is an MMA on [R, BC] tiles, so the
    # reductions over C ride on the MMA's K dimension instead of cross-lane sums:
    #   dx = Hbd·G, Hbd[(t,j), (t,i)] = H_res[t,i,j] (block-diagonal [R, R]);
    #   df = Pbd·G, Pbd[t, (t,i)] = H_post[t,i] ([TP, R]);
    #   dH_res += G·Xᵀ (its diagonal blocks), dH_post += G·Fᵀ (entries ((t,i), t)).
    t0 = tl.program_id(0) * BT
    r = tl.arange(0, R)
    rt = t0 + r // n
    rs = r % n
    rv = (r < BT * n) & (rt < N)
    row = t0.to(tl.int64) * n + r
    go = rt.to(tl.int64)[:, None] * sgt + rs[:, None] * sgs  # g's rows through its strides (see _chunk)
    s = tl.arange(0, TP)
    st = t0 + s
    sv = (s < BT) & (st < N)
    same = (r[:, None] // n) == (r[None, :] // n)
    hb = tl.load(hr_ptr + rt[:, None] * (n * n) + rs[None, :] * n + rs[:, None],
                 mask=same & rv[:, None] & rv[None, :], other=0.0)
    own = (r[None, :] // n) == s[:, None]
    pb = tl.load(hp_ptr + rt[None, :] * n + rs[None, :], mask=own & rv[None, :] & sv[:, None], other=0.0)
    acc_h = tl.zeros((R, R), dtype=tl.float32)
    acc_p = tl.zeros((R, TP), dtype=tl.float32)
    for c0 in range(0, C, BC):
        c = c0 + tl.arange(0, BC)
        cm = c < C
        m2 = rv[:, None] & cm[None, :]
        mf = sv[:, None] & cm[None, :]
        ro = row[:, None] * C + c[None, :]
        fo = st.to(tl.int64)[:, None] * C + c[None, :]
        g = tl.load(g_ptr + go + c[None, :], mask=m2, other=0.0)
        x = tl.load(x_ptr + ro, mask=m2, other=0.0)
        f = tl.load(f_ptr + fo, mask=mf, other=0.0)
        if WRITE_DX:  # else the caller forms H_resᵀ g itself (fused into the stream-gradient sum)
            tl.store(dx_ptr + ro, _mma_any(hb, g, HILO, INTERP).to(dx_ptr.dtype.element_ty), mask=m2)
        tl.store(df_ptr + fo, _mma_any(pb, g, HILO, INTERP).to(df_ptr.dtype.element_ty), mask=mf)
        acc_h += _mma_tt(g, x, HILO, INTERP)
        acc_p += _mma_tt(g, f, HILO, INTERP)
    tl.store(dhr_ptr + rt[:, None] * (n * n) + rs[:, None] * n + rs[None, :], acc_h,
             mask=same & rv[:, None] & rv[None, :])
    tl.store(dhp_ptr + rt[:, None] * n + rs[:, None] + 0 * s[None, :], acc_p,
             mask=((r[:, None] // n) == s[None, :]) & rv[:, None] & sv[None, :])


@triton.jit
def pre_bwd(x_ptr, h_ptr, g_ptr, dx_ptr, dh_ptr, N, C,
            n: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, WRITE_DX: tl.constexpr):
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    tm = t < N
    t64 = t.to(tl.int64)
    j = tl.arange(0, NP)
    m2 = tm[:, None] & (j < n)[None, :]
    h = tl.load(h_ptr + t[:, None] * n + j[None, :], mask=m2, other=0.0)
    dh = tl.zeros((BT, NP), dtype=tl.float32)
    for c0 in range(0, C, BC):
        c = c0 + tl.arange(0, BC)
        cm = c < C
        o3 = (t64[:, None, None] * n + j[None, :, None]) * C + c[None, None, :]
        m3 = m2[:, :, None] & cm[None, None, :]
        x3 = tl.load(x_ptr + o3, mask=m3, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + t64[:, None] * C + c[None, :], mask=tm[:, None] & cm[None, :], other=0.0).to(tl.float32)
        dh += tl.sum(x3 * g[:, None, :], axis=2)
        if WRITE_DX:
            tl.store(dx_ptr + o3, (h[:, :, None] * g[:, None, :]).to(dx_ptr.dtype.element_ty), mask=m3)
    tl.store(dh_ptr + t[:, None] * n + j[None, :], dh, mask=m2)
