"""Fused mHC operators: the Triton kernels registered as ``torch.library`` custom ops.

``ops()`` returns the same three functions as ``mhc_repro.residual.mhc_ops`` (same signatures and
semantics, differentiable w.r.t. every tensor input). Each is a custom op with a registered fake
(meta) implementation and a registered autograd formula whose backward is again a custom op, so
``torch.compile`` traces forward and backward without graph breaks (the kernels stay opaque to
Inductor, which fuses the code around them). The launchers and their tiles are in ``launch``.

Under ``TRITON_INTERPRET=1`` (set before this module is imported) the kernels run on CPU tensors:
that is how CI checks them against the reference.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch
from torch import Tensor

from . import launch as L
from .launch import PROJ_PRECISIONS, _check, _check_precision
from .registration import fake, op

# Under torch.compile: post_res's backward leaves dx = H_resᵀ g as an expression for Inductor to fuse
# into the sum of the stream's gradient parts (the kernel then only reduces and writes df), instead of
# writing dx and reading it back. Saves bytes only where the stream's tile (launch._PRB, or _PRB_FP32
# on an fp32 stream) is mode "mma"; other modes write dx anyway.
LAZY_RES_DX = False


@op("coefficients")
def _coefficients(x_flat: Tensor, phi: Tensor, alpha: Tensor, bias: Tensor, n: int, t_max: int,
                  eps: float, rms_eps: float, precision: str,
                  shift: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    x = x_flat.contiguous()
    N, K = x.shape
    M = n * n + 2 * n
    if N == 0:
        e = lambda *s: x.new_empty(s, dtype=torch.float32)  # noqa: E731
        return e(0, n), e(0, n), e(0, n, n), e(0, M), e(0)
    m, ss = L.launch_proj_fwd(x, phi, M, precision)
    h_pre, h_post, h_res, r = L.launch_coef_fwd(m, ss, alpha, bias, n, K, t_max, eps, rms_eps, shift)
    return h_pre, h_post, h_res, m, r


@fake(_coefficients)
def _(x_flat, phi, alpha, bias, n, t_max, eps, rms_eps, precision, shift=False):
    N = x_flat.shape[0]
    e = lambda *s: x_flat.new_empty(s, dtype=torch.float32)  # noqa: E731
    return e(N, n), e(N, n), e(N, n, n), e(N, n * n + 2 * n), e(N)


@op("coefficients_bwd", traceable=False)
def _coefficients_bwd(x_flat: Tensor, phi: Tensor, alpha: Tensor, bias: Tensor, m: Tensor, r: Tensor,
                      g_pre: Tensor, g_post: Tensor, g_res: Tensor, n: int, t_max: int,
                      eps: float, precision: str, shift: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x = x_flat.contiguous()
    N, K = x.shape
    if N == 0:
        return torch.zeros_like(x), torch.zeros_like(phi), torch.zeros_like(alpha), torch.zeros_like(bias)
    dbias, dm, c, dalpha, dmp = L.launch_coef_bwd(m, r, alpha, bias, g_pre, g_post, g_res, n, K, t_max, eps,
                                                  L.dm_parts(x, m.shape[1], precision), shift)
    dx, dphi = L.launch_proj_bwd(x, phi, dm, c, precision, dmp=dmp)
    return dx, dphi.to(phi.dtype), dalpha.to(alpha.dtype), dbias.to(bias.dtype)


@fake(_coefficients_bwd)
def _(x_flat, phi, alpha, bias, m, r, g_pre, g_post, g_res, n, t_max, eps, precision, shift=False):
    return torch.empty_like(x_flat), torch.empty_like(phi), torch.empty_like(alpha), torch.empty_like(bias)


def _coef_setup(ctx, inputs, output):
    x_flat, phi, alpha, bias, n, t_max, eps, _, precision, shift = inputs
    ctx.save_for_backward(x_flat, phi, alpha, bias, output[3], output[4])
    ctx.cfg = (n, t_max, eps, precision, shift)


def _coef_backward(ctx, g_pre, g_post, g_res, _g_m, _g_r):
    x_flat, phi, alpha, bias, m, r = ctx.saved_tensors
    n, t_max, eps, precision, shift = ctx.cfg
    N = x_flat.shape[0]
    z = lambda *s: torch.zeros(s, device=x_flat.device, dtype=torch.float32)  # noqa: E731
    g_pre = z(N, n) if g_pre is None else g_pre
    g_post = z(N, n) if g_post is None else g_post
    g_res = z(N, n, n) if g_res is None else g_res
    dx, dphi, dalpha, dbias = torch.ops.mhc_repro.coefficients_bwd(
        x_flat, phi, alpha, bias, m, r, g_pre, g_post, g_res, n, t_max, eps, precision, shift)
    return dx, dphi, dalpha, dbias, None, None, None, None, None, None


_coefficients.register_autograd(_coef_backward, setup_context=_coef_setup)


# ---------------------------------------------------------------- apply H_pre (kernel 4)
@op("pre")
def _pre(x: Tensor, h_pre: Tensor) -> Tensor:
    return L.launch_pre(x, h_pre)


@fake(_pre)
def _(x, h_pre):
    return x.new_empty(x.shape[0], x.shape[2])


@op("pre_bwd")
def _pre_bwd(x: Tensor, h_pre: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    dx, dh = L.launch_pre_bwd(x, h_pre, g)
    return dx, dh.to(h_pre.dtype)


@fake(_pre_bwd)
def _(x, h_pre, g):
    return torch.empty_like(x), torch.empty_like(h_pre)


@op("pre_bwd_dh")
def _pre_bwd_dh(x: Tensor, g: Tensor) -> Tensor:
    """Only dH_pre[t, j] = Σ_c g[t, c] x[t, j, c] (fp32)."""
    return L.launch_pre_bwd(x, None, g)[1]


@fake(_pre_bwd_dh)
def _(x, g):
    return x.new_empty(x.shape[:2], dtype=torch.float32)


def _pre_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _pre_backward(ctx, g):
    x, h_pre = ctx.saved_tensors
    if torch.compiler.is_compiling():
        # Traced backward: leave the rank-1 stream gradient h_pre ⊗ g as a pointwise expression, so
        # Inductor fuses it into the sum of the stream's three gradient contributions instead of
        # writing it and reading it back (saves writing and re-reading n·C per token).
        dx = (h_pre.float().unsqueeze(-1) * g.float().unsqueeze(1)).to(x.dtype)
        return dx, torch.ops.mhc_repro.pre_bwd_dh(x, g).to(h_pre.dtype)
    return torch.ops.mhc_repro.pre_bwd(x, h_pre, g)


_pre.register_autograd(_pre_backward, setup_context=_pre_setup)


# ---------------------------------------------------------------- H_res + H_post + merge (kernel 5)
@op("post_res")
def _post_res(x: Tensor, f: Tensor, h_post: Tensor, h_res: Tensor) -> Tensor:
    return L.launch_post_res(x, f, h_post, h_res)


@fake(_post_res)
def _(x, f, h_post, h_res):
    return torch.empty_like(x)


@op("post_res_bwd")
def _post_res_bwd(x: Tensor, f: Tensor, h_post: Tensor, h_res: Tensor,
                  g: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return L.launch_post_res_bwd(x, f, h_post, h_res, g, True)


@op("post_res_bwd_red")
def _post_res_bwd_red(x: Tensor, f: Tensor, h_post: Tensor, h_res: Tensor,
                      g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """post_res_bwd without dx (df, dH_post, dH_res); dx only skipped in mode "mma"."""
    return L.launch_post_res_bwd(x, f, h_post, h_res, g, False)[1:]


@fake(_post_res_bwd_red)
def _(x, f, h_post, h_res, g):
    return torch.empty_like(f), torch.empty_like(h_post), torch.empty_like(h_res)


@fake(_post_res_bwd)
def _(x, f, h_post, h_res, g):
    return torch.empty_like(x), torch.empty_like(f), torch.empty_like(h_post), torch.empty_like(h_res)


def _post_res_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _post_res_backward(ctx, g):
    x, f, h_post, h_res = ctx.saved_tensors
    if LAZY_RES_DX and torch.compiler.is_compiling():
        df, dhp, dhr = torch.ops.mhc_repro.post_res_bwd_red(x, f, h_post, h_res, g)
        dx = (h_res.float().unsqueeze(-1) * g.float().unsqueeze(2)).sum(1).to(x.dtype)  # Σ_i H[i,j] g[i]
        return dx, df, dhp, dhr
    return torch.ops.mhc_repro.post_res_bwd(x, f, h_post, h_res, g)


_post_res.register_autograd(_post_res_backward, setup_context=_post_res_setup)


# ---------------------------------------------------------------- public API (mhc_ops signatures)
def mhc_coefficients(x_flat: Tensor, phi: Tensor, alpha: Tensor, bias: Tensor, n: int, t_max: int = 20,
                     eps: float = 1e-6, rms_eps: float = 1e-6, *, precision: str | None = None,
                     shift: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(H_pre [N, n], H_post [N, n], H_res [N, n, n]) in fp32; see residual.mhc_ops.mhc_coefficients.
    ``precision``: projection operands on a bf16 stream (PROJ_PRECISIONS; None = PROJ_PRECISION).
    ``shift``: Sinkhorn of exp(logits - column max) (residual.sinkhorn_shift)."""
    precision = L.PROJ_PRECISION if precision is None else precision
    _check_precision(precision)
    M = n * n + 2 * n
    _check_coefficient_args(x_flat, phi, alpha, bias, n, t_max)
    h_pre, h_post, h_res, _, _ = torch.ops.mhc_repro.coefficients(
        x_flat, phi, alpha.reshape(3), bias.reshape(M), int(n), int(t_max), float(eps), float(rms_eps),
        precision, bool(shift))
    return h_pre, h_post, h_res


