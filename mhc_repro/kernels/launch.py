"""Launchers of the fused mHC kernels and the tiles they use (the module constants below).

Every tile and precision switch the kernels read lives here, so a benchmark sweep or a test that
patches one (``monkeypatch.setattr(launch, "_PRB", ...)``) changes what runs. ``fused`` registers the
launchers as ``torch.library`` custom ops; the kernels themselves are in ``coef_kernels`` and
``stream_kernels``.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor
from triton.runtime.jit import JITFunction

from . import coef_kernels as ck
from . import dx_kernels as dk
from . import norm_kernels as nk
from . import stream_kernels as sk

# Projection precision for a non-bf16 (fp32) stream: tf32 operands, fp32 accumulate (PAPER.md §1
# allows tf32 for φ); "ieee" gives full fp32 products at several times the cost. A bf16 stream uses
# bf16 MMAs on φ's hi/lo bf16 parts instead (≈16-bit products), see coef_kernels.proj_fwd.
DOT_PRECISION = "tf32"
# Projection operands on a bf16 stream: "bf16x2" = φ (and dm in the backward) as bf16 hi + lo parts,
# two or three MMAs, ≈ fp32 products; "bf16" = rounded once to bf16, one MMA (issue 6's "bf16
# inputs, fp32 accumulate"; PAPER.md §1 keeps φ in tf32/fp32). Chosen per call
# (ResidualConfig.kernel_precision); this is the default.
PROJ_PRECISIONS = ("bf16x2", "bf16")
PROJ_PRECISION = "bf16x2"
# coefficient epilogue / Sinkhorn backward: (tokens per program, num_warps). Run 35 (device time from
# CUDA-graph replays, C = 2048, n = 4): fwd + bwd 22.2 µs vs 37.0 for (64, 4); the host-timed sweeps
# before it could not see the difference (the launchers took longer than these kernels).
_SINKHORN = (128, 4)
# Defaults = the fastest of the sweeps in reports/kernels/run4, run5 and run9 (H200, C = 2048, 16k tokens),
# re-checked on device time (CUDA-graph replays) in run 35: every default within 3 % of the best tile.
# Projection tiles; benchmarks/bench_mhc.py --sweep times alternatives on the device.
# forward (BN tokens, BK, num_stages, RELOAD, num_warps, K splits); backward (BN, BK, stages, RELOAD,
# num_warps, TRANS: accumulate dφᵀ so the stream tile needs no transpose). RELOAD: a second, L2-hit
# load of the stream tile for the elementwise term; forward only, RELOAD="diag": Σv² as the diagonal
# of v·vᵀ on the tensor cores (bf16 stream; see coef_kernels.proj_fwd).
_PROJ_FWD = (64, 128, 4, "diag", 4, 1)  # run 9 sweep: 153 vs 187 µs (bf16x2), 98 vs 134 (bf16); run 28: K splits 159+
# bf16x2 forward: φ's hi and lo parts as one operand of twice the width (one MMA per K tile, not two;
# the stream tile leaves shared memory once for both). Run 35 (C = 2048, device time): 93 vs 143.5 µs,
# same products.
PROJ_FWD_MERGED = True
_PROJ_BWD = (16, 256, 3, False, 4, False)
# Projection backward split in two: None = dφ partials reduced inside the dx kernel (_PROJ_BWD);
# (BN, BK, tokens per program, stages, warps) = a dx-only streaming kernel plus dφ = vᵀ·dm as one
# cuBLAS GEMM with fp32 output (deterministic, no partials): reads the stream twice, but both passes
# run near copy speed (run 8: cuBLAS vᵀ·dm alone 80 µs at 79 % of copy vs the fused kernel's 33-38 %).
_PROJ_BWD_GEMM = (64, 128, 256, 3, 4)  # run 9 sweep: 285 vs 387 µs (bf16x2), 239 vs 328 (bf16)
# That dx pass with TMA tiles (dx_kernels.proj_dx_tma; bf16 stream on sm_90+, C % BK == 0, "add" or
# no link): (BN, BK, tokens per program, stages, warps), or None for the pointer kernel above (stages
# pipelines only the dm load unless PROJ_DX_TMA_LOOP_STAGES is set, see below). Run 44
# (C = 2048, device time, three-op + linked passes with their dφ GEMMs): 668.9 µs vs 694.8 for the
# pointer kernel, same bits; stack 1.192× vs 1.206× (2048), 1.109× vs 1.116× (4096), intervals overlap.
_PROJ_BWD_TMA = (64, 128, 1024, 3, 4)
# Its MMAs accumulating into the elementwise terms (dx_kernels.proj_dx_tma ACC): 210 -> 168 registers
# in the linked bf16x2 pass (kernel_resources.py, Triton 3.6: 3 blocks per SM instead of 2), another
# rounding order (relative difference 3.3e-5 to the pointer kernel's bits). Run 46 (C = 2048, device
# time, three-op + linked passes with their dφ GEMMs): 633.4 µs vs 666.0 without; loss curve within
# bf16 noise (2.25e-3 vs 2.67e-3); stack 1.197× vs 1.200× (2048), 1.114× vs 1.105× (4096), unresolved.
# False = the three MMA results summed, the pointer kernel's order and bits.
PROJ_DX_TMA_ACC = True
# Its token loop: 0 = a plain loop (Triton 3.6 then multi-buffers only the dm load: the x, g, d_in
# TMA tiles get one shared-memory buffer each, whatever num_stages), or the num_stages of tl.range,
# which multi-buffers them too (kernel_resources.py). Same bits either way. Runs 52-54 (device time,
# three-op + linked passes with their dφ GEMMs): 2 stages 567.7 / 566.2 µs vs 631.4 / 632.7 for the
# plain loop at C = 2048, 1045.6 vs 1184.9 at 4096; 3 and 4 stages in between.
PROJ_DX_TMA_LOOP_STAGES = 2
# dφ = xᵀ·dm formed inside that TMA dx pass (MMAs on the x tiles it loads anyway; per-split fp32
# partials summed after it, deterministic) instead of by the dφ GEMM, which reads the stream a second
# time (4 units of [N, C] per sub-layer at n = 4). 0 = off (the dφ GEMM); 1 = xᵀ·dm with x transposed
# as the MMA's A operand; 2 = dmᵀ·x, x as the B operand as stored. Run 54 (C = 2048, loop stages 2,
# the pair of passes as above): mode 2 516.3 µs, off 568.1, mode 1 984.4 (run 52: 1033 vs 632 at
# loop stages 0); the tile sweep with mode 2 keeps the default tile.
PROJ_DX_TMA_DPHI = 2
# The branch's RMSNorm fused into pre (norm_kernels, ResidualConfig.fuse_branch_norm): (BT tokens per
# program step, num_warps), or None = chosen by C (_norm_tiles). Run 57 (forward + backward, C = 2048,
# the old backward): (1, 8) = the default by C, 248.8 µs; (1, 4) 248.9, (4, 8) 253.8, (2, 8) 278.2.
_PRE_NORM = None
# Its backward's own (BT, num_warps, persistent programs per SM), or None = _PRE_NORM's tiles and 2.
_PRE_NORM_BWD = None
# The backward loads the rows of the step PRE_NORM_BWD_PREFETCH (0, 1, 2) steps ahead before reducing
# the current ones (norm_kernels.pre_norm_bwd). Run 58 (C = 2048, backward alone): 1 135.4 µs, 0 143.5.
PRE_NORM_BWD_PREFETCH = 1
# > 0: Triton's own loop pipelining instead, tl.range(num_stages=PRE_NORM_BWD_STAGES) (PREFETCH then
# unused), at tile (1 token, 4 warps, 2 programs per SM) unless _PRE_NORM_BWD says otherwise, while the
# stages' rows fit in shared memory (_NORM_BWD_SMEM); wider rows take the PREFETCH path. Run 64
# (kernel table): 110.8 µs at C = 2048 and 213.6 at 4096, against 134.9 / 266.7 for PREFETCH 1 (run 62);
# stack paired 0.997× / 0.995× / 0.985× at C = 2048 / 4096 / 2560 (run 63, only 2560 resolved).
PRE_NORM_BWD_STAGES = 3
_NORM_BWD_SMEM = 160 * 1024
# post_res backward: ("loop": token-owning programs loop over C | "split": 2-D grid with per-chunk
# partial reductions summed afterwards | "mma": token-owning, every product and reduction an MMA on
# [(token, stream) rows, C] tiles; BT = rows then), BT tokens, BC channels, num_warps, num_stages.
_PRB = ("mma", 16, 64, 2, 5)  # run 13 sweep: 253 µs (87 % of copy) vs 283 with 3 stages, 371 "split", 418 "loop"
# post_res_bwd on an fp32 stream (the model's under bf16-mixed; None: _PRB). Its MMAs need "tf32x3"
# there, three tf32 MMAs per product: run 71, C = 1280, 8k tokens: "mma" (_PRB) 440 µs (32 % of
# copy), ("mma", 16, 32, 2, 3) 385, "loop" (4, 128, 4, 3) 192, this "split" tile 170 µs (82 %).
_PRB_FP32 = ("split", 2, 128, 2, 3)
# How the linked sub-layer (kernels.linked) forms the post_res part of the stream gradient in the
# projection's dx pass: "gather" = H_resᵀ g inside the pass (post_res_bwd skips dx, the pass reads
# each g row n times); "add" = post_res_bwd writes H_resᵀ g as usual and the pass adds it once.
LINK_MODES = ("gather", "add")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


# Plain-int forms of triton.cdiv / triton.next_power_of_2: Triton's are constexpr_functions that cost
# 2.4–3.1 µs a call on the host (Triton 3.6) against 0.1–0.2 µs for these; one sub-layer's launchers
# make 40 such calls (reports/kernels/host_helpers_session14.txt).
def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _p2(v: int, lo: int = 1) -> int:
    return max(lo, 1 << (v - 1).bit_length() if v > 0 else 0)


def _np(n: int) -> int:
    return _p2(n, 2)


def _interpreted() -> bool:
    return type(ck.proj_fwd).__name__ == "InterpretedFunction"


# Set by registration (True when the ops are triton_ops). Off, launches skip wrap_triton: even when
# it hands the kernel back it cost 17 µs a call on the host (RESULTS.md session 20), 12 per sub-layer.
WRAP_LAUNCHES = False


def _k(kernel):
    """A kernel as every launcher calls it. With WRAP_LAUNCHES through ``torch.library.wrap_triton``,
    so that a triton_op body traces its launches into the graph for Inductor to launch (in eager mode
    triton_op turns the wrapping off, and so does ``registration.plain_launches`` for the custom ops).
    Otherwise, and for interpreted kernels (TRITON_INTERPRET=1) or benchmarks/host_overhead.py's
    stubs, the kernel itself. A launcher called outside the ops (benchmarks, probes) must run under
    ``direct_launches()``: a wrapped kernel launched eagerly goes through torch's kernel side table,
    which keeps every call's non-tensor arguments — the TMA descriptors and the tensors they hold —
    alive for good (run 107: the kernel table held 139 GiB after 16 rows)."""
    if WRAP_LAUNCHES and isinstance(kernel, JITFunction):
        return torch.library.wrap_triton(kernel)
    return kernel


def direct_launches():
    """Context for calling the launchers outside the registered ops (and for the custom ops' bodies,
    registration.plain_launches): wrap_triton hands back the kernels themselves (see _k)."""
    try:
        from torch._library.triton import set_wrap_triton_enabled
    except ImportError:  # a torch without the switch
        return contextlib.nullcontext()
    return set_wrap_triton_enabled(False)


def _aligned16(t: Tensor) -> bool:
    """Whether t's first element sits on a 16-byte boundary (TMA's requirement). Under a trace (fake
    tensors have no address) by its storage offset: the allocators' blocks are aligned further."""
    try:
        return t.data_ptr() % 16 == 0
    except RuntimeError:
        return t.storage_offset() * t.element_size() % 16 == 0


