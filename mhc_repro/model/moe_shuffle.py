"""Moving tokens to their experts and back (``MoEConfig.shuffle``).

The (token, slot) assignments are sorted by expert: ``order`` [N·k] lists the flat assignment
indices t·k + j in expert order. ``to_experts`` gathers each token's k copies in that order;
``from_experts`` sums each token's k gated expert outputs back, in fp32, rounded once.

- "index_add": ``x.index_select`` forward, whose backward is an ``index_add_`` (a scatter-add), and an
  ``index_add`` combine (out of place, for selective recompute). On CUDA both are atomic adds: their
  rounding depends on the order they land in, and on a bf16 stream the backward's atomics are bf16.
- "gather": every move is a gather both ways. The inverse permutation ``inv`` (inv[order[p]] = p)
  turns each scatter into a gather plus a k-way sum over a token's slots (fp32): no atomics, the same
  bits every run.
"""

from __future__ import annotations

import torch
from torch import Tensor

SHUFFLES = ("index_add", "gather")


class _RowGather(torch.autograd.Function):
    """rows = a[index]; backward: grad_a = Σ_j grad[back[r·k + j]] over each source row's k uses.

    ``back`` lists, for every source row r and use j, the output row that read it (an inverse
    permutation when k = 1), so the backward is a gather and a sum instead of a scatter-add."""

    @staticmethod
    def forward(ctx, a: Tensor, index: Tensor, back: Tensor, k: int) -> Tensor:
        ctx.save_for_backward(back)
        ctx.k = k
        return a.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (back,) = ctx.saved_tensors
        g = grad.index_select(0, back)
        if ctx.k > 1:
            g = g.view(-1, ctx.k, grad.shape[-1]).sum(1, dtype=torch.float32).to(grad.dtype)
        return g, None, None, None


def inverse(order: Tensor) -> Tensor:
    """inv with inv[order[p]] = p (a scatter of distinct int64 indices: exact, no atomics)."""
    return torch.empty_like(order).scatter(0, order, torch.arange(order.numel(), device=order.device))


def to_experts(x: Tensor, order: Tensor, inv: Tensor | None, k: int, shuffle: str) -> Tensor:
    """Tokens x [N, C] -> their k copies in expert order [N·k, C]."""
    token = order // k
    if shuffle == "gather":
        return _RowGather.apply(x, token, inv, k)
    return x.index_select(0, token)


def from_experts(out: Tensor, order: Tensor, inv: Tensor | None, gates: Tensor, k: int, dtype: torch.dtype,
                 shuffle: str) -> Tensor:
    """Expert outputs [N·k, C] in expert order, gates [N, k] -> Σ_j gate·out per token [N, C] in
    ``dtype``, summed in fp32 (a bf16 buffer would round after each of a token's k adds)."""
    acc = torch.promote_types(dtype, torch.float32)
    n, c = gates.shape[0], out.shape[-1]
    if shuffle == "gather":
        per_token = _RowGather.apply(out, inv, order, 1).view(n, k, c)  # slot order t·k + j
        return (per_token.to(acc) * gates.unsqueeze(-1).to(acc)).sum(1).to(dtype)
    gate = gates.flatten()[order]
    y = out.new_zeros((n, c), dtype=acc).index_add(0, order // k, out.to(acc) * gate[:, None].to(acc))
    return y.to(dtype)
