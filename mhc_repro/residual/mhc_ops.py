"""Reference (pure PyTorch) mHC operators — the numerical spec for the fused kernels.

Shapes: ``N`` tokens, ``n`` streams, ``C`` hidden size. The stream state is ``x: [N, n, C]`` (bf16 on
GPU), flattened stream-major to ``v: [N, n*C]`` for the coefficient projection. Everything that
produces a coefficient runs in fp32 (PAPER.md §1, precision).

``mhc_repro.kernels`` implements the same three functions with Triton and is tested against these,
plus the linked pair (``mhc_pre_linked`` / ``mhc_post_res_linked``: the same sub-layer split at the
branch, one stream-gradient buffer in the fused version), defined here from the three, and the
cross-layer handoff (``mhc_post_res_proj_linked`` returns the next sub-layer's projection, which its
``mhc_pre_linked(..., proj=)`` takes instead of forming it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .sinkhorn import sinkhorn


def _acc(t: Tensor) -> Tensor:
    """Accumulation dtype: fp32 for bf16/fp16/fp32, float64 kept (float64 references in tests)."""
    return t if t.dtype == torch.float64 else t.float()


def mhc_coefficients(
    x_flat: Tensor,
    phi: Tensor,
    alpha: Tensor,
    bias: Tensor,
    n: int,
    t_max: int = 20,
    eps: float = 1e-6,
    rms_eps: float = 1e-6,
    *,
    shift: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """(H_pre [N, n], H_post [N, n], H_res [N, n, n]) in fp32.

    x_flat: [N, n*C] stream, any float dtype.  phi: [n*C, n*n + 2n] fused projection (the RMSNorm
    weight is folded into it).  alpha: [3] = (alpha_pre, alpha_post, alpha_res).  bias: [n*n + 2n].
    Output slice order of the projection: [pre (n) | post (n) | res (n*n, row-major)].
    shift: Sinkhorn of exp(H~_res - column max) (``sinkhorn.sinkhorn``; ResidualConfig.sinkhorn_shift).
    """
    v = _acc(x_flat)
    r = torch.sqrt(v.pow(2).mean(dim=-1, keepdim=True) + rms_eps)  # bare RMS over n*C
    m = v @ phi.to(v.dtype)
    return _epilogue(m, r, alpha, bias, n, t_max, eps, shift)


def _epilogue(m: Tensor, r: Tensor, alpha: Tensor, bias: Tensor, n: int, t_max: int, eps: float,
              shift: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The coefficients from the projection m [N, n*n + 2n] and the RMS r [N, 1]."""
    a = alpha.to(m.dtype)
    h_pre_t = a[0] * m[:, :n] / r + bias[:n]
    h_post_t = a[1] * m[:, n : 2 * n] / r + bias[n : 2 * n]
    h_res_t = a[2] * m[:, 2 * n :] / r + bias[2 * n :]
    h_pre = torch.sigmoid(h_pre_t) + eps
    h_post = 2.0 * torch.sigmoid(h_post_t)
    h_res = sinkhorn(h_res_t.reshape(-1, n, n), t_max, eps, shift)
    return h_pre, h_post, h_res


def mhc_pre(x: Tensor, h_pre: Tensor) -> Tensor:
    """Branch input ``sum_j H_pre[j] x[j]``: x [N, n, C], h_pre [N, n] -> [N, C] in x.dtype."""
    xa = _acc(x)
    return torch.einsum("nj,njc->nc", h_pre.to(xa.dtype), xa).to(x.dtype)


def mhc_post_res(x: Tensor, f: Tensor, h_post: Tensor, h_res: Tensor) -> Tensor:
    """Residual merge ``x_out[i] = sum_j H_res[i, j] x[j] + H_post[i] f``.

    x [N, n, C], f [N, C] (branch output), h_post [N, n], h_res [N, n, n] -> [N, n, C] in x.dtype.
    """
    xa = _acc(x)
    out = torch.einsum("nij,njc->nic", h_res.to(xa.dtype), xa)
    out = out + h_post.to(xa.dtype).unsqueeze(-1) * f.to(xa.dtype).unsqueeze(1)
    return out.to(x.dtype)