def _n_sm(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


# ---------------------------------------------------------------- coefficients (kernels 1-3)
def _check_precision(precision: str) -> None:
    _check(precision in PROJ_PRECISIONS,
           f"kernel projection precision {precision!r} is unknown; allowed: {', '.join(PROJ_PRECISIONS)}")


def _phi_parts(phi: Tensor, x: Tensor, precision: str, MP: int) -> tuple[Tensor, int, int, bool, bool]:
    """φ as the kernels read it: (buffer, row stride, offset of the lo part, SPLIT, LO). bf16 stream:
    one bf16 buffer [K, 2·MP] with φ_hi in columns [0, MP) and φ_lo = bf16(φ - φ_hi) in [MP, 2·MP)
    ("bf16x2"; the merged forward projection reads both halves as one operand), or [K, MP] with φ_hi
    alone ("bf16"), zero-padded, written by one kernel (it replaced ~9 small torch ops per call: 13
    launches of 1.5–2.5 µs per sub-layer, run 38); fp32 stream: fp32 φ [K, M] (tf32 products)."""
    p = phi.float().contiguous()
    K, M = p.shape
    if x.dtype != torch.bfloat16:
        return p, M, 0, False, False
    lo = precision != "bf16"
    buf = torch.empty(K, 2 * MP if lo else MP, device=p.device, dtype=torch.bfloat16)
    bk = 64
    _k(ck.phi_split)[(_cdiv(K, bk),)](p, buf, K, M, buf.stride(0), MP, MP=MP, BK=bk, LO=lo)
    return buf, buf.stride(0), MP, True, lo


def _proj_tiles(cfg, K: int, M: int, split: bool) -> tuple:
    """cfg with BK capped at K. Wide φ tiles (n >= 5: M padded to >= 64) need smaller tiles: the
    n <= 4 ones ask for more shared memory than an H200 has once φ's tile is 128 columns wide."""
    bn, bk, stages, reload, *rest = cfg
    if _p2(M, 16) > 32:
        # fp32 stream: the tiles that passed the GPU parity tests at n = 8 (run 1 in
        # reports/kernels/RESULTS.md). bf16 stream (φ read as two bf16 parts): half the K tile.
        bn, bk, stages, reload = (32, 64, 3, False) if split else (32, 128, 3, False)
    return (bn, min(bk, _p2(K, 16)), stages, reload, *rest)


def launch_proj_fwd(x: Tensor, phi: Tensor, M: int, precision: str = PROJ_PRECISION) -> tuple[Tensor, Tensor]:
    """m = x·φ [N, M] and Σ x² [N] (fp32) in one pass over x [N, K] (K split over programs)."""
    N, K = x.shape
    MP = _p2(M, 16)
    p, ld, lo_off, split, lo = _phi_parts(phi, x, precision, MP)
    merged = bool(PROJ_FWD_MERGED and lo)  # [φ_hi | φ_lo] as one operand of 2·MP columns
    bn, bk, stages, reload, warps, ksplit = _proj_tiles(_PROJ_FWD, K, M, split)  # same bytes merged
    ss_mode = "reload" if reload is True else ("diag" if reload == "diag" and split else "reg")
    k_per = _cdiv(_cdiv(K, ksplit), bk) * bk
    ksplit = _cdiv(K, k_per)
    m = torch.empty(ksplit, N, M, device=x.device, dtype=torch.float32)
    ss = torch.empty(ksplit, N, device=x.device, dtype=torch.float32)
    _k(ck.proj_fwd)[(_cdiv(N, bn), ksplit)](
        x, p, m, ss, N, K, M, k_per, ld, lo_off, BN=bn, BK=bk, MP=MP, PREC=DOT_PRECISION,
        SPLIT=split, LO=lo, INTERP=_interpreted(), SS=ss_mode, MERGED=merged, num_stages=stages, num_warps=warps)
    if ksplit == 1:
        return m[0], ss[0]
    return m.sum(0), ss.sum(0)


def launch_coef_fwd(m, ss, alpha, bias, n, K, t_max, eps, rms_eps, shift: bool = False):
    """Epilogue + Sinkhorn: (h_pre, h_post, h_res, r); ``shift``: residual.sinkhorn_shift."""
    N = m.shape[0]
    f32 = dict(device=m.device, dtype=torch.float32)
    h_pre, h_post, h_res = torch.empty(N, n, **f32), torch.empty(N, n, **f32), torch.empty(N, n, n, **f32)
    r = torch.empty(N, **f32)
    bt, warps = _SINKHORN
    _k(ck.coef_fwd)[(_cdiv(N, bt),)](
        m, ss, alpha.float().contiguous(), bias.float().contiguous(), h_pre, h_post, h_res, r,
        N, 1.0 / K, rms_eps, eps, t_max, n=n, NP=_np(n), BT=bt, SHIFT=bool(shift), num_warps=warps)
    return h_pre, h_post, h_res, r


def launch_coef_bwd(m, r, alpha, bias, g_pre, g_post, g_res, n, K, t_max, eps, parts: int = 0,
                    shift: bool = False):
    """Sinkhorn backward (recomputed) + epilogue backward: (dbias [M], dm [N, M], c [N], dα [3], dm's
    bf16 parts [N, parts·M] or None) — dbias and dα from per-program partial sums; ``parts`` (1: hi,
    2: hi | lo) are the dφ GEMM's operand (``_dphi_gemm``); ``shift`` as in launch_coef_fwd."""
    N, M = m.shape
    f32 = dict(device=m.device, dtype=torch.float32)
    NP, (BT, warps) = _np(n), _SINKHORN
    n_prog = _cdiv(N, BT)
    dm, c = torch.empty(N, M, **f32), torch.empty(N, **f32)
    part = torch.empty(n_prog, M + 3, **f32)
    dmp = torch.empty(N, parts * M, device=m.device, dtype=torch.bfloat16) if parts else None
    scratch = torch.empty(n_prog * BT * 2 * t_max * NP, **f32)
    _k(ck.coef_bwd)[(n_prog,)](
        m, r, alpha.float().contiguous(), bias.float().contiguous(),
        g_pre.float().contiguous(), g_post.float().contiguous(), g_res.float().contiguous(),
        scratch, part, dm, c, dm if dmp is None else dmp, N, 1.0 / K, eps, t_max, n=n, NP=NP, BT=BT,
        PARTS=parts, SHIFT=bool(shift), num_warps=warps)
    # one small kernel, two outputs (not two views of one: a custom op's outputs must not alias);
    # torch's column sums of the slices took ~8 µs each (run 39)
    dbias, dalpha = torch.empty(M, **f32), torch.empty(3, **f32)
    _k(ck.sum_rows)[(1,)](part, dbias, dalpha, n_prog, M + 3, M, BR=32, WP=_p2(M + 3, 16))
    return dbias, dm, c, dalpha, dmp


def _dphi_as_gemm(M: int) -> bool:
    """Whether launch_proj_bwd forms dφ as one GEMM (_PROJ_BWD_GEMM set, n <= 4) or in its dx pass."""
    return _PROJ_BWD_GEMM is not None and _p2(M, 16) <= 32


def dm_parts(x: Tensor, M: int, precision: str) -> int:
    """How many bf16 parts of dm the dφ GEMM of launch_proj_bwd reads (0: it reads fp32 dm)."""
    gemm = _dphi_as_gemm(M) and x.dtype == torch.bfloat16 and x.is_cuda
    if PROJ_DX_TMA_DPHI and _PROJ_BWD_TMA is not None:
        gemm = False  # the TMA dx pass forms dφ itself (where it cannot, _dphi_gemm splits dm anyway)
    return (1 if precision == "bf16" else 2) if gemm else 0


def launch_proj_bwd(x: Tensor, phi: Tensor, dm: Tensor, c: Tensor,
                    precision: str = PROJ_PRECISION, link: tuple | None = None,
                    link_mode: str = "gather", out: Tensor | None = None,
                    dmp: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """dx = dm·φᵀ + c·x and dφ = xᵀ·dm (fp32): with _PROJ_BWD_GEMM (n <= 4) a dx pass plus one GEMM,
    otherwise one pass over x with dφ from per-split partials.
    ``link = (g [N, n, C], h_res [N, n, n], h_pre [N, n], d_in [N, C])`` adds the other two stream
    gradients to dx (the linked sub-layer's single stream-gradient pass): link_mode "gather" adds
    H_resᵀ g + h_pre ⊗ d_in, "add" adds g + h_pre ⊗ d_in (g then already H_resᵀ g; h_res unused).
    ``out``: dx's buffer ([N, K], x's dtype); with "add" it may be g itself (each element is read, then
    overwritten, by the same program). ``dmp``: dm's bf16 parts from launch_coef_bwd (see dm_parts)."""
    N, K = x.shape
    M = dm.shape[1]
    p, ld, lo_off, split, lo = _phi_parts(phi, x, precision, _p2(M, 16))
    gemm = _dphi_as_gemm(M)
    dx = torch.empty_like(x) if out is None else out
    if gemm and _dx_tma_ok(x, dx, link, link_mode):
        part = _launch_dx_tma(x, p, ld, lo_off, lo, dm, c, dx, link, dphi=int(PROJ_DX_TMA_DPHI))
        return dx, (_dphi_gemm(x, dm, precision, dmp) if part is None else part.sum(0))
    if gemm:  # dx-only kernel; dφ below as one GEMM
        bn, bk, tok, stages, warps = _PROJ_BWD_GEMM
        bk, reload, trans = min(bk, _p2(K, 16)), False, False
        tok = _cdiv(tok, bn) * bn
        splits = _cdiv(N, tok)
    else:
        bn, bk, stages, reload, warps, trans = _proj_tiles(_PROJ_BWD, K, M, split)
        # Token splits for the dφ partial sums: enough programs to fill the device, no atomics.
        splits = max(1, min(_cdiv(N, bn), _cdiv(4 * _n_sm(x.device), _cdiv(K, bk))))
        tok = _cdiv(_cdiv(N, splits), bn) * bn
        splits = max(1, _cdiv(N, tok))
    n_kb = _cdiv(K, bk)
    part = dm if gemm else torch.zeros(splits, K, M, device=x.device, dtype=torch.float32)  # dm: unused (DPHI=False)
    if link is None:
        g, h_res, h_pre, d_in, n, C = x, c, c, x, 1, K  # unused (LINK=0)
    else:
        g, h_res, h_pre, d_in = (t.contiguous() for t in link)
        _check(out is None or link_mode == "add" or out.data_ptr() != g.data_ptr(),
               f"proj_bwd link_mode={link_mode!r} cannot write dx over g; only 'add' can")
        n, C = g.shape[1], g.shape[2]
        h_res, h_pre = h_res.float(), h_pre.float()
    _k(ck.proj_bwd)[(n_kb, splits)](
        x, p, dm, c, dx, part, N, K, M, tok, ld, lo_off, g, h_res, h_pre, d_in, C, BN=bn, BK=bk,
        MP=_p2(M, 16), PREC=DOT_PRECISION, SPLIT=split, LO=lo, INTERP=_interpreted(), RELOAD=reload,
        TRANS=trans, LINK=0 if link is None else LINK_MODES.index(link_mode) + 1, n=n, DPHI=not gemm,
        ALIGNED=C % bk == 0, num_stages=stages, num_warps=warps)
    return dx, (_dphi_gemm(x, dm, precision, dmp) if gemm else part.sum(0))


def _dx_tma_tiles(K: int) -> tuple[int, int, int, int, int]:
    """_PROJ_BWD_TMA for a stream of width K: BK capped at K, tokens per program a multiple of BN (a
    tile never crosses into the next split; the descriptor clips only at N)."""
    bn, bk, tok, stages, warps = _PROJ_BWD_TMA
    return bn, min(bk, _p2(K, 16)), _cdiv(tok, bn) * bn, stages, warps


def _dx_tma_ok(x: Tensor, dx: Tensor, link: tuple | None, link_mode: str) -> bool:
    """Whether the dx pass can run as dx_kernels.proj_dx_tma (see its contract)."""
    if _PROJ_BWD_TMA is None or x.dtype != torch.bfloat16 or dx.dtype != x.dtype or x.shape[0] == 0:
        return False
    if not (_interpreted() or (x.is_cuda and torch.cuda.get_device_capability(x.device)[0] >= 9)):
        return False
    C = x.shape[1] if link is None else link[0].shape[2]
    bk = _dx_tma_tiles(x.shape[1])[1]
    tensors = (x, dx) if link is None else (x, dx, link[0], link[3])
    return ((link is None or link_mode == "add") and C % bk == 0 and C % 8 == 0
            and all(_aligned16(t) for t in tensors))


def _launch_dx_tma(x, p, ld, lo_off, lo, dm, c, dx, link, dphi: int = 0) -> Tensor | None:
    """Writes dx; with ``dphi`` (a PROJ_DX_TMA_DPHI mode) also returns dφ's per-split partials
    [splits, K, M] (fp32), else None."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    N, K = x.shape
    M = dm.shape[1]
    bn, bk, tok, stages, warps = _dx_tma_tiles(K)

    def desc(t: Tensor) -> TensorDescriptor:
        return TensorDescriptor.from_tensor(t, [bn, bk])

    xd, dxd = desc(x), desc(dx)
    if link is None:
        gd, dind, h_pre, C, n = xd, xd, c, K, 1  # unused (LINK=0)
    else:
        g, _, h_pre, d_in = link
        n, C = g.shape[1], g.shape[2]
        gd, dind, h_pre = desc(g.contiguous().view(N, K)), desc(d_in.contiguous()), h_pre.float().contiguous()
    splits = _cdiv(N, tok)
    part = torch.empty(splits, K, M, device=x.device, dtype=torch.float32) if dphi else None
    _k(dk.proj_dx_tma)[(_cdiv(K, bk), splits)](
        xd, gd, dind, dxd, p, dm, c, h_pre, c if part is None else part, N, K, M, C, tok, ld, lo_off,
        BN=bn, BK=bk, MP=_p2(M, 16), LO=lo, LINK=0 if link is None else 2, n=n, INTERP=_interpreted(),
        ACC=bool(PROJ_DX_TMA_ACC), LOOP_STAGES=int(PROJ_DX_TMA_LOOP_STAGES), DPHI=dphi,
        num_stages=stages, num_warps=warps)
    return part


def _dphi_gemm(x: Tensor, dm: Tensor, precision: str, dmp: Tensor | None = None) -> Tensor:
    """dφ = xᵀ·dm [K, M] in fp32 as one GEMM. bf16 stream on CUDA: bf16 operands with fp32 output
    (dm as hi + lo bf16 parts for "bf16x2", like the kernels; ``dmp``: those parts, [N, M] or [N, 2M],
    as coef_bwd wrote them); an fp32 stream on CUDA: tf32 operands where DOT_PRECISION is "tf32", like
    the projection's MMAs; elsewhere in fp32."""
    M = dm.shape[1]
    if x.dtype != torch.bfloat16:
        if x.is_cuda and DOT_PRECISION == "tf32":
            return _mm_tf32(x.t().float(), dm.float())
        return x.t().float() @ dm.float()
    if dmp is None:
        hi = dm.to(torch.bfloat16)
        dmp = hi if precision == "bf16" else torch.cat([hi, (dm - hi.float()).to(torch.bfloat16)], 1)
    if x.is_cuda:
        out = torch.mm(x.t(), dmp, out_dtype=torch.float32)
    else:
        out = x.t().float() @ dmp.float()
    return out if dmp.shape[1] == M else out[:, :M] + out[:, M:]


def _mm_tf32(a: Tensor, b: Tensor) -> Tensor:
    """a @ b with tf32 operands, fp32 accumulate, whatever the global matmul precision. The default
    ("ieee") runs fp32 GEMMs without tensor cores: run 74 (3B training step, fp32 stream under
    bf16-mixed) found the dφ GEMM as an FFMA kernel, 83.5 µs a call at C = 1280, 8k tokens. Uses the
    per-backend switch of torch >= 2.9 (mixing it with the legacy global one makes
    get_float32_matmul_precision raise), else the legacy allow_tf32."""
    mm = torch.backends.cuda.matmul
    attr, on = ("fp32_precision", "tf32") if hasattr(mm, "fp32_precision") else ("allow_tf32", True)
    prev = getattr(mm, attr)
    setattr(mm, attr, on)
    try:
        return a @ b
    finally:
        setattr(mm, attr, prev)


# ---------------------------------------------------------------- stream kernels (4, 5 and backwards)
def launch_pre(x: Tensor, h_pre: Tensor) -> Tensor:
    """Σ_j h_pre[j] x[j]: x [N, n, C] -> [N, C]."""
    x = x.contiguous()
    N, n, C = x.shape
    out = x.new_empty(N, C)
    bt, bc = 8, min(256, _p2(C, 16))
    if N > 0:
        _k(sk.pre_fwd)[(_cdiv(N, bt), _cdiv(C, bc))](
            x, h_pre.float().contiguous(), out, N, C, n=n, BT=bt, BC=bc)
    return out


def launch_pre_bwd(x: Tensor, h_pre: Tensor | None, g: Tensor) -> tuple[Tensor | None, Tensor]:
    """(dx = h_pre ⊗ g, dH_pre = Σ_c g·x_j in fp32); h_pre None: only dH_pre (dx is None)."""
    x = x.contiguous()
    N, n, C = x.shape
    dh = torch.empty(N, n, device=x.device, dtype=torch.float32)
    dx = None if h_pre is None else torch.empty_like(x)
    bt, bc = 4, min(256, _p2(C, 16))
    if N > 0:  # without h_pre the kernel's dx / h_pre pointers are placeholders it never touches
        _k(sk.pre_bwd)[(_cdiv(N, bt),)](
            x, dh if h_pre is None else h_pre.float().contiguous(), g.contiguous(), x if dx is None else dx,
            dh, N, C, n=n, NP=_np(n), BT=bt, BC=bc, WRITE_DX=h_pre is not None)
    return dx, dh


def _norm_tiles(C: int) -> tuple[int, int, int]:
    """(BT tokens, BCP padded row, num_warps) of the row-owning norm kernels: _PRE_NORM's, or by C
    (≥ 2048 elements per tile, ≤ 8 fp32 row elements per thread; untimed)."""
    bcp = _p2(C, 16)
    if _PRE_NORM is not None:
        return _PRE_NORM[0], bcp, _PRE_NORM[1]
    return max(1, 2048 // bcp), bcp, min(16, max(4, bcp // 256))


def launch_pre_norm(x: Tensor, h_pre: Tensor, w: Tensor, eps: float) -> Tensor:
    """RMSNorm(Σ_j h_pre[j] x[j]) · w: x [N, n, C] -> [N, C] in x's dtype (h in fp32, never rounded)."""
    x = x.contiguous()
    N, n, C = x.shape
    out = x.new_empty(N, C)
    bt, bcp, warps = _norm_tiles(C)
    if N > 0:
        _k(nk.pre_norm_fwd)[(_cdiv(N, bt),)](x, h_pre.float().contiguous(), w.contiguous(), out, N, C, eps,
                                               n=n, BT=bt, BCP=bcp, num_warps=warps)
    return out


def launch_pre_norm_bwd(x: Tensor, h_pre: Tensor, w: Tensor, dy: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(dH_pre [N, n] fp32, dh [N, C] in x's dtype, dw [C] fp32) of launch_pre_norm, given dy [N, C]."""
    x = x.contiguous()
    N, n, C = x.shape
    dhp = torch.empty(N, n, device=x.device, dtype=torch.float32)
    dh = torch.empty(N, C, device=x.device, dtype=x.dtype)
    if N == 0:
        return dhp, dh, torch.zeros(C, device=x.device, dtype=torch.float32)
    bt, bcp, warps = _norm_tiles(C)
    per_sm, stages = 2, int(PRE_NORM_BWD_STAGES)
    if _PRE_NORM_BWD is not None:
        bt, warps, per_sm = _PRE_NORM_BWD
        _check(bt >= 1 and bt & (bt - 1) == 0 and per_sm >= 1,
               f"launch._PRE_NORM_BWD {_PRE_NORM_BWD} is invalid; BT must be a power of two and programs per SM >= 1")
    elif stages > 0:
        bt, warps = 1, 4  # the pipelined loop's own tile (run 61)
    if stages > 0 and bt * (n + 1) * bcp * x.element_size() * stages > _NORM_BWD_SMEM:
        stages = 0  # the stages' rows would not fit in shared memory: the PREFETCH path, its tiles by C
        if _PRE_NORM_BWD is None:
            bt, _, warps = _norm_tiles(C)
    # persistent programs over fixed token ranges (a multiple of BT each): one dw partial per program
    tok = _cdiv(_cdiv(N, min(_cdiv(N, bt), per_sm * _n_sm(x.device))), bt) * bt
    progs = _cdiv(N, tok)
    part = torch.zeros(progs, C, device=x.device, dtype=torch.float32)
    _k(nk.pre_norm_bwd)[(progs,)](x, h_pre.float().contiguous(), w.contiguous(), dy.contiguous(), dh, dhp, part,
                              N, C, eps, tok, n=n, NP=_np(n), BT=bt, BCP=bcp, PREFETCH=int(PRE_NORM_BWD_PREFETCH),
                              STAGES=stages, num_warps=warps)
    return dhp, dh, part.sum(0)


def launch_post_res(x: Tensor, f: Tensor, h_post: Tensor, h_res: Tensor) -> Tensor:
    """Σ_j H_res[i, j] x[j] + H_post[i] f: [N, n, C]."""
    x = x.contiguous()
    N, n, C = x.shape
    out = torch.empty_like(x)
    bt, bc = 4, min(256, _p2(C, 16))
    if N > 0:
        _k(sk.post_res_fwd)[(_cdiv(N, bt), _cdiv(C, bc))](
            x, f.contiguous(), h_post.float().contiguous(), h_res.float().contiguous(), out, N, C,
            n=n, NP=_np(n), BT=bt, BC=bc)
    return out


# post_res_bwd reads g through its strides (False: copies g contiguous first, as up to session 18;
# the benchmark's *_gcopy variants, for an A/B)
PRB_G_BY_STRIDES = True


def _rows_by_strides(g: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """A [N, n, C] gradient and its (token, stream) strides, copied only if C is not unit-stride.
    The last block's stream gradient is often the collapse's broadcast (stream stride 0);
    .contiguous() would materialise it (335 µs per step at C = 2048, run 78)."""
    g = g if g.stride(-1) == 1 and PRB_G_BY_STRIDES else g.contiguous()
    return g, (g.stride(0), g.stride(1))


def launch_post_res_bwd(x: Tensor, f: Tensor, h_post: Tensor, h_res: Tensor, g: Tensor,
                         write_dx: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x = x.contiguous()
    N, n, C = x.shape
    f32 = dict(device=x.device, dtype=torch.float32)
    mode, bt, bc, warps, stages = _PRB if x.dtype == torch.bfloat16 or _PRB_FP32 is None else _PRB_FP32
    # Only mode "mma" can skip dx; then x stands in for the (never written) dx pointer.
    dx = torch.empty_like(x) if write_dx or mode != "mma" else x
    df = torch.empty(N, C, device=x.device, dtype=f.dtype)
    dhp, dhr = torch.empty(N, n, **f32), torch.empty(N, n, n, **f32)
    bc = min(bc, _p2(C, 16))
    if N > 0:
        g, sg = _rows_by_strides(g)
        args = (x, f.contiguous(), h_post.float().contiguous(), h_res.float().contiguous(), g, dx, df)
        if mode == "mma":  # bt = target rows (token, stream) per program
            bt = max(1, bt // n)
            _k(sk.post_res_bwd_mma)[(_cdiv(N, bt),)](
                *args, dhp, dhr, N, C, *sg, n=n, BT=bt, R=_p2(bt * n, 16), TP=_p2(bt, 16), BC=max(bc, 16),
                HILO=x.dtype == torch.bfloat16, INTERP=_interpreted(), WRITE_DX=write_dx, num_warps=warps,
                num_stages=stages)
        elif mode == "split":
            chunks = _cdiv(C, bc)
            php, phr = torch.empty(chunks, N, n, **f32), torch.empty(chunks, N, n, n, **f32)
            _k(sk.post_res_bwd_split)[(_cdiv(N, bt), chunks)](
                *args, php, phr, N, C, *sg, n=n, NP=_np(n), BT=bt, BC=bc, num_warps=warps, num_stages=stages)
            dhp, dhr = php.sum(0), phr.sum(0)
        else:
            _k(sk.post_res_bwd)[(_cdiv(N, bt),)](
                *args, dhp, dhr, N, C, *sg, n=n, NP=_np(n), BT=bt, BC=bc, num_warps=warps, num_stages=stages)
    return dx, df, dhp.to(h_post.dtype), dhr.to(h_res.dtype)
