"""Experimental: the forward half of cross-layer fusion (docs/kernels.md, design notes). Not used by
the model; the benchmark's ``*_xl`` variants use it, and its kernel row times it against post_res +
proj_fwd to see what it saves.

``launch_post_res_proj(x, f, h_post, h_res, phi_next)`` writes the sub-layer's output stream
``x_out[i] = Σ_j H_res[i, j] x[j] + H_post[i] f`` (as ``post_res``) and, from the tile it has just
rounded to the stream dtype, the next sub-layer's projection ``m = x_out·φ_next`` and ``Σ x_out²``
(as ``proj_fwd`` would compute them from the stored stream), so the next sub-layer's coefficients no
longer re-read the n·C stream: 4 units of [N, C] fewer per sub-layer at n = 4. Grid (token blocks,
C ranges); each program loops over its C range in BC blocks and writes its share of m and Σx² to a
per-range partial row, summed by the launcher (deterministic, no atomics). One BC block per program
(run 24: 898 µs at C = 2048, 16k tokens, 3x post_res + proj_fwd) loads its φ slice once per 32
tokens; whole-C ranges load φ once per token block, as proj_fwd does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import fused, linked
from . import launch as L
from .coef_kernels import _mma


@triton.jit
def post_res_proj_fwd(x_ptr, f_ptr, hp_ptr, hr_ptr, out_ptr, phi_ptr, phi_lo_ptr, m_ptr, ss_ptr, N, C, M,
                      c_per, n: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, MP: tl.constexpr,
                      SPLIT: tl.constexpr, LO: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr):
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    cb = tl.program_id(1)
    tm = t < N
    t64 = t.to(tl.int64)
    cols = tl.arange(0, MP)
    acc = tl.zeros((BT, MP), dtype=tl.float32)
    ss = tl.zeros((BT,), dtype=tl.float32)
    c_lo = cb * c_per
    for c0 in range(c_lo, tl.minimum(c_lo + c_per, C), BC):
        acc, ss = _post_res_proj_chunk(x_ptr, f_ptr, hp_ptr, hr_ptr, out_ptr, phi_ptr, phi_lo_ptr, acc, ss,
                                       t, tm, t64, c0 + tl.arange(0, BC), cols, C, M, n, SPLIT, LO, PREC, INTERP)
    row = cb.to(tl.int64) * N + t64
    tl.store(m_ptr + row[:, None] * M + cols[None, :], acc, mask=tm[:, None] & (cols < M)[None, :])
    tl.store(ss_ptr + row, ss, mask=tm)


@triton.jit
def _post_res_proj_chunk(x_ptr, f_ptr, hp_ptr, hr_ptr, out_ptr, phi_ptr, phi_lo_ptr, acc, ss, t, tm, t64, c, cols,
                         C, M, n: tl.constexpr, SPLIT: tl.constexpr, LO: tl.constexpr, PREC: tl.constexpr,
                         INTERP: tl.constexpr):
    cm = c < C
    msk = tm[:, None] & cm[None, :]
    pm = cm[:, None] & (cols < M)[None, :]
    f = tl.load(f_ptr + t64[:, None] * C + c[None, :], mask=msk, other=0.0).to(tl.float32)
    for i in tl.static_range(n):
        # output stream i; the n input tiles are re-read for every i (L1 hits after the first)
        o = tl.load(hp_ptr + t * n + i, mask=tm, other=0.0)[:, None] * f
        for j in tl.static_range(n):
            xj = tl.load(x_ptr + (t64[:, None] * n + j) * C + c[None, :], mask=msk, other=0.0).to(tl.float32)
            o += tl.load(hr_ptr + t * (n * n) + i * n + j, mask=tm, other=0.0)[:, None] * xj
        # masked lanes are 0 already (every load above is masked with other=0)
        ob = o.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + (t64[:, None] * n + i) * C + c[None, :], ob, mask=msk)
        of = ob.to(tl.float32)
        ss += tl.sum(of * of, axis=1)
        po = (i * C + c)[:, None] * M + cols[None, :]
        if SPLIT:  # bf16 stream: bf16 MMAs on the rounded tile (φ as hi [+ lo] bf16 parts)
            acc += _mma(ob, tl.load(phi_ptr + po, mask=pm, other=0.0), INTERP)
            if LO:
                acc += _mma(ob, tl.load(phi_lo_ptr + po, mask=pm, other=0.0), INTERP)
        else:
            acc += tl.dot(of, tl.load(phi_ptr + po, mask=pm, other=0.0), input_precision=PREC)
    return acc, ss


def launch_post_res_proj(x: Tensor, f: Tensor, h_post: Tensor, h_res: Tensor, phi_next: Tensor,
                         precision: str = L.PROJ_PRECISION) -> tuple[Tensor, Tensor, Tensor]:
    """(x_out [N, n, C] in x's dtype, m [N, M] fp32, Σ x_out² [N] fp32) in one pass."""
    L._check_precision(precision)
    x = x.contiguous()
    N, n, C = x.shape
    M = phi_next.shape[1]
    L._check(tuple(phi_next.shape) == (n * C, M), f"phi_next shape {tuple(phi_next.shape)} is invalid; "
             f"expected ({n * C}, M)")
    bt, bc, warps, c_splits, stages = L._POST_RES_PROJ
    bc = min(bc, L._p2(C, 16))
    # c_splits programs share a token block, each looping over its C range; 0 = one BC block each
    c_per = bc if c_splits == 0 else triton.cdiv(triton.cdiv(C, c_splits), bc) * bc
    n_cb = triton.cdiv(C, c_per)
    out = torch.empty_like(x)
    m = torch.empty(n_cb, N, M, device=x.device, dtype=torch.float32)
    ss = torch.empty(n_cb, N, device=x.device, dtype=torch.float32)
    p_hi, p_lo, split, lo = L._phi_parts(phi_next, x, precision)
    if N > 0:
        post_res_proj_fwd[(triton.cdiv(N, bt), n_cb)](
            x, f.contiguous(), h_post.float().contiguous(), h_res.float().contiguous(), out, p_hi, p_lo, m, ss,
            N, C, M, c_per, n=n, BT=bt, BC=bc, MP=L._p2(M, 16), SPLIT=split, LO=lo, PREC=L.DOT_PRECISION,
            INTERP=L._interpreted(), num_warps=warps, num_stages=stages)
    return out, m.sum(0), ss.sum(0)


# ---------------------------------------------------------------- as an op, for the linked pair
@torch.library.custom_op("mhc_repro::post_res_proj", mutates_args=())
def _post_res_proj(x_link: Tensor, f: Tensor, h_post: Tensor, h_res: Tensor, phi_next: Tensor,
                   precision: str) -> tuple[Tensor, Tensor, Tensor]:
    return launch_post_res_proj(x_link, f, h_post, h_res, phi_next, precision)


@_post_res_proj.register_fake
def _(x_link, f, h_post, h_res, phi_next, precision):
    N = x_link.shape[0]
    return torch.empty_like(x_link), x_link.new_empty(N, phi_next.shape[1], dtype=torch.float32), \
        x_link.new_empty(N, dtype=torch.float32)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4])