def _check_coefficient_args(x_flat: Tensor, phi: Tensor, alpha: Tensor, bias: Tensor, n: int, t_max: int) -> None:
    M = n * n + 2 * n
    _check(n >= 1, f"mHC n={n} is invalid; it must be an integer >= 1")
    _check(t_max >= 1, f"sinkhorn t_max={t_max} is invalid; it must be an integer >= 1")
    _check(x_flat.dim() == 2 and x_flat.shape[1] % n == 0,
           f"x_flat shape {tuple(x_flat.shape)} is invalid; expected [N, n*C] with n={n}")
    _check(tuple(phi.shape) == (x_flat.shape[1], M),
           f"phi shape {tuple(phi.shape)} is invalid; expected {(x_flat.shape[1], M)}")
    _check(alpha.numel() == 3, f"alpha has {alpha.numel()} elements; expected 3 (pre, post, res)")
    _check(bias.numel() == M, f"bias has {bias.numel()} elements; expected n*n+2n = {M}")


def mhc_pre(x: Tensor, h_pre: Tensor) -> Tensor:
    """Branch input ``sum_j H_pre[j] x[j]``: x [N, n, C], h_pre [N, n] -> [N, C] in x.dtype."""
    _check(x.dim() == 3 and tuple(h_pre.shape) == tuple(x.shape[:2]),
           f"mhc_pre shapes x={tuple(x.shape)} h_pre={tuple(h_pre.shape)} are invalid; expected [N,n,C], [N,n]")
    return torch.ops.mhc_repro.pre(x, h_pre)


