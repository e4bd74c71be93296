"""Sinkhorn-Knopp projection onto (approximately) doubly stochastic matrices.

PAPER.md §1: ``H_res = Sinkhorn-Knopp(exp(H~_res))`` with ``t_max`` iterations, each iteration
normalising the columns, then the rows, with ``eps`` added to every denominator. After the last (row)
step the rows sum to 1 up to eps; the columns only approximately.

The backward is the paper's: it does not store the 2·t_max intermediate matrices in forward; it
recomputes the iterations from the logits and runs back through all of them, giving the exact
gradient of the unrolled loop. Per step ``y = x / (sum(x, dim) + eps)``::

    grad_x = (grad_y - sum_dim(grad_y * y)) / (sum(x, dim) + eps)

``shift=True`` (``ResidualConfig.sinkhorn_shift``) exponentiates ``z - c`` instead of ``z``, with ``c_j``
the max logit of column j (over i, dim -2). The first step normalises columns, so a per-column
factor cancels there: with eps -> 0 the output is unchanged; with eps it moves by ~eps relative
(eps now meets a column sum >= 1 instead of sum_i exp(z_ij)). It removes the fp32 failure modes of
the literal exp: a logit above ~88 overflows to inf (inf / inf = NaN); a column whose logits are all
below ~-14 sums to less than eps, which then dominates its first denominators (later iterations
recover), and below ~-103 (~-87 with flush-to-zero) the column is exactly 0 for good.
``c`` is a constant in the backward (stop-gradient): the gradient returned is that of
``z -> S(exp(z - c))`` at fixed c. It differs from the true gradient of the shifted forward only by
O(eps) terms (c's own derivative multiplies the eps-only dependence of S on the column scale).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _exp(logits: Tensor, shift: bool) -> Tensor:
    """exp(z), or exp(z - c) with c the per-column max logit, held constant (see the module)."""
    if not shift:
        return logits.exp()
    return (logits - logits.detach().amax(dim=-2, keepdim=True)).exp()


def sinkhorn_unrolled(logits: Tensor, t_max: int = 20, eps: float = 1e-6, shift: bool = False) -> Tensor:
    """Plain autograd version (reference for the custom backward; stores every iterate)."""
    m = _exp(logits, shift)
    for _ in range(t_max):
        m = m / (m.sum(dim=-2, keepdim=True) + eps)  # columns
        m = m / (m.sum(dim=-1, keepdim=True) + eps)  # rows
    return m


class _SinkhornFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, t_max: int, eps: float, shift: bool) -> Tensor:
        ctx.save_for_backward(logits)
        ctx.t_max, ctx.eps, ctx.shift = t_max, eps, shift
        with torch.no_grad():
            return sinkhorn_unrolled(logits, t_max, eps, shift)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (logits,) = ctx.saved_tensors
        t_max, eps = ctx.t_max, ctx.eps
        # Recompute the forward iterates: states[k] is the input of step k (2 steps per iteration).
        m0 = _exp(logits, ctx.shift)  # d m0 / dz = m0 either way (c held constant)
        states, denoms = [], []
        m = m0
        for k in range(2 * t_max):
            dim = -2 if k % 2 == 0 else -1
            s = m.sum(dim=dim, keepdim=True) + eps
            states.append(m / s)  # output y of step k
            denoms.append(s)
            m = states[-1]
        g = grad_out
        for k in reversed(range(2 * t_max)):
            dim = -2 if k % 2 == 0 else -1
            y, s = states[k], denoms[k]
            g = (g - (g * y).sum(dim=dim, keepdim=True)) / s
        return g * m0, None, None, None


def sinkhorn(logits: Tensor, t_max: int = 20, eps: float = 1e-6, shift: bool = False) -> Tensor:
    """Doubly stochastic ``[..., n, n]`` matrix from unconstrained logits (exp, then Sinkhorn).

    Convention used throughout mhc_repro: ``x_out[i] = sum_j H[i, j] x[j]``; rows are the exact side.
    ``shift``: exp of the logits minus each column's max (stop-gradient), see the module docstring.
    """
    if t_max < 1:
        raise ValueError(f"sinkhorn t_max={t_max} is invalid; it must be an integer >= 1")
    return _SinkhornFn.apply(logits, t_max, eps, bool(shift))