def mhc_pre_linked(x: Tensor, phi: Tensor, alpha: Tensor, bias: Tensor, n: int, t_max: int = 20,
                   eps: float = 1e-6, rms_eps: float = 1e-6, *, norm_weight: Tensor | None = None,
                   norm_eps: float = 1e-6, shift: bool = False,
                   proj: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(branch_in, H_post, H_res, x_link): coefficients + pre of x [N, n, C]; x_link = x, to be passed
    to ``mhc_post_res_linked`` (the fused version routes the stream gradient through it).
    ``proj``: (m = x_flat·φ, Σx²) of this x from ``mhc_post_res_proj_linked``, used instead of forming
    them; their gradient goes to x and φ (as if formed here), none to the tensors themselves.
    ``norm_weight`` [C]: branch_in = RMSNorm(Σ_j H_pre[j] x[j]) · norm_weight, the aggregate kept in
    the accumulation dtype (not rounded to x's dtype before the norm, as the fused kernel does)."""
    N, _, C = x.shape
    if proj is None:
        h_pre, h_post, h_res = mhc_coefficients(x.reshape(N, n * C), phi, alpha, bias, n, t_max, eps, rms_eps,
                                                shift=shift)
    else:  # the projection from the previous sub-layer's mhc_post_res_proj_linked; its gradient from x and φ
        v = _acc(x.reshape(N, n * C))
        m, ss = _GivenProjection.apply(v, phi.to(v.dtype), *proj)
        h_pre, h_post, h_res = _epilogue(m, torch.sqrt(ss.unsqueeze(-1) / (n * C) + rms_eps), alpha, bias, n,
                                         t_max, eps, shift)
    if norm_weight is None:
        return mhc_pre(x, h_pre), h_post, h_res, x
    xa = _acc(x)
    h = torch.einsum("nj,njc->nc", h_pre.to(xa.dtype), xa)
    # written out (as model.norm.RMSNorm), not F.rms_norm: its CPU composite works in place on an
    # intermediate, which selective activation checkpointing (recompute="stream") rejects
    y = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + norm_eps) * norm_weight.to(xa.dtype)
    return y.to(x.dtype), h_post, h_res, x


def mhc_post_res_linked(x_link: Tensor, f: Tensor, h_post: Tensor, h_res: Tensor) -> Tensor:
    """``mhc_post_res`` on the x_link of ``mhc_pre_linked``."""
    return mhc_post_res(x_link, f, h_post, h_res)


class _GivenProjection(torch.autograd.Function):
    """(m, Σv²) handed in with the values given and the gradient of v·φ and Σv² w.r.t. v and φ: what
    the fused pre op's backward forms from its saved x when the previous post op made the projection."""

    @staticmethod
    def forward(ctx, v, phi, m, ss):
        ctx.save_for_backward(v, phi)
        return m.to(v.dtype).clone(), ss.to(v.dtype).clone()

    @staticmethod
    def backward(ctx, gm, gss):
        v, phi = ctx.saved_tensors
        dv = torch.zeros_like(v) if gm is None else gm @ phi.t()
        if gss is not None:
            dv = dv + 2.0 * gss.unsqueeze(-1) * v
        dphi = None if gm is None else v.t() @ gm
        return dv, dphi, None, None


def mhc_post_res_proj_linked(x_link: Tensor, f: Tensor, h_post: Tensor, h_res: Tensor,
                             phi_next: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(``mhc_post_res_linked``'s output, m = out_flat·phi_next, Σ out²): the next sub-layer's projection
    of this output, for its ``mhc_pre_linked(..., proj=(m, Σ out²))``. m and Σ out² carry no gradient
    (the next pre op differentiates the projection from its x and φ); phi_next gets none from here."""
    N, n, C = x_link.shape
    if tuple(phi_next.shape) != (n * C, n * n + 2 * n):
        raise ValueError(f"mhc_post_res_proj_linked phi_next shape {tuple(phi_next.shape)} is invalid; expected "
                         f"{(n * C, n * n + 2 * n)} (the next sub-layer's φ, [n*C, n*n+2n])")
    out = mhc_post_res(x_link, f, h_post, h_res)
    v = _acc(out.detach()).reshape(N, n * C)
    return out, v @ phi_next.detach().to(v.dtype), v.pow(2).sum(-1)
