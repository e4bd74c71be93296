"""The linked mHC sub-layer: one stream-gradient buffer instead of three summed ones.

With the three ops of ``fused`` the stream x of a sub-layer gets three gradients (from
``coefficients``: dm·φᵀ + c·x; from ``pre``: h_pre ⊗ d_in; from ``post_res``: H_resᵀ g), each
written as an [N, n, C] tensor (or left to Inductor) and summed by autograd. Here the pair

    branch_in, h_post, h_res, x_link = mhc_pre_linked(x, φ, α, b, n, ...)
    x_out = mhc_post_res_linked(x_link, f, h_post, h_res)

splits the sub-layer at the branch instead. ``x_link`` is a view of x that only the post op consumes.
The pre op's backward writes the whole dx = (post_res part) + h_pre ⊗ d_in + dm·φᵀ + c·x in one
pass over x (``coef_kernels.proj_bwd`` with LINK, or ``dx_kernels.proj_dx_tma`` on sm_90+; dφ is
then one GEMM, or reduced in the same pass: by the TMA kernel with ``launch.PROJ_DX_TMA_DPHI``, the
default, and by the pointer kernel when ``launch._PROJ_BWD_GEMM`` is None or n > 4). The post_res
part, by ``LINK_MODE``:

- "add": the post op's backward is the ordinary post_res_bwd; its dx = H_resᵀ g is the gradient of
  ``x_link`` and the pass adds it, read once at the stream tile's own offsets. Backward stream
  traffic per sub-layer ≈ 36 units of [N, C] (the dφ GEMM's second read of x included) against 44
  for the three ops with Inductor's gradient sum (which reads two [N, n, C] parts and writes a third).
  Measured (H200, RESULTS.md runs 13-17): dx pass + dφ GEMM 380 µs ("bf16", C = 2048, 16k tokens);
  stack 2.5-3.7 % faster than the three ops at C = 2048, 1-2 % at 2560 / 4096. The default.
- "gather": the post op hands g through to ``x_link`` unchanged (skipping its dx write) and the pass
  forms H_resᵀ g itself. Each program owns one stream's K stripe, so every g row is read n times
  (≈ 47 units moved for 32 needed). Measured (H200, reports/kernels/RESULTS.md run 9): LINK pass
  + dφ GEMM 525 / 596 µs ("bf16" / "bf16x2") at C = 2048, 16k tokens; stack within ±1 % of the
  three ops. Session 13 ran it through the TMA dx pass too (programs ordered so that each g tile is
  read from memory once and from L2 n − 1 times): 393 µs at its best tile against "add"'s 270, stack
  2.1 % slower than "add" (run 66); removed (in git at e3b8e35). Three kernels that read g once
  (runs 10-12) were slower still and were not kept, nor was session 12's "streams" pass (each
  program all n streams of a channel chunk, g read once, 41 units against 46): 1008 µs against
  "add"'s 271 at C = 2048, stack 1.273× against 1.173× (run 62).

Contract: ``x_link`` may only be passed to ``mhc_post_res_linked`` (with "gather" its "gradient" is
g before the H_resᵀ transpose). Same values and gradients as the three reference functions (tests).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import launch as L
from .registration import fake, op

LINK_MODE = "add"  # one of launch.LINK_MODES; read when the pair runs forward
# "add": write the stream gradient over post_res_bwd's H_resᵀg buffer instead of a new one (one
# [N, n, C] buffer less alive in the backward; Inductor re-inplaces the mutating op under compile).
ADD_IN_PLACE = True


def _linked_bwd(x, phi, alpha, bias, h_pre, h_res, m, r, d_in, g_post, g_res, g_link, n, t_max, eps,
                precision, link_mode, out=None, g_pre=None, shift=False):
    """(dx, dφ, dα, dbias) of the pair; dx written into ``out`` [N, n, C] when given. ``g_pre``: dH_pre
    when already formed (by the fused norm's backward, ``pre_norm_bwd``), else Σ_c d_in·x_j here."""
    x = x.contiguous()
    N, _, C = x.shape
    if N == 0:
        return torch.zeros_like(x), torch.zeros_like(phi), torch.zeros_like(alpha), torch.zeros_like(bias)
    if g_pre is None:
        g_pre = torch.ops.mhc_repro.pre_bwd_dh(x, d_in)
    xf = x.view(N, n * C)
    dbias, dm, c, dalpha, dmp = L.launch_coef_bwd(m, r, alpha, bias, g_pre, g_post, g_res, n, n * C, t_max, eps,
                                                  L.dm_parts(xf, m.shape[1], precision), shift)
    dx, dphi = L.launch_proj_bwd(xf, phi, dm, c, precision, link=(g_link, h_res, h_pre, d_in),
                                  link_mode=link_mode, out=None if out is None else out.view(N, n * C), dmp=dmp)
    return dx.view(N, n, C), dphi.to(phi.dtype), dalpha.to(alpha.dtype), dbias.to(bias.dtype)


@op("pre_linked_bwd", traceable=False)
def _pre_linked_bwd(x: Tensor, phi: Tensor, alpha: Tensor, bias: Tensor, h_pre: Tensor, h_res: Tensor,
                    m: Tensor, r: Tensor, d_in: Tensor, g_post: Tensor, g_res: Tensor, g_link: Tensor,
                    n: int, t_max: int, eps: float, precision: str, link_mode: str,
                    g_pre: Optional[Tensor] = None, shift: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _linked_bwd(x, phi, alpha, bias, h_pre, h_res, m, r, d_in, g_post, g_res, g_link, n, t_max, eps,
                       precision, link_mode, g_pre=g_pre, shift=shift)


@fake(_pre_linked_bwd)
def _(x, phi, alpha, bias, h_pre, h_res, m, r, d_in, g_post, g_res, g_link, n, t_max, eps, precision,
      link_mode, g_pre=None, shift=False):
    return torch.empty_like(x), torch.empty_like(phi), torch.empty_like(alpha), torch.empty_like(bias)


@op("pre_linked_bwd_add_", traceable=False, mutates_args=("g_link",))
def _pre_linked_bwd_add_(x: Tensor, phi: Tensor, alpha: Tensor, bias: Tensor, h_pre: Tensor, h_res: Tensor,
                         m: Tensor, r: Tensor, d_in: Tensor, g_post: Tensor, g_res: Tensor, g_link: Tensor,
                         n: int, t_max: int, eps: float, precision: str,
                         g_pre: Optional[Tensor] = None, shift: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """LINK_MODE "add" with the stream gradient written over g_link (= H_resᵀ g, dead afterwards):
    each element is read and then overwritten by the same program, so no second [N, n, C] buffer."""
    _, dphi, dalpha, dbias = _linked_bwd(x, phi, alpha, bias, h_pre, h_res, m, r, d_in, g_post, g_res, g_link,
                                         n, t_max, eps, precision, "add", out=g_link, g_pre=g_pre, shift=shift)
    return dphi, dalpha, dbias


@fake(_pre_linked_bwd_add_)
def _(x, phi, alpha, bias, h_pre, h_res, m, r, d_in, g_post, g_res, g_link, n, t_max, eps, precision, g_pre=None,
      shift=False):
    return torch.empty_like(phi), torch.empty_like(alpha), torch.empty_like(bias)


# The branch's RMSNorm fused into pre (norm_kernels; mhc_pre_linked's norm_weight).
@op("pre_norm")
def _pre_norm(x: Tensor, h_pre: Tensor, w: Tensor, eps: float) -> Tensor:
    return L.launch_pre_norm(x, h_pre, w, eps)


@fake(_pre_norm)
def _(x, h_pre, w, eps):
    return x.new_empty(x.shape[0], x.shape[2])


@op("pre_norm_bwd")
def _pre_norm_bwd(x: Tensor, h_pre: Tensor, w: Tensor, dy: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(dH_pre fp32, dh in x's dtype: the d_in of the dx pass, dw in w's dtype)."""
    dhp, dh, dw = L.launch_pre_norm_bwd(x, h_pre, w, dy, eps)
    return dhp, dh, dw.to(w.dtype)


@fake(_pre_norm_bwd)
def _(x, h_pre, w, dy, eps):
    return x.new_empty(x.shape[:2], dtype=torch.float32), x.new_empty(x.shape[0], x.shape[2]), torch.empty_like(w)


class _PreLinked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, phi, alpha, bias, norm_w, n, t_max, eps, rms_eps, norm_eps, precision, shift,
                proj_m=None, proj_ss=None):
        N, _, C = x.shape
        if proj_m is None:
            h_pre, h_post, h_res, m, r = torch.ops.mhc_repro.coefficients(
                x.reshape(N, n * C), phi, alpha, bias, n, t_max, eps, rms_eps, precision, shift)
        else:  # m = x·φ and Σx² from the previous sub-layer's post op (cross_layer): the epilogue alone
            m = proj_m
            h_pre, h_post, h_res, r = torch.ops.mhc_repro.coefficients_from_proj(
                m, proj_ss, alpha, bias, n, n * C, t_max, eps, rms_eps, shift)
        if norm_w is None:
            branch_in = torch.ops.mhc_repro.pre(x, h_pre)
        else:
            branch_in = torch.ops.mhc_repro.pre_norm(x, h_pre, norm_w, norm_eps)
        ctx.save_for_backward(x, phi, alpha, bias, h_pre, h_res, m, r, norm_w)
        ctx.cfg = (n, t_max, eps, norm_eps, precision, LINK_MODE, shift)
        return branch_in, h_post, h_res, x.view_as(x)

    @staticmethod
    def backward(ctx, d_in, g_post, g_res, g_link):
        x, phi, alpha, bias, h_pre, h_res, m, r, norm_w = ctx.saved_tensors
        n, t_max, eps, norm_eps, precision, link_mode, shift = ctx.cfg
        zero = torch.zeros_like
        d_in = zero(x[:, 0]) if d_in is None else d_in
        g_post = zero(h_pre) if g_post is None else g_post
        g_res = zero(h_res) if g_res is None else g_res
        g_link = zero(x) if g_link is None else g_link
        g_pre = dw = None
        if norm_w is not None:  # d_in is the normalized input's gradient: the dx pass needs dh
            g_pre, d_in, dw = torch.ops.mhc_repro.pre_norm_bwd(x, h_pre, norm_w, d_in, norm_eps)
        args = (x, phi, alpha, bias, h_pre, h_res, m, r, d_in, g_post.float(), g_res.float(), g_link, n, t_max, eps,
                precision)
        if link_mode == "add" and ADD_IN_PLACE and g_link.dtype == x.dtype and g_link.is_contiguous():
            # g_link is post_res_bwd's H_resᵀ g, used by nothing else (x_link's contract): overwrite it.
            dphi, dalpha, dbias = torch.ops.mhc_repro.pre_linked_bwd_add_(*args, g_pre=g_pre, shift=shift)
            dx = g_link
        else:
            dx, dphi, dalpha, dbias = torch.ops.mhc_repro.pre_linked_bwd(*args, link_mode, g_pre=g_pre, shift=shift)
        return dx, dphi, dalpha, dbias, dw, None, None, None, None, None, None, None, None, None


@op("post_res_linked")
def _post_res_linked(x_link: Tensor, f: Tensor, h_post: Tensor, h_res: Tensor) -> Tensor:
    return torch.ops.mhc_repro.post_res(x_link, f, h_post, h_res)


@fake(_post_res_linked)
def _(x_link, f, h_post, h_res):
    return torch.empty_like(x_link)


def _post_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)
    ctx.link_mode = LINK_MODE


def _post_backward(ctx, g):
    x, f, h_post, h_res = ctx.saved_tensors
    if ctx.link_mode == "add":  # dx = H_resᵀ g, added in _PreLinked.backward's dx pass
        return torch.ops.mhc_repro.post_res_bwd(x, f, h_post, h_res, g)
    df, dhp, dhr = torch.ops.mhc_repro.post_res_bwd_red(x, f, h_post, h_res, g)
    return g, df, dhp, dhr  # g unchanged: _PreLinked.backward applies H_resᵀ in its dx pass


_post_res_linked.register_autograd(_post_backward, setup_context=_post_setup)


def mhc_pre_linked(x: Tensor, phi: Tensor, alpha: Tensor, bias: Tensor, n: int, t_max: int = 20,
                   eps: float = 1e-6, rms_eps: float = 1e-6, *, precision: str | None = None,
                   norm_weight: Tensor | None = None, norm_eps: float = 1e-6,
                   shift: bool = False,
                   proj: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(branch_in [N, C], H_post [N, n], H_res [N, n, n], x_link) from x [N, n, C]; see the module.
    ``norm_weight`` [C]: branch_in is RMSNorm(pre) · norm_weight, the branch's own norm fused in
    (norm_kernels; the branch then must not normalize again). ``shift``: residual.sinkhorn_shift.
    ``proj``: (m = x_flat·φ [N, n²+2n], Σx² [N]) of this very x, from the previous sub-layer's
    ``cross_layer.mhc_post_res_proj_linked``: the projection pass is skipped, the backward is the same
    (it differentiates the projection from x and φ; no gradient flows into m or Σx²)."""
    precision = L.PROJ_PRECISION if precision is None else precision
    L._check_precision(precision)
    L._check(LINK_MODE in L.LINK_MODES,
             f"linked LINK_MODE {LINK_MODE!r} is unknown; allowed: {', '.join(L.LINK_MODES)}")
    L._check(x.dim() == 3 and x.shape[1] == n,
             f"mhc_pre_linked x shape {tuple(x.shape)} is invalid; expected [N, n={n}, C]")
    F._check_coefficient_args(x.reshape(x.shape[0], n * x.shape[2]), phi, alpha, bias, n, t_max)
    L._check(norm_weight is None or tuple(norm_weight.shape) == (x.shape[2],),
             f"mhc_pre_linked norm_weight shape {None if norm_weight is None else tuple(norm_weight.shape)} "
             f"is invalid; expected [C={x.shape[2]}]")
    if proj is not None:
        _check_proj(x, proj, n)
    return _PreLinked.apply(x.contiguous(), phi, alpha.reshape(3), bias.reshape(-1), norm_weight, int(n),
                            int(t_max), float(eps), float(rms_eps), float(norm_eps), precision, bool(shift),
                            *((None, None) if proj is None else proj))


def _check_proj(x: Tensor, proj, n: int) -> None:
    N, M = x.shape[0], n * n + 2 * n
    pair = isinstance(proj, (tuple, list)) and len(proj) == 2 and all(isinstance(t, Tensor) for t in proj)
    if not (pair and tuple(proj[0].shape) == (N, M) and tuple(proj[1].shape) == (N, )
            and proj[0].dtype == torch.float32 and proj[1].dtype == torch.float32):
        got = [(tuple(t.shape), t.dtype) for t in proj] if pair else type(proj).__name__
        raise ValueError(f"mhc_pre_linked proj {got} is invalid; expected (m {(N, M)}, Σx² {(N, )}) in "
                         "float32, as mhc_post_res_proj_linked returns them")


def mhc_post_res_linked(x_link: Tensor, f: Tensor, h_post: Tensor, h_res: Tensor) -> Tensor:
    """``x_out[i] = Σ_j H_res[i, j] x[j] + H_post[i] f`` with x_link from ``mhc_pre_linked``."""
    F._check_post_res_args(x_link, f, h_post, h_res)
    return torch.ops.mhc_repro.post_res_linked(x_link, f.contiguous(), h_post, h_res)


# Imported last: fused builds its op namespaces (which reference this module's functions) at import,
# so whichever of the two modules is imported first, the other must find these names defined.
from . import fused as F  # noqa: E402
from . import cross_layer  # noqa: E402,F401  (registers coefficients_from_proj, which _PreLinked calls)