def _backward(ctx, g, _g_m, _g_ss):
    # m and Σx² feed only the next sub-layer's linked pre op, whose backward differentiates the
    # projection itself (dx += dm·φᵀ + c·x, dφ = xᵀ·dm): nothing flows back through them here.
    # x_link's gradient is H_resᵀ g, as the linked post op's with LINK_MODE "add".
    x, f, h_post, h_res = ctx.saved_tensors
    return (*torch.ops.mhc_repro.post_res_bwd(x, f, h_post, h_res, g), None, None)


_post_res_proj.register_autograd(_backward, setup_context=_setup)


def mhc_post_res_proj(x_link: Tensor, f: Tensor, h_post: Tensor, h_res: Tensor, phi_next: Tensor, *,
                      precision: str | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``mhc_post_res_linked`` that also returns the next sub-layer's (m, Σx²), to pass to its
    ``mhc_pre_linked(..., stats=...)``. x_link from ``mhc_pre_linked`` with LINK_MODE "add"."""
    precision = L.PROJ_PRECISION if precision is None else precision
    L._check(linked.LINK_MODE == "add", f"mhc_post_res_proj needs linked LINK_MODE 'add', not {linked.LINK_MODE!r}")
    fused._check_post_res_args(x_link, f, h_post, h_res)
    x_out, m, ss = torch.ops.mhc_repro.post_res_proj(x_link, f.contiguous(), h_post, h_res, phi_next, precision)
    return x_out, (m, ss)
