"""Sinkhorn-Knopp projection onto (approximately) doubly stochastic matrices.

PAPER.md §1: ``H_res = Sinkhorn-Knopp(exp(H~_res))`` with ``t_max`` iterations, each iteration
normalising the columns, then the rows, with ``eps`` added to every denominator. After the last (row)
step the rows sum to 1 up to eps; the columns only approximately.

The backward is the paper's: it does not store the 2·t_max intermediate matrices in forward; it
recomputes the iterations from the logits and runs back through all of them, giving the exact
gradient of the unrolled loop. Per step ``y = x / (sum(x, dim) + eps)``::

    grad_x = (grad_y - sum_dim(grad_y * y)) / (sum(x, dim) + eps)
"""

from __future__ import annotations

import torch
from torch import Tensor


def sinkhorn_unrolled(logits: Tensor, t_max: int = 20, eps: float = 1e-6) -> Tensor:
    """Plain autograd version (reference for the custom backward; stores every iterate)."""
    m = logits.exp()
    for _ in range(t_max):
        m = m / (m.sum(dim=-2, keepdim=True) + eps)  # columns
        m = m / (m.sum(dim=-1, keepdim=True) + eps)  # rows
    return m


class _SinkhornFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, t_max: int, eps: float) -> Tensor:
        ctx.save_for_backward(logits)
        ctx.t_max, ctx.eps = t_max, eps
        with torch.no_grad():
            return sinkhorn_unrolled(logits, t_max, eps)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (logits,) = ctx.saved_tensors
        t_max, eps = ctx.t_max, ctx.eps
        # Recompute the forward iterates: states[k] is the input of step k (2 steps per iteration).
        m0 = logits.exp()
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
        return g * m0, None, None


def sinkhorn(logits: Tensor, t_max: int = 20, eps: float = 1e-6) -> Tensor:
    """Doubly stochastic ``[..., n, n]`` matrix from unconstrained logits (exp, then Sinkhorn).

    Convention used throughout mhc_repro: ``x_out[i] = sum_j H[i, j] x[j]``; rows are the exact side.
    """
    if t_max < 1:
        raise ValueError(f"sinkhorn t_max={t_max} is invalid; it must be an integer >= 1")
    return _SinkhornFn.apply(logits, t_max, eps)