def mhc_post_res(x: Tensor, f: Tensor, h_post: Tensor, h_res: Tensor) -> Tensor:
    """``x_out[i] = sum_j H_res[i, j] x[j] + H_post[i] f``: [N, n, C] in x.dtype."""
    _check_post_res_args(x, f, h_post, h_res)
    return torch.ops.mhc_repro.post_res(x, f, h_post, h_res)


def _check_post_res_args(x: Tensor, f: Tensor, h_post: Tensor, h_res: Tensor) -> None:
    N, n, C = x.shape if x.dim() == 3 else (None, None, None)
    _check(N is not None and tuple(f.shape) == (N, C) and tuple(h_post.shape) == (N, n)
           and tuple(h_res.shape) == (N, n, n),
           f"mhc_post_res shapes x={tuple(x.shape)} f={tuple(f.shape)} h_post={tuple(h_post.shape)} "
           f"h_res={tuple(h_res.shape)} are invalid; expected [N,n,C], [N,C], [N,n], [N,n,n]")


def _namespace(precision: str | None) -> SimpleNamespace:
    from . import cross_layer, linked  # the linked sub-layer pair, the cross-layer post op (import this module)

    return SimpleNamespace(
        name="triton", mhc_coefficients=functools.partial(mhc_coefficients, precision=precision),
        mhc_pre=mhc_pre, mhc_post_res=mhc_post_res,
        mhc_pre_linked=functools.partial(linked.mhc_pre_linked, precision=precision),
        mhc_post_res_linked=linked.mhc_post_res_linked,
        mhc_post_res_proj_linked=functools.partial(cross_layer.mhc_post_res_proj_linked, precision=precision))


# Built once at import: ops() is then a dict lookup, which torch.compile traces without a graph break
# (building the namespace inside a traced region would break the graph).
_OPS = {p: _namespace(p) for p in (None, *PROJ_PRECISIONS)}


def ops(precision: str | None = None) -> SimpleNamespace:
    """The three mHC functions; ``precision`` (None = PROJ_PRECISION at call time) is bound into
    mhc_coefficients so the namespace keeps the reference signatures."""
    if precision not in _OPS:
        _check_precision(precision)
    return _OPS[precision]
